//! `maskd bench --json` and `--dump-inputs` as the peer scripts (`bench/peer/`) run them,
//! on the fixture model.

use serde_json::Value;

use crate::util::{repo, run, Dir};

fn fixture() -> String {
    repo()
        .join("tests/data/fixture/fixture.toml")
        .to_string_lossy()
        .into_owned()
}

fn image() -> String {
    repo()
        .join("models/eval/images/0000.jpg")
        .to_string_lossy()
        .into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "maskd failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn num(v: &Value, path: &str) -> f64 {
    let mut at = v;
    for key in path.split('.') {
        at = &at[key];
    }
    at.as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number in\n{v:#}"))
}

#[test]
fn json_has_percentiles_stages_and_the_allocation_split() {
    let fixture = fixture();
    let image = image();
    let text = stdout(&run(&[
        "bench",
        "--manifest",
        &fixture,
        "--image",
        &image,
        "--frames",
        "4",
        "--rounds",
        "1",
        "--json",
    ]));
    let report: Value = serde_json::from_str(&text).expect("bench --json prints JSON");
    assert_eq!(report["threads"], 1);
    assert_eq!(report["frames"], 4);
    let variants = report["variants"].as_array().expect("a variants array");
    assert_eq!(variants.len(), 1);
    let v = &variants[0];
    let (p50, p90, p99) = (num(v, "p50_ms"), num(v, "p90_ms"), num(v, "p99_ms"));
    assert!(p50 > 0.0 && p50 <= p90 && p90 <= p99, "{p50} {p90} {p99}");
    assert!((num(v, "fps") - 1e3 / p50).abs() < 1e-6 * num(v, "fps"));
    // The binary counts allocations; the two parts add up to the whole, and tract
    // allocates its intermediate tensors on every run.
    let all = num(v, "allocs_per_frame");
    let tract = num(v, "tract_allocs_per_frame");
    let maskd = num(v, "maskd_allocs_per_frame");
    assert!(
        (tract + maskd - all).abs() < 1e-9,
        "{tract} + {maskd} != {all}"
    );
    assert!(tract > 0.0, "no allocation counted inside the plan");
    for stage in ["preprocess", "model", "postprocess", "encode_and_publish"] {
        assert!(
            num(v, &format!("stages.{stage}.mean_ms")) >= 0.0,
            "{stage} in\n{v:#}"
        );
    }
    // The stages are parts of the frame: their means cannot add up to more.
    let stages: f64 = ["preprocess", "model", "postprocess", "encode_and_publish"]
        .iter()
        .map(|s| num(&v["rounds"][0], &format!("stages.{s}.mean_ms")))
        .sum();
    assert!(stages <= num(&v["rounds"][0], "mean_ms") + 1e-9);
    // Every timed frame reached the subscribed client's socket.
    assert_eq!(v["rounds"][0]["published"], 4);
    assert!(num(v, "peak_rss_bytes") >= num(v, "rss_bytes") && num(v, "rss_bytes") > 0.0);

    // The table still prints, with the new columns.
    let table = stdout(&run(&[
        "bench",
        "--manifest",
        &fixture,
        "--image",
        &image,
        "--frames",
        "2",
        "--rounds",
        "1",
    ]));
    assert!(
        table.contains("p99 ms") && table.contains("tract"),
        "{table}"
    );
    assert!(
        table.contains("preprocess") && table.contains("publish"),
        "{table}"
    );
}

/// Shape and little-endian f32 data of a `.npy` file as `bench --dump-inputs` writes it.
fn read_npy(path: &std::path::Path) -> (String, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00", "{}", path.display());
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = String::from_utf8_lossy(&bytes[10..10 + len]).into_owned();
    let data = bytes[10 + len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (header, data)
}

#[test]
fn dump_inputs_writes_the_segmenters_tensors() {
    let dir = Dir::new();
    let out = dir.join("dump");
    let out_s = out.to_string_lossy().into_owned();
    stdout(&run(&[
        "bench",
        "--manifest",
        &fixture(),
        "--image",
        &image(),
        "--prompt",
        "red circle",
        "--prompt",
        "blue square",
        "--dump-inputs",
        &out_s,
    ]));
    let header: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("inputs.json")).expect("inputs.json written"),
    )
    .expect("inputs.json is JSON");
    assert!(header["graph"]
        .as_str()
        .is_some_and(|g| g.ends_with("tests/data/fixture/seg/seg.onnx")));
    let names: Vec<&str> = header["inputs"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(header["outputs"].as_array().into_iter().flatten())
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["image", "text", "mask_logits", "presence_logits"]);

    let (h, image) = read_npy(&out.join("image.npy"));
    assert!(h.contains("'shape': (1, 3, 64, 64)"), "{h}");
    assert_eq!(image.len(), 3 * 64 * 64);
    // Normalised pixels: (x / 255 - mean) / std lies within these bounds per channel.
    for (c, (mean, std)) in [(0.485f32, 0.229f32), (0.456, 0.224), (0.406, 0.225)]
        .into_iter()
        .enumerate()
    {
        let (lo, hi) = (-mean / std - 1e-5, (1.0 - mean) / std + 1e-5);
        let plane = &image[c * 64 * 64..(c + 1) * 64 * 64];
        assert!(plane.iter().all(|v| (lo..=hi).contains(v)), "channel {c}");
        assert!(plane.iter().any(|v| *v != plane[0]), "channel {c} is flat");
    }
    let (h, text) = read_npy(&out.join("text.npy"));
    assert!(h.contains("'shape': (2, 16)"), "{h}");
    // Text embeddings are L2-normalised rows.
    for row in text.chunks_exact(16) {
        let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "row norm {norm}");
    }
    let (h, masks) = read_npy(&out.join("mask_logits.npy"));
    assert!(h.contains("'shape': (2, 16, 16)"), "{h}");
    assert_eq!(masks.len(), 2 * 16 * 16);
    let (h, scores) = read_npy(&out.join("presence_logits.npy"));
    assert!(h.contains("'shape': (2,)"), "{h}");
    assert!(scores.iter().all(|s| s.is_finite()));
}
