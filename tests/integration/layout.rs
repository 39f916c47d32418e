//! The import rule of `docs/ARCHITECTURE.md`, checked on the source itself: data flows
//! one way (source -> engine -> masks -> publish), stages meet only through
//! `contracts`, config and lifecycle sit beside the flow, only the daemon and the
//! commands see every stage. A `use crate::x` that breaks it fails here, naming the
//! file and the line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::util::repo;

/// Each room of `src/` and the rooms it may import (`*`: any but `daemon`). Anything not
/// listed is refused.
const ALLOWED: &[(&str, &[&str])] = &[
    ("contracts", &[]),
    ("config", &[]),
    ("lifecycle", &["config"]),
    ("alloc", &[]),
    ("source", &["config", "contracts"]),
    ("engine", &["config", "contracts"]),
    ("masks", &["config", "contracts"]),
    ("publish", &["config", "contracts", "masks"]),
    (
        "daemon",
        &[
            "config",
            "contracts",
            "lifecycle",
            "source",
            "engine",
            "masks",
            "publish",
        ],
    ),
    // The tools: anything but the daemon.
    ("commands", &["*"]),
    ("lib", &[]),
];

/// The room of a file under `src/`: its top-level module.
fn room(rel: &Path) -> String {
    let first = rel.components().next().expect("a path under src/");
    let name = first.as_os_str().to_string_lossy();
    name.strip_suffix(".rs").unwrap_or(&name).to_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading src/") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::room` a file names outside comments: `(line number, room)`.
fn imports(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let tail = &rest[at + "crate::".len()..];
            let name: String = tail
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                !name.is_empty(),
                "line {}: `crate::{{..}}` groups hide which rooms are imported; \
                 write one `use` per room",
                i + 1
            );
            out.push((i + 1, name));
            rest = tail;
        }
    }
    out
}

/// The rooms each room imports, from the source: what `docs/ARCHITECTURE.md` lists.
fn import_graph() -> (BTreeMap<String, BTreeSet<String>>, Vec<String>) {
    let src = repo().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut broken = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src/");
        let from = room(rel);
        if from == "main" {
            continue; // the binary: parses, dispatches, installs the allocator
        }
        let Some(may) = allowed.get(from.as_str()) else {
            broken.push(format!(
                "src/{}: room `{from}` is not in ALLOWED",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("reading a source file");
        for (line, to) in imports(&text) {
            if to == from {
                continue;
            }
            let allowed = may.contains(&to.as_str()) || may == &["*"] && to != "daemon";
            if !allowed {
                broken.push(format!(
                    "src/{}:{line}: `{from}` imports `crate::{to}`",
                    rel.display()
                ));
            }
            graph.entry(from.clone()).or_default().insert(to);
        }
    }
    (graph, broken)
}

#[test]
fn no_room_imports_what_the_architecture_forbids() {
    let (graph, broken) = import_graph();
    assert!(
        broken.is_empty(),
        "imports against docs/ARCHITECTURE.md:\n{}",
        broken.join("\n")
    );
    // Stages meet only through contracts: none of the four imports an upstream stage.
    for (stage, upstream) in [
        ("engine", &["source"][..]),
        ("masks", &["source", "engine"][..]),
        ("publish", &["source", "engine"][..]),
    ] {
        for up in upstream {
            assert!(
                !graph.get(stage).is_some_and(|g| g.contains(*up)),
                "{stage} imports {up}"
            );
        }
    }
}

/// The per-room import list in `docs/ARCHITECTURE.md` (the table after "What each room
/// does import today") is the one the source has, row for row.
#[test]
fn the_architecture_document_lists_the_imports_the_source_has() {
    let (graph, _) = import_graph();
    let doc = std::fs::read_to_string(repo().join("docs/ARCHITECTURE.md"))
        .expect("reading docs/ARCHITECTURE.md");
    let table = doc
        .split_once("What each room does import today")
        .map(|(_, rest)| rest.split("\n## ").next().unwrap_or(rest))
        .expect("docs/ARCHITECTURE.md has no \"What each room does import today\" table");
    let mut listed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in table.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if let [_, room, imports, _] = cells[..] {
            if let Some(room) = room.strip_prefix('`').and_then(|r| r.strip_suffix('`')) {
                listed.insert(
                    room.to_owned(),
                    imports.split(", ").map(str::to_owned).collect(),
                );
            }
        }
    }
    assert_eq!(listed, graph, "docs/ARCHITECTURE.md's import table vs src/");
}

#[test]
fn imports_are_read_from_code_not_comments() {
    let text = "use crate::config::X; // not crate::engine\n  let y = crate::masks::rle::encode;";
    assert_eq!(
        imports(text),
        vec![(1, "config".to_owned()), (2, "masks".to_owned())]
    );
}
