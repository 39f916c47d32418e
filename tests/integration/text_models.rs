//! Bringing a text encoder: a CLIP tower with its tokenizer.json runs from a manifest
//! alone, and a text graph that fails at run time is reported by every command with
//! the graph node that failed, not a timeout.

use std::fs;
use std::path::PathBuf;

use crate::util::{config, repo, run, Dir};

/// The node `tests/fixtures/make_broken_text.py` names; it fails for any length but 4.
const BROKEN_NODE: &str = "/encoder/broken/Add";

fn image() -> String {
    repo()
        .join("models/eval/images/0000.jpg")
        .to_string_lossy()
        .into_owned()
}

/// The fixture's manifest with every path absolute and the text graph replaced by the
/// broken one; `tokenizer` swaps in the CLIP tokenizer (it pads to 77 tokens, so even
/// the start-up test prompt fails).
fn broken_manifest(dir: &Dir, clip_tokenizer: bool) -> PathBuf {
    let fixture = repo().join("tests/data/fixture");
    let clip = repo().join("tests/data/clip_text");
    let text = fs::read_to_string(fixture.join("fixture.toml")).expect("reading the fixture");
    let mut text = text
        .replace(
            "\"text.onnx\"",
            &format!("{:?}", clip.join("broken_text.onnx")),
        )
        .replace("\"seg/", &format!("\"{}/seg/", fixture.display()));
    text = if clip_tokenizer {
        text.replace(
            "vocab = \"vocab.txt\"\nlowercase = true\nmax_tokens = 16",
            &format!("tokenizer = {:?}", clip.join("tokenizer.json")),
        )
    } else {
        text.replace("\"vocab.txt\"", &format!("{:?}", fixture.join("vocab.txt")))
    };
    dir.write("broken.toml", &text)
}

fn stderr_of(args: &[&str]) -> String {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{args:?} should fail; stderr:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// A graph that loads but fails on every prompt: every command stops at load, with the
/// key, the graph and the node.
#[test]
fn a_text_graph_that_cannot_run_stops_every_command_with_its_node() {
    let dir = Dir::new();
    let manifest = broken_manifest(&dir, true);
    let m = manifest.to_string_lossy().into_owned();
    let (cfg, _) = config(&dir, "videotestsrc", &manifest, &["red circle"], 4);
    let cfg = cfg.to_string_lossy().into_owned();
    let image = image();
    for args in [
        vec!["run", "--config", &cfg],
        vec![
            "bench",
            "--manifest",
            &m,
            "--image",
            &image,
            "--frames",
            "1",
            "--rounds",
            "1",
        ],
        vec!["inspect", &m],
    ] {
        let stderr = stderr_of(&args);
        for needle in [
            "text.model",
            "test prompt",
            "broken_text.onnx: running",
            BROKEN_NODE,
        ] {
            assert!(
                stderr.contains(needle),
                "{args:?}: no {needle:?} in\n{stderr}"
            );
        }
    }
}

/// A graph that passes the test prompt but fails on the prompts asked for: `run` (the
/// config's prompts) and `bench` report the encoder's own error for the prompt, where
/// bench used to say the prompts were not encoded within 120 s.
#[test]
fn a_prompt_the_text_graph_fails_on_is_reported_with_its_node() {
    let dir = Dir::new();
    let manifest = broken_manifest(&dir, false);
    let m = manifest.to_string_lossy().into_owned();
    let (cfg, _) = config(&dir, "videotestsrc", &manifest, &["red circle star"], 4);
    let cfg = cfg.to_string_lossy().into_owned();
    let image = image();
    for args in [
        vec!["run", "--config", &cfg],
        vec![
            "bench",
            "--manifest",
            &m,
            "--image",
            &image,
            "--prompt",
            "red circle star",
            "--frames",
            "1",
            "--rounds",
            "1",
        ],
    ] {
        let stderr = stderr_of(&args);
        for needle in ["\"red circle star\": text encoder", BROKEN_NODE] {
            assert!(
                stderr.contains(needle),
                "{args:?}: no {needle:?} in\n{stderr}"
            );
        }
        assert!(!stderr.contains("within 120"), "{stderr}");
    }
}

/// The CLIP fixture in front of the fixture segmenter: `inspect` shows the tokenizer and
/// pooling, `bench` runs frames from the manifest alone.
#[test]
#[ignore = "tract 0.23.9 fails this export at run time: `/encoder/layers.0/self_attn/Add: Can not broadcast 77 against 2` (the causal-mask construction); the rewrite is not done yet (issue 17)"]
fn a_clip_text_tower_runs_from_a_manifest_alone() {
    let manifest = repo().join("tests/data/clip_text/clip_text.toml");
    let m = manifest.to_string_lossy().into_owned();
    let out = run(&["inspect", &m]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "tokenizer.json BPE, 642 tokens, at most 77, padded to 77",
        "<|startoftext|> ... <|endoftext|>",
        "pooling none, normalize false",
        "max 77 tokens",
    ] {
        assert!(stdout.contains(needle), "no {needle:?} in\n{stdout}");
    }
    let image = image();
    let out = run(&[
        "bench",
        "--manifest",
        &m,
        "--image",
        &image,
        "--prompt",
        "red circle",
        "--frames",
        "2",
        "--rounds",
        "1",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.stdout.is_empty());
}
