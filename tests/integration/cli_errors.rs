//! Bad input at start-up: clear errors naming file, key or element; non-zero exit.

use std::fs;
use std::path::Path;

use crate::util::{config, repo, run, Dir};

fn fails_with(config: &Path, needles: &[&str]) {
    let out = run(&["run", "--config", &config.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "maskd should have failed; stderr:\n{stderr}"
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "stderr lacks {needle:?}:\n{stderr}"
        );
    }
}

fn fixture_manifest() -> std::path::PathBuf {
    repo().join("tests/data/fixture/fixture.toml")
}

#[test]
fn malformed_config_value_names_file_and_key() {
    let dir = Dir::new();
    let (cfg, _) = config(&dir, "videotestsrc", &fixture_manifest(), &["thing"], 4);
    let text = fs::read_to_string(&cfg).expect("reading the config");
    let bad = dir.write("bad.toml", &text.replace("width = 64", "width = 0"));
    fails_with(&bad, &["bad.toml", "masks.width"]);
}

#[test]
fn missing_config_key_names_file_and_key() {
    let dir = Dir::new();
    let (cfg, _) = config(&dir, "videotestsrc", &fixture_manifest(), &["thing"], 4);
    let text = fs::read_to_string(&cfg).expect("reading the config");
    let without: String = text
        .lines()
        .filter(|l| !l.starts_with("pipeline"))
        .map(|l| format!("{l}\n"))
        .collect();
    let bad = dir.write("nopipe.toml", &without);
    fails_with(&bad, &["nopipe.toml", "pipeline"]);
}

#[test]
fn unknown_config_key_is_rejected() {
    let dir = Dir::new();
    let (cfg, _) = config(&dir, "videotestsrc", &fixture_manifest(), &["thing"], 4);
    let text = fs::read_to_string(&cfg).expect("reading the config");
    let bad = dir.write(
        "typo.toml",
        &text.replace("[engine]\n", "[engine]\nmodle = \"x\"\n"),
    );
    fails_with(&bad, &["typo.toml", "modle"]);
}

#[test]
fn missing_config_file_is_named() {
    fails_with(
        Path::new("/nonexistent/maskd.toml"),
        &["/nonexistent/maskd.toml"],
    );
}

#[test]
fn a_missing_file_says_why_once() {
    let out = run(&["run", "--config", "/nonexistent/maskd.toml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
    let dir = Dir::new();
    let missing = dir.join("nowhere.toml");
    let (cfg, _) = config(&dir, "videotestsrc", &missing, &["thing"], 4);
    let out = run(&["run", "--config", &cfg.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nowhere.toml"), "{stderr}");
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
}

#[test]
fn a_truncated_weights_file_is_named() {
    let dir = Dir::new();
    let models = repo().join("models");
    let copy = dir.path().join("model");
    fs::create_dir_all(copy.join("seg")).expect("making a model dir");
    let manifest = fs::read_to_string(models.join("default.toml")).expect("reading the manifest");
    // Text encoder from the repo; the segmenter's graphs copied beside a cut weights.bin.
    let manifest = manifest.replace("\"text/", &format!("\"{}/", models.join("text").display()));
    fs::write(copy.join("model.toml"), manifest).expect("writing the manifest");
    for entry in fs::read_dir(models.join("seg")).expect("listing models/seg") {
        let path = entry.expect("an entry").path();
        if path.extension().is_some_and(|e| e == "onnx") {
            let name = path.file_name().expect("a file name");
            fs::copy(&path, copy.join("seg").join(name)).expect("copying a graph");
        }
    }
    let weights = fs::read(models.join("seg/weights.bin")).expect("reading weights.bin");
    fs::write(copy.join("seg/weights.bin"), &weights[..weights.len() / 2]).expect("cutting");
    let (cfg, _) = config(
        &dir,
        "videotestsrc",
        &copy.join("model.toml"),
        &["thing"],
        4,
    );
    fails_with(
        &cfg,
        &[
            "seg/seg.onnx: loading the ONNX graph: seg/weights.bin is ",
            "truncated, or from another export",
        ],
    );
}

#[test]
fn missing_model_file_is_named() {
    let dir = Dir::new();
    let fixture = repo().join("tests/data/fixture");
    let manifest =
        fs::read_to_string(fixture.join("fixture.toml")).expect("reading the fixture manifest");
    let copy = dir.path().join("model");
    fs::create_dir_all(copy.join("seg")).expect("making a model dir");
    let broken = manifest.replace("model = \"seg/seg.onnx\"", "model = \"seg/missing.onnx\"");
    let broken = broken.replace("\"text.onnx\"", &format!("{:?}", fixture.join("text.onnx")));
    let broken = broken.replace("\"vocab.txt\"", &format!("{:?}", fixture.join("vocab.txt")));
    let path = copy.join("model.toml");
    fs::write(&path, broken).expect("writing the manifest");
    let (cfg, _) = config(&dir, "videotestsrc", &path, &["thing"], 4);
    fails_with(&cfg, &["missing.onnx"]);
}

#[test]
fn model_input_not_matching_manifest_names_input_and_shapes() {
    let dir = Dir::new();
    let fixture = repo().join("tests/data/fixture");
    let manifest =
        fs::read_to_string(fixture.join("fixture.toml")).expect("reading the fixture manifest");
    // Same graphs, but the manifest claims a bigger image than the graph takes.
    let lying = manifest.replace("width = 64\nheight = 64", "width = 96\nheight = 96");
    assert_ne!(
        lying, manifest,
        "fixture manifest changed shape; update this test"
    );
    let path = dir.write(
        "lying.toml",
        &lying
            .replace("\"text.onnx\"", &format!("{:?}", fixture.join("text.onnx")))
            .replace("\"vocab.txt\"", &format!("{:?}", fixture.join("vocab.txt")))
            .replace("\"seg/", &format!("\"{}/seg/", fixture.display())),
    );
    let (cfg, _) = config(&dir, "videotestsrc", &path, &["thing"], 4);
    fails_with(&cfg, &["seg.onnx", "image", "96"]);
}

#[test]
fn nonexistent_pipeline_element_is_named() {
    let dir = Dir::new();
    let (cfg, _) = config(
        &dir,
        "nosuchcamerasrc device=/dev/video9",
        &fixture_manifest(),
        &["thing"],
        4,
    );
    fails_with(&cfg, &["nosuchcamerasrc"]);
}

/// `engine.device = "cuda"` where no GPU can be used (every CI machine; a build without
/// the `cuda` feature anywhere) stops start-up with the key and the reason, no panic.
#[test]
fn cuda_without_a_gpu_names_the_key_and_the_reason() {
    let dir = Dir::new();
    let (cfg, _) = config(&dir, "videotestsrc", &fixture_manifest(), &["thing"], 4);
    let text = fs::read_to_string(&cfg).expect("reading the config");
    let bad = dir.write(
        "gpu.toml",
        &text.replace("[engine]\n", "[engine]\ndevice = \"cuda\"\n"),
    );
    let why = if cfg!(any(feature = "cuda", feature = "cuda-12")) {
        "no usable CUDA driver or GPU"
    } else {
        "built without CUDA"
    };
    fails_with(&bad, &["gpu.toml: engine", "engine.device = \"cuda\"", why]);
    let out = run(&["run", "--config", &bad.to_string_lossy()]);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "a panic instead of an error"
    );
}
