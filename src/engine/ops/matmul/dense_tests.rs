//! `maskd.DenseMatMul` in graphs: the rewrite from tract's matmuls (plain and the
//! two-axis contraction of an attention projection), the folded epilogues, and the
//! same bits on one and two threads.

use tract_core::internal::*;
use tract_core::ops::einsum::EinSum;
use tract_core::ops::math::add;
use tract_linalg::multithread::Executor;

use super::{apply, DenseMatMul};
use crate::config::SparseKernel;
use crate::engine::test_util::f32s;

fn data(len: usize, seed: f32) -> Vec<f32> {
    (0..len).map(|i| (i as f32 * 0.37 + seed).sin()).collect()
}

/// `x[T, B, D] · W[B, D, N] + bias + r` as an exported attention projection with its
/// residual becomes after decluttering: `mbk,bkn->mn`, then two `Add`s.
fn projection(t: usize, b: usize, d: usize, n: usize) -> TypedModel {
    let mut m = TypedModel::default();
    let x = m.add_source("x", f32::fact([t, b, d])).expect("x");
    let r = m.add_source("r", f32::fact([t, n])).expect("r");
    let w = m
        .add_const(
            "w",
            Tensor::from_shape(&[b, d, n], &data(b * d * n, 1.0)).expect("w"),
        )
        .expect("const");
    let y = m
        .wire_node(
            "proj",
            EinSum::new("mbk,bkn->mn".parse().expect("axes"), f32::datum_type()),
            &[x, w],
        )
        .expect("einsum")[0];
    let bias = m
        .add_const(
            "bias",
            Tensor::from_shape(&[1, n], &data(n, 2.0)).expect("bias"),
        )
        .expect("const");
    let y = m.wire_node("plus_bias", add(), &[y, bias]).expect("add")[0];
    let y = m.wire_node("residual", add(), &[y, r]).expect("add")[0];
    m.select_output_outlets(&[y]).expect("outputs");
    m
}

fn run(model: TypedModel, inputs: &[Tensor], threads: usize) -> Vec<f32> {
    let options = RunOptions {
        executor: (threads > 1).then(|| Executor::multithread(threads)),
        ..RunOptions::default()
    };
    let plan =
        TypedSimplePlan::new_with_options(model.into_optimized().expect("optimise"), &options)
            .expect("plan");
    let feed: TVec<TValue> = inputs.iter().map(|t| t.clone().into_tvalue()).collect();
    let out = plan.spawn().expect("spawn").run(feed).expect("run");
    f32s(&out[0])
}

fn dense_ops(model: &TypedModel) -> Vec<DenseMatMul> {
    model
        .nodes()
        .iter()
        .filter_map(|n| n.op_as::<DenseMatMul>().cloned())
        .collect()
}

#[test]
fn an_attention_projection_runs_dense_with_bias_and_residual_folded() {
    if maskd_kernels::dense::best() == maskd_kernels::DenseKind::Generic {
        return; // tract keeps its matmuls where no SIMD dense kernel runs
    }
    for t in [196, 49, 3] {
        let (b, d, n) = (3, 64, 192);
        let inputs = [
            Tensor::from_shape(&[t, b, d], &data(t * b * d, 3.0)).expect("x"),
            Tensor::from_shape(&[t, n], &data(t * n, 4.0)).expect("r"),
        ];
        let want = run(projection(t, b, d, n), &inputs, 1);
        let mut m = projection(t, b, d, n)
            .into_decluttered()
            .expect("declutter");
        apply(&mut m, SparseKernel::Auto, true).expect("rewrite");
        let ops = dense_ops(&m);
        assert_eq!(ops.len(), 1, "T={t}: {m}");
        assert!(ops[0].residual() && ops[0].bias().is_some(), "{:?}", ops[0]);
        assert_eq!((ops[0].k(), ops[0].n()), (b * d, n));
        let one = run(m.clone(), &inputs, 1);
        let worst = one
            .iter()
            .zip(&want)
            .fold(0f32, |w, (a, b)| w.max((a - b).abs()));
        assert!(
            worst < 1e-4,
            "T={t}: DenseMatMul vs tract max |diff| {worst}"
        );
        // Rows (T = 196, 49) or columns (T = 3) over two threads: the same bits.
        assert_eq!(run(m, &inputs, 2), one, "T={t}: two threads");
    }
}

#[test]
fn with_dense_ops_off_tract_keeps_its_matmuls() {
    let mut m = projection(49, 3, 64, 192)
        .into_decluttered()
        .expect("declutter");
    apply(&mut m, SparseKernel::Auto, false).expect("rewrite");
    assert!(dense_ops(&m).is_empty());
    assert!(m.nodes().iter().any(|n| n.op_as::<EinSum>().is_some()));
}
