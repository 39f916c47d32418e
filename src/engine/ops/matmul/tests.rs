//! Plans loaded from the ONNX graphs of `tests/data/sparse/` (made by
//! `tests/fixtures/make_sparse_fixture.py`) under each `engine.sparse_kernel` mode.

use std::path::{Path, PathBuf};

use maskd_kernels::{KernelKind, NmPattern};
use tract_onnx::prelude::*;

use super::NmMatMul;
use crate::config::SparseKernel;
use crate::engine::plan::{output_f32, Dim, IoSpec, Plan, PlanOptions};

const T: usize = 5;
const K: usize = 22;

fn data(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/sparse")
        .join(file)
}

fn load(file: &str, mode: SparseKernel, out_width: usize) -> anyhow::Result<Plan> {
    let f = f32::datum_type();
    let inputs = [IoSpec::new(
        "x",
        f,
        &[Dim::Fixed(1), Dim::Sym("T"), Dim::Fixed(K)],
    )];
    let outputs = [IoSpec::new(
        "y",
        f,
        &[Dim::Fixed(1), Dim::Sym("T"), Dim::Fixed(out_width)],
    )];
    let options = PlanOptions::default().with_sparse_kernel(mode);
    Plan::load(&data(file), Path::new(file), &inputs, &outputs, &options)
}

/// `x_value` of the generator, `[1, T, K]`.
fn input() -> Tensor {
    let x: Vec<f32> = (0..T * K)
        .map(|i| ((i * 37) % 101) as f32 / 32.0 - 50.0 / 32.0)
        .collect();
    Tensor::from_shape(&[1, T, K], &x).unwrap()
}

fn run(plan: &Plan) -> Vec<f32> {
    let out = plan
        .spawn()
        .unwrap()
        .run(tvec!(input().into_tvalue()))
        .unwrap();
    assert_eq!(out[0].shape(), &[1, T, 6]);
    output_f32(&out, 0, "y").unwrap().to_vec()
}

/// numpy's float64 result for `graph` (`nm` or `dense24`) from `reference.tsv`.
fn reference(graph: &str) -> Vec<f64> {
    let text = std::fs::read_to_string(data("reference.tsv")).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{graph}\t")))
        .unwrap();
    line.split(' ').map(|v| v.parse().unwrap()).collect()
}

fn assert_close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().fold(1f64, |a, v| a.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= 1e-5 * scale,
            "{what}: y[{i}] = {g}, want {w}"
        );
    }
}

fn nm_nodes(plan: &Plan) -> usize {
    plan.plan
        .model()
        .nodes()
        .iter()
        .filter(|n| n.op_is::<NmMatMul>())
        .count()
}

/// Whether `auto` runs `pattern` sparse on this machine.
fn simd(pattern: NmPattern) -> bool {
    let family = maskd_kernels::selected().unwrap();
    family != KernelKind::Generic && family.supports(pattern)
}

#[test]
fn nm_graph_matches_numpy_in_every_mode() {
    let want = reference("nm");
    let one_three = NmPattern::new(1, 3).unwrap();
    for mode in [
        SparseKernel::Sparse,
        SparseKernel::Auto,
        SparseKernel::Dense,
    ] {
        let plan = load("nm.onnx", mode, 6).unwrap();
        assert_close(&run(&plan), &want, &format!("{mode:?}"));
        let layers: Vec<(&str, NmPattern, usize, usize)> = plan
            .sparse_layers()
            .iter()
            .map(|l| (l.name.as_str(), l.pattern, l.k, l.n))
            .collect();
        let fc1 = ("fc1", NmPattern::TWO_FOUR, 22, 25);
        let fc2 = ("fc2", one_three, 25, 6);
        let expected: Vec<_> = match mode {
            SparseKernel::Sparse => vec![fc1, fc2],
            SparseKernel::Auto => [fc1, fc2].into_iter().filter(|l| simd(l.1)).collect(),
            SparseKernel::Dense => vec![],
        };
        assert_eq!(layers, expected, "{mode:?}");
        assert_eq!(nm_nodes(&plan), expected.len(), "{mode:?}");
        assert_eq!(
            plan.sparse().dense.len() + expected.len(),
            2,
            "{mode:?}: {:?}",
            plan.sparse()
        );
    }
}

#[test]
fn sparse_mode_runs_the_generic_kernel_where_no_simd_one_fits() {
    let plan = load("nm.onnx", SparseKernel::Sparse, 6).unwrap();
    let fc2 = &plan.sparse_layers()[1];
    if !simd(fc2.pattern) {
        assert_eq!(fc2.kernel, "generic_spmm13_f32");
    }
    assert!(plan.sparse().summary().ends_with(", 0 dense"));
}

#[test]
fn dense_mode_removes_every_matmul() {
    let plan = load("nm.onnx", SparseKernel::Dense, 6).unwrap();
    assert_eq!(nm_nodes(&plan), 0);
    assert!(plan.sparse_layers().is_empty());
    assert_eq!(
        plan.sparse().dense,
        vec!["fc1".to_owned(), "fc2".to_owned()]
    );
    assert_eq!(plan.sparse().summary(), "0 layers sparse, 2 dense");
}

#[test]
fn dense_weights_obeying_two_four_are_rewritten() {
    let want = reference("dense24");
    for mode in [
        SparseKernel::Sparse,
        SparseKernel::Auto,
        SparseKernel::Dense,
    ] {
        let plan = load("dense24.onnx", mode, 6).unwrap();
        assert_close(&run(&plan), &want, &format!("{mode:?}"));
        let rewritten = match mode {
            SparseKernel::Sparse => true,
            SparseKernel::Auto => simd(NmPattern::TWO_FOUR),
            SparseKernel::Dense => false,
        };
        // fc1 (drops the unit batch axis) and head (adds it) obey 2:4; fc2 is dense.
        let layers: Vec<(&str, usize, usize)> = plan
            .sparse_layers()
            .iter()
            .map(|l| (l.name.as_str(), l.k, l.n))
            .collect();
        if rewritten {
            assert_eq!(layers, [("fc1", 22, 25), ("head", 12, 6)], "{mode:?}");
            assert!(plan.sparse().dense.is_empty(), "{mode:?}");
        } else {
            assert!(layers.is_empty(), "{mode:?}");
            assert_eq!(plan.sparse().dense, ["fc1", "head"], "{mode:?}");
        }
        assert_eq!(nm_nodes(&plan), layers.len(), "{mode:?}");
    }
}

#[test]
fn summary_names_pattern_kernel_and_dense_count() {
    let plan = load("nm.onnx", SparseKernel::Sparse, 6).unwrap();
    let l = plan.sparse_layers();
    // Different patterns are never merged, even on the same kernel family.
    assert_eq!(
        plan.sparse().summary(),
        format!(
            "1 layer 2:4 sparse ({}), 1 layer 1:3 sparse ({}), 0 dense",
            l[0].kernel, l[1].kernel
        )
    );
}

#[test]
fn malformed_indices_name_the_node() {
    let err = load("bad_indices.onnx", SparseKernel::Auto, 6).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.starts_with("bad_indices.onnx: typing the graph"),
        "{msg}"
    );
    assert!(msg.contains("node `fc_bad` (maskd.NmMatMul)"), "{msg}");
    assert!(
        msg.contains("compressed indices has 13 elements, expected 14"),
        "{msg}"
    );
}

/// A 2:4 layer `K x N` of fixed pseudo-random weights (and bias `0.1·c - 1`), for the
/// fold tests.
pub(super) fn layer(k: usize, n: usize, bias: bool) -> NmMatMul {
    let w: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.37).sin()).collect();
    let m =
        maskd_kernels::NmMatrix::from_dense_pruned(&w, k, n, NmPattern::TWO_FOUR).expect("matrix");
    let b = bias.then(|| (0..n).map(|i| i as f32 * 0.1 - 1.0).collect());
    NmMatMul::new(m, b).expect("op")
}
