//! `sparsify` on `tests/data/sparsify/model.onnx` (see `tests/fixtures/make_sparsify.py`
//! for what each of its layers is there to test).

use std::collections::HashMap;

use maskd_kernels::{NmMatrix, NmPattern};
use prost::Message;
use tract_onnx::prelude::*;

use super::*;
use crate::commands::onnx_io::{get_int, tensor_f32, tensor_u8};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sparsify/model.onnx")
}

fn opts(pattern: &str, dense_out: bool, default_skips: bool, skips: &[&str]) -> Options {
    Options {
        pattern: parse_pattern(pattern).unwrap(),
        share: 1,
        dense_out,
        skips: SkipRules {
            default_skips,
            substrings: skips.iter().map(|s| s.to_string()).collect(),
        },
        progress: false,
    }
}

/// Runs `sparsify` on the fixture into a temp dir; returns the dir (kept alive), the
/// output path and the report.
fn sparsify_fixture(o: &Options) -> (tempfile::TempDir, PathBuf, Report) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    let report = sparsify(&fixture(), &out, o).unwrap();
    (dir, out, report)
}

fn initializers(model: &pb::ModelProto) -> HashMap<String, pb::TensorProto> {
    let g = model.graph.as_ref().unwrap();
    g.initializer
        .iter()
        .map(|t| (t.name.clone(), t.clone()))
        .collect()
}

/// The fixture's weight of `layer` as `W[K, N]` (Gemm: transposed and scaled by alpha).
fn original_kn(layer: &str) -> (Vec<f32>, usize, usize) {
    let inits = initializers(&read_model_inline(&fixture()).unwrap());
    let name = format!("{layer}.w");
    let t = &inits[&name];
    let w = tensor_f32(t).unwrap();
    let (a, b) = (t.dims[0] as usize, t.dims[1] as usize);
    if layer == "gemm" {
        let mut kn = vec![0.0; w.len()];
        for r in 0..a {
            for c in 0..b {
                kn[c * a + r] = w[r * b + c] * 0.5;
            }
        }
        (kn, b, a)
    } else {
        (w, a, b)
    }
}

fn decision(r: &Report, label: &str) -> Decision {
    r.layers
        .iter()
        .find(|l| l.label == label)
        .unwrap_or_else(|| panic!("no layer {label} in {r:?}"))
        .decision
        .clone()
}

fn pruned_labels(r: &Report) -> Vec<&str> {
    r.layers
        .iter()
        .filter(|l| l.pruned.is_some())
        .map(|l| l.label.as_str())
        .collect()
}

/// Decodes every NmMatMul of `out` and checks it against magnitude pruning of the
/// original weight; returns the decoded layers' names.
fn check_nm_nodes(out: &Path, pattern: &str) -> Vec<String> {
    check_shared_nm_nodes(out, pattern, 1)
}

/// [`check_nm_nodes`] for `--share`: the decoded weights are the shared pruning's.
fn check_shared_nm_nodes(out: &Path, pattern: &str, share: usize) -> Vec<String> {
    let p = parse_pattern(pattern).unwrap();
    let model = read_model_inline(out).unwrap();
    assert!(model
        .opset_import
        .iter()
        .any(|o| o.domain == "maskd" && o.version == 1));
    let inits = initializers(&model);
    let mut seen = vec![];
    for node in &model.graph.as_ref().unwrap().node {
        if node.op_type != "NmMatMul" {
            continue;
        }
        assert_eq!(node.domain, "maskd");
        assert_eq!(
            (get_int(node, "n"), get_int(node, "m")),
            (Some(p.n() as i64), Some(p.m() as i64))
        );
        let (w, k, n) = original_kn(&node.name);
        assert_eq!(get_int(node, "k"), Some(k as i64), "{}", node.name);
        let values = &inits[&node.input[1]];
        assert_eq!(values.dims, [(p.groups(k) * p.n()) as i64, n as i64]);
        let decoded = NmMatrix::from_parts(
            p,
            k,
            n,
            tensor_f32(values).unwrap(),
            tensor_u8(&inits[&node.input[2]]).unwrap(),
        )
        .unwrap();
        let expected = NmMatrix::from_dense_pruned_shared(&w, k, n, p, share).unwrap();
        assert_eq!(decoded.to_dense(), expected.to_dense(), "{}", node.name);
        seen.push(node.name.clone());
    }
    seen
}

#[test]
fn compressed_output_decodes_to_the_magnitude_pruned_weights() {
    let (_dir, out, report) = sparsify_fixture(&opts("2:4", false, true, &[]));
    assert_eq!(pruned_labels(&report), ["fc1", "gemm", "fc2"]);
    assert_eq!(check_nm_nodes(&out, "2:4"), ["fc1", "gemm", "fc2"]);
    let model = read_model_inline(&out).unwrap();
    let inits = initializers(&model);
    // Gemm's C becomes the bias, times beta = 1.
    let gemm = model
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .find(|n| n.name == "gemm")
        .unwrap();
    let bias = tensor_f32(&inits[&gemm.input[3]]).unwrap();
    let c = tensor_f32(&initializers(&read_model_inline(&fixture()).unwrap())["gemm.c"]).unwrap();
    assert_eq!(bias, c);
    for gone in ["fc1.w", "gemm.w", "gemm.c", "fc2.w"] {
        assert!(!inits.contains_key(gone), "{gone} should have been removed");
    }
    for kept in ["patch.w", "head.w", "rgb.w", "conv.w"] {
        assert!(inits.contains_key(kept), "{kept} should stay");
    }
    let fc1 = report.layers.iter().find(|l| l.label == "fc1").unwrap();
    assert_eq!(
        fc1.pruned,
        Some(Pruned {
            kept: 32 * 64 / 2,
            total: 32 * 64,
            dense_bytes: 32 * 64 * 4,
            compressed_bytes: 32 * 64 / 2 * 4 + 32 * 64 / 2 * 2 / 8,
        })
    );
    assert!(report.weight_bytes_after < report.weight_bytes_before);
}

#[test]
fn shared_patterns_are_written_per_run_of_columns() {
    let mut o = opts("2:4", false, true, &[]);
    o.share = 2;
    let (_dir, out, report) = sparsify_fixture(&o);
    assert_eq!(
        check_shared_nm_nodes(&out, "2:4", 2),
        ["fc1", "gemm", "fc2"]
    );
    // Sharing changes what is kept (the fixture's columns disagree).
    let (w, k, n) = original_kn("fc1");
    let plain = NmMatrix::from_dense_pruned(&w, k, n, NmPattern::TWO_FOUR).unwrap();
    let shared = NmMatrix::from_dense_pruned_shared(&w, k, n, NmPattern::TWO_FOUR, 2).unwrap();
    assert_ne!(plain, shared);
    assert!(render(&report, &fixture(), &out).contains("shared by every 2 output columns"));
}

#[test]
fn output_is_self_contained() {
    let (dir, out, _) = sparsify_fixture(&opts("2:4", false, true, &[]));
    let model = pb::ModelProto::decode(std::fs::read(&out).unwrap().as_slice()).unwrap();
    for t in &model.graph.unwrap().initializer {
        assert!(
            t.external_data.is_empty() && t.data_location.is_none(),
            "{}",
            t.name
        );
    }
    assert!(!dir.path().join("weights.bin").exists());
}

#[test]
fn default_skips_first_image_layer_and_last_layer() {
    let (_dir, _, report) = sparsify_fixture(&opts("2:4", false, true, &[]));
    assert!(
        matches!(decision(&report, "patch"), Decision::Skip(s) if s.contains("first layer on the image"))
    );
    assert!(matches!(decision(&report, "head"), Decision::Skip(s) if s.contains("last layer")));
    assert!(matches!(decision(&report, "rgb"), Decision::Skip(s) if s.contains("K = 3 < M = 4")));
    assert!(matches!(decision(&report, "conv"), Decision::NotEligible(s) if s.contains("Conv")));
    assert!(
        report.layers.iter().all(|l| l.label != "attn"),
        "no constant weight"
    );

    let (_dir, out, report) = sparsify_fixture(&opts("2:4", false, false, &[]));
    assert_eq!(
        pruned_labels(&report),
        ["patch", "fc1", "gemm", "fc2", "head"]
    );
    assert_eq!(check_nm_nodes(&out, "2:4").len(), 5);

    let (_dir, _, report) = sparsify_fixture(&opts("2:4", false, false, &["fc", "gemm.w"]));
    assert_eq!(pruned_labels(&report), ["patch", "head"]);
    assert!(matches!(decision(&report, "gemm"), Decision::Skip(s) if s.contains("gemm.w")));
}

#[test]
fn patterns_1_4_and_4_8() {
    for (pattern, kept) in [("1:4", 4), ("4:8", 2)] {
        let (_dir, out, report) = sparsify_fixture(&opts(pattern, false, true, &[]));
        assert_eq!(
            check_nm_nodes(&out, pattern),
            ["fc1", "gemm", "fc2"],
            "{pattern}"
        );
        let fc1 = report.layers.iter().find(|l| l.label == "fc1").unwrap();
        assert_eq!(fc1.pruned.unwrap().kept, 32 * 64 / kept, "{pattern}");
    }
}

fn run_tract(path: &Path) -> Vec<Vec<f32>> {
    run_with(tract_onnx::onnx(), path)
}

fn run_with(onnx: tract_onnx::Onnx, path: &Path) -> Vec<Vec<f32>> {
    let image = tract_ndarray::Array4::from_shape_fn((1, 3, 8, 8), |(_, c, y, x)| {
        ((c * 64 + y * 8 + x) as f32 * 0.37).sin()
    });
    let plan = onnx
        .model_for_path(path)
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let outs = plan.run(tvec!(Tensor::from(image).into())).unwrap();
    outs.iter()
        .map(|t| {
            t.try_as_plain_ram()
                .unwrap()
                .as_slice::<f32>()
                .unwrap()
                .to_vec()
        })
        .collect()
}

#[test]
fn dense_out_obeys_the_pattern_and_runs_in_tract() {
    let (_dir, out, report) = sparsify_fixture(&opts("2:4", true, true, &[]));
    assert_eq!(pruned_labels(&report), ["fc1", "gemm", "fc2"]);
    assert_eq!(report.weight_bytes_after, report.weight_bytes_before);
    let inits = initializers(&read_model_inline(&out).unwrap());
    let p = maskd_kernels::NmPattern::TWO_FOUR;
    let w = |name: &str| tensor_f32(&inits[name]).unwrap();
    p.check(&w("fc1.w"), 32, 64).unwrap();
    p.check(&w("fc2.w"), 32, 48).unwrap();
    // Gemm B is [N, K] (transB): the groups run along its rows' K, i.e. its transpose.
    let b = w("gemm.w");
    let bt: Vec<f32> = (0..64 * 32).map(|i| b[(i % 32) * 64 + i / 32]).collect();
    p.check(&bt, 64, 32).unwrap();
    assert!(
        p.check(&w("patch.w"), 64, 32).is_err(),
        "skipped, stays dense"
    );
    let pruned = run_tract(&out);
    assert_eq!(pruned[0].len(), 4 * 8);
    assert!(pruned[0].iter().all(|v| v.is_finite()));
    assert_ne!(
        pruned[0],
        run_tract(&fixture())[0],
        "pruning must change the output"
    );
}

/// The two output forms describe the same pruned model: the engine's `NmMatMul` on
/// the compressed one agrees with tract's dense matmul on the dense one.
#[test]
fn compressed_and_dense_out_agree_in_tract() {
    let (_d1, sparse, _) = sparsify_fixture(&opts("2:4", false, true, &[]));
    let (_d2, dense, _) = sparsify_fixture(&opts("2:4", true, true, &[]));
    let mut onnx = tract_onnx::onnx();
    crate::engine::ops::matmul::register(&mut onnx);
    let (a, b) = (run_with(onnx, &sparse), run_tract(&dense));
    for (x, y) in a[0].iter().zip(&b[0]) {
        assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{x} vs {y}");
    }
}

#[test]
fn skipping_every_layer_keeps_the_outputs_bit_for_bit() {
    let (_dir, out, report) = sparsify_fixture(&opts("2:4", true, false, &[""]));
    assert!(pruned_labels(&report).is_empty());
    assert_eq!(run_tract(&out), run_tract(&fixture()));
}

#[test]
fn bad_patterns_are_explained() {
    for (bad, needle) in [
        ("2:2", "invalid N:M pattern 2:2: need 1 <= N < M <= 16"),
        ("0:4", "invalid N:M pattern 0:4"),
        ("5:4", "invalid N:M pattern 5:4"),
        ("2:17", "invalid N:M pattern 2:17"),
        ("x", "expected N:M such as 2:4, got `x`"),
    ] {
        let err = parse_pattern(bad).unwrap_err();
        assert!(err.contains(needle), "{bad}: {err}");
    }
    assert_eq!(parse_pattern("4:8").unwrap().to_string(), "4:8");
}

#[test]
fn bad_share_counts_are_explained() {
    for bad in ["0", "65", "-1", "two", ""] {
        let err = parse_share(bad).unwrap_err();
        assert!(
            err.contains("from 1 to 64") && err.contains(&format!("`{bad}`")),
            "{err}"
        );
    }
    assert_eq!(parse_share(" 2 "), Ok(2));
}

#[test]
fn missing_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = sparsify(
        Path::new("no/such/model.onnx"),
        &dir.path().join("o.onnx"),
        &opts("2:4", false, true, &[]),
    )
    .unwrap_err();
    let err = format!("{err:#}");
    assert!(err.starts_with("no/such/model.onnx: reading"), "{err}");
}

#[test]
fn missing_external_data_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    std::fs::copy(fixture(), &model).unwrap();
    let err = sparsify(
        &model,
        &dir.path().join("o.onnx"),
        &opts("2:4", false, true, &[]),
    );
    let err = format!("{:#}", err.unwrap_err());
    assert!(
        err.contains("initializer `conv.w`") && err.contains("weights.bin: opening"),
        "{err}"
    );
}

#[test]
fn report_names_layers_and_sums_up() {
    let (_dir, out, report) = sparsify_fixture(&opts("2:4", false, true, &[]));
    let text = render(&report, &fixture(), &out);
    assert!(text.contains("pattern 2:4, maskd.NmMatMul"), "{text}");
    let fc1 = text
        .lines()
        .find(|l| l.trim_start().starts_with("fc1 "))
        .unwrap();
    assert!(
        fc1.contains("32x64") && fc1.contains("1024/2048") && fc1.contains("8192 -> 4352"),
        "{fc1}"
    );
    assert!(text.contains("skipped: first layer on the image"), "{text}");
    assert!(
        text.contains("summary: pruned 3 of 7 layers (3 skipped, 1 not eligible)"),
        "{text}"
    );
}

/// The bundled model (external `weights.bin`), both output forms, through tract:
/// `cargo test --lib sparsify::tests::bundled -- --ignored` (a few seconds).
#[test]
#[ignore = "slow: the bundled model, run by hand"]
fn bundled_model_compressed_and_dense_out_agree() {
    let seg = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/seg/seg.onnx");
    let dir = tempfile::tempdir().unwrap();
    let (sparse, dense) = (dir.path().join("s.onnx"), dir.path().join("d.onnx"));
    let report = sparsify(&seg, &sparse, &opts("2:4", false, true, &[])).unwrap();
    assert_eq!(pruned_labels(&report).len(), 40);
    sparsify(&seg, &dense, &opts("2:4", true, true, &[])).unwrap();
    let run = |onnx: tract_onnx::Onnx, path: &Path| {
        let image = Tensor::from(tract_ndarray::Array4::from_shape_fn(
            (1, 3, 224, 224),
            |(_, c, y, x)| ((c * 7 + y * 3 + x) as f32 * 0.01).sin(),
        ));
        let text = Tensor::from(tract_ndarray::Array2::from_shape_fn((2, 384), |(p, i)| {
            ((p * 384 + i) as f32 * 0.1).cos()
        }));
        let plan = onnx
            .model_for_path(path)
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap();
        let outs = plan.run(tvec!(image.into(), text.into())).unwrap();
        outs.iter()
            .map(|t| {
                t.try_as_plain_ram()
                    .unwrap()
                    .as_slice::<f32>()
                    .unwrap()
                    .to_vec()
            })
            .collect::<Vec<_>>()
    };
    let mut onnx = tract_onnx::onnx();
    crate::engine::ops::matmul::register(&mut onnx);
    let (a, b) = (run(onnx, &sparse), run(tract_onnx::onnx(), &dense));
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        assert!((x - y).abs() <= 1e-3 * (1.0 + y.abs()), "{x} vs {y}");
    }
}
