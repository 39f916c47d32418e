//! Why an ONNX graph with external data failed to load, in terms of the data file.
//!
//! tract reports a truncated or missing `weights.bin` as "external data range a..b is
//! out of bounds" without naming the file, and a user with three graphs sharing one
//! weights file cannot tell which file to re-copy. Only consulted after a load failed,
//! so the graph is decoded a second time only on that path.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use prost::Message;
use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::DataLocation;

/// A sentence naming the external data file at fault for `graph` (shown relative to
/// the manifest as `shown`), or None when its external data looks whole.
pub fn diagnose(graph: &Path, shown: &Path) -> Option<String> {
    let bytes = std::fs::read(graph).ok()?;
    let model = pb::ModelProto::decode(bytes.as_slice()).ok()?;
    let graph_proto = model.graph.as_ref()?;
    // Per data file: tensors kept there and the end of the furthest one.
    let mut files: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    let constants = graph_proto
        .node
        .iter()
        .flat_map(|n| n.attribute.iter())
        .filter_map(|a| a.t.as_ref());
    for t in graph_proto.initializer.iter().chain(constants) {
        if t.data_location != Some(DataLocation::External as i32) {
            continue;
        }
        let entry = |key: &str| {
            t.external_data
                .iter()
                .find(|e| e.key == key)
                .map(|e| e.value.trim())
        };
        let Some(location) = entry("location") else {
            continue;
        };
        let number = |key: &str| entry(key).and_then(|v| v.parse::<u64>().ok());
        let end = number("offset")
            .unwrap_or(0)
            .saturating_add(number("length").unwrap_or(0));
        let slot = files.entry(location.to_owned()).or_insert((0, 0));
        slot.0 += 1;
        slot.1 = slot.1.max(end);
    }
    let dir = graph.parent().unwrap_or(Path::new("."));
    let shown_dir = shown.parent().unwrap_or(Path::new(""));
    for (location, (tensors, end)) in files {
        let rel = Path::new(&location);
        let shown_file = shown_dir.join(rel);
        if rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Some(format!(
                "external data location `{location}` is not a relative path inside the graph's directory"
            ));
        }
        match std::fs::metadata(dir.join(rel)) {
            Err(e) => {
                return Some(format!(
                    "{}: {e} (the graph keeps {tensors} tensors there)",
                    shown_file.display()
                ))
            }
            Ok(meta) if meta.len() < end => {
                return Some(format!(
                    "{} is {} bytes but the graph reads up to byte {end}: truncated, or from \
                     another export of the model",
                    shown_file.display(),
                    meta.len()
                ))
            }
            Ok(_) => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn seg_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/seg")
    }

    #[test]
    fn whole_external_data_has_nothing_to_say() {
        let graph = seg_dir().join("seg.onnx");
        assert_eq!(diagnose(&graph, Path::new("seg/seg.onnx")), None);
    }

    #[test]
    fn a_truncated_or_missing_data_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(seg_dir().join("seg.onnx"), dir.path().join("seg.onnx")).unwrap();
        let graph = dir.path().join("seg.onnx");
        let why = diagnose(&graph, Path::new("seg/seg.onnx")).unwrap();
        assert!(why.starts_with("seg/weights.bin: No such file"), "{why}");
        assert!(why.contains("tensors there"), "{why}");

        let weights = std::fs::read(seg_dir().join("weights.bin")).unwrap();
        std::fs::write(dir.path().join("weights.bin"), &weights[..1000]).unwrap();
        let why = diagnose(&graph, Path::new("seg/seg.onnx")).unwrap();
        assert!(
            why.starts_with("seg/weights.bin is 1000 bytes but the graph reads up to byte "),
            "{why}"
        );
    }
}
