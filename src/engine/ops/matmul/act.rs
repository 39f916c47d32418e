//! Fusing the GELU after an `NmMatMul` into it.
//!
//! In a ViT MLP the first layer's output goes straight into a GELU: as a separate node
//! it is one more tensor and one more pass over 196 x 768 floats (more than L2 holds
//! on the decoder's three prompts). Fused, each thread applies it to the rows the
//! kernel has just written ([`super::NmMatMul::with_gelu`]), with the same SIMD code
//! as [`crate::engine::ops::gelu::FastGelu`]. Only where that code is SIMD: elsewhere
//! tract's own GELU is the faster one.

use tract_core::internal::*;
use tract_core::ops::element_wise::ElementWiseOp;
use tract_core::ops::nn::GeluApproximate;

use super::op::{MatMul, Weights};
use crate::engine::ops::gelu;
use crate::engine::ops::graph::substitute;

/// Fuses every `NmMatMul -> GeluApproximate (tanh form, f32)` whose matmul output
/// feeds only the GELU; returns how many.
pub fn fold<W: Weights>(model: &mut TypedModel) -> TractResult<usize> {
    if !gelu::simd() {
        return Ok(0);
    }
    let mut fused = 0;
    for id in model.eval_order()? {
        let Some((op, gelu_id)) = fusable::<W>(model, id)? else {
            continue;
        };
        let with_gelu = op.with_gelu();
        let name = model.node(id).name.clone();
        let x = model.node(id).inputs[0];
        substitute(model, &name, with_gelu, &[x], &[OutletId::new(gelu_id, 0)])
            .with_context(|| format!("node `{name}`: fusing its GELU"))?;
        fused += 1;
    }
    Ok(fused)
}

fn fusable<W: Weights>(model: &TypedModel, id: usize) -> TractResult<Option<(&MatMul<W>, usize)>> {
    let node = model.node(id);
    let Some(op) = node.op_as::<MatMul<W>>() else {
        return Ok(None);
    };
    let out = OutletId::new(id, 0);
    let [succ] = node.outputs[0].successors.as_slice() else {
        return Ok(None);
    };
    // The residual is added after the GELU: a GELU after the sum is another function.
    if op.gelu() || op.residual() || model.output_outlets()?.contains(&out) {
        return Ok(None);
    }
    let next = model.node(succ.node);
    let is_gelu = next
        .op_as::<ElementWiseOp>()
        .and_then(|e| e.0.downcast_ref::<GeluApproximate>())
        .is_some_and(|g| !g.fast_impl);
    Ok(is_gelu.then_some((op, succ.node)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ops::matmul::op::SparseWeights;
    use crate::engine::ops::matmul::tests::layer;
    use crate::engine::ops::matmul::NmMatMul;
    use crate::engine::test_util::{f32s, run_first};
    use tract_core::ops::nn::gelu_approximate::gelu_approximate;

    const K: usize = 16;
    const N: usize = 24;

    /// x[5,K] -> NmMatMul -> GELU; `reuse` also outputs the matmul, blocking the fusion.
    fn model(reuse: bool) -> TypedModel {
        let mut g = TypedModel::default();
        let x = g.add_source("x", f32::fact([5, K])).expect("source");
        let y = g.wire_node("fc1", layer(K, N, true), &[x]).expect("fc1")[0];
        let z = g
            .wire_node("act", gelu_approximate(false), &[y])
            .expect("gelu")[0];
        let outs = if reuse { vec![z, y] } else { vec![z] };
        g.select_output_outlets(&outs).expect("outputs");
        g
    }

    fn run(g: TypedModel) -> Vec<f32> {
        let x: Vec<f32> = (0..5 * K).map(|i| (i as f32 * 0.29).cos() * 2.0).collect();
        f32s(&run_first(g, [Tensor::from_shape(&[5, K], &x).expect("x")]))
    }

    #[test]
    fn gelu_is_fused_and_gives_tracts_result() {
        let want = run(model(false));
        let mut g = model(false);
        let fused = fold::<SparseWeights>(&mut g).expect("fold");
        assert_eq!(fused, usize::from(gelu::simd()));
        if fused == 1 {
            let g2 = g.clone().into_decluttered().expect("declutter");
            assert!(g2
                .nodes()
                .iter()
                .all(|n| n.op_as::<ElementWiseOp>().is_none()));
            assert!(g2
                .nodes()
                .iter()
                .filter_map(|n| n.op_as::<NmMatMul>())
                .all(|o| o.gelu()));
        }
        let got = run(g);
        assert_eq!(got.len(), want.len());
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-5 + 2e-6 * b.abs(), "{a} vs {b}");
        }
    }

    #[test]
    fn a_matmul_read_elsewhere_keeps_its_gelu_separate() {
        let mut g = model(true);
        assert_eq!(fold::<SparseWeights>(&mut g).expect("fold"), 0);
    }
}
