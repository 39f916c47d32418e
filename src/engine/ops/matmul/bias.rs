//! Folding a bias `Add` into the `NmMatMul` before it.
//!
//! ONNX exporters write `Linear` as `MatMul` + `Add`, and `maskd sparsify` keeps that
//! split, so every sparse layer was followed by a separate pass over its output
//! (48 bias nodes, ~1.3 ms of a frame on the default 2:4 model). The kernels already
//! start their accumulators from a bias, so the `Add` becomes free.

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::math::Add;

use super::op::{MatMul, Weights};
use crate::engine::ops::graph::substitute;

/// Folds every `NmMatMul -> Add(constant [.., N])` whose matmul output feeds only that
/// `Add`; returns how many.
pub fn fold<W: Weights>(model: &mut TypedModel) -> TractResult<usize> {
    let mut folded = 0;
    for id in model.eval_order()? {
        let Some((op, add_id, bias)) = foldable::<W>(model, id)? else {
            continue;
        };
        let with_bias = op.with_bias(bias)?;
        let name = model.node(id).name.clone();
        let x = model.node(id).inputs[0];
        substitute(model, &name, with_bias, &[x], &[OutletId::new(add_id, 0)])
            .with_context(|| format!("node `{name}`: folding its bias"))?;
        folded += 1;
    }
    Ok(folded)
}

/// The op, the `Add` node, the bias.
type Foldable<'a, W> = (&'a MatMul<W>, usize, Vec<f32>);

/// `(the op, the Add node, the bias)` when node `id` is a bias-less `NmMatMul` followed
/// only by an `Add` of a constant that broadcasts along the last axis alone.
fn foldable<W: Weights>(model: &TypedModel, id: usize) -> TractResult<Option<Foldable<'_, W>>> {
    let node = model.node(id);
    let Some(op) = node.op_as::<MatMul<W>>() else {
        return Ok(None);
    };
    let out = OutletId::new(id, 0);
    // After a fused epilogue an `Add` is no longer a bias.
    if op.bias().is_some()
        || op.gelu()
        || op.residual()
        || node.outputs[0].successors.len() != 1
        || model.output_outlets()?.contains(&out)
    {
        return Ok(None);
    }
    let add_id = node.outputs[0].successors[0].node;
    let add = model.node(add_id);
    let is_add = add.op_as::<TypedBinOp>().is_some_and(|b| b.0.is::<Add>());
    if !is_add || add.inputs.len() != 2 {
        return Ok(None);
    }
    let Some(other) = add.inputs.iter().find(|i| **i != out) else {
        return Ok(None);
    };
    let Some(konst) = model.outlet_fact(*other)?.konst.clone() else {
        return Ok(None);
    };
    let n = op.n();
    let shape = konst.shape();
    let per_column = shape.last() == Some(&n) && shape.iter().rev().skip(1).all(|&d| d == 1);
    // The Add must not broadcast the matmul output to a bigger shape.
    let same_shape =
        model.outlet_fact(out)?.shape == model.outlet_fact(OutletId::new(add_id, 0))?.shape;
    if konst.datum_type() != f32::datum_type() || !per_column || !same_shape {
        return Ok(None);
    }
    let bias = konst.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    Ok(Some((op, add_id, bias)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ops::matmul::op::SparseWeights;
    use crate::engine::ops::matmul::tests::layer;
    use crate::engine::ops::matmul::NmMatMul;
    use crate::engine::test_util::{f32s, run_first};
    use tract_core::ops::math::add;

    const K: usize = 8;
    const N: usize = 5;

    /// x[2,3,K] -> NmMatMul -> + bias[1,1,N]; `reuse` also sends the matmul output to
    /// a second output, which must block the fold.
    fn model(reuse: bool) -> TypedModel {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([2, 3, K])).expect("source");
        let y = m.wire_node("fc", layer(K, N, false), &[x]).expect("fc")[0];
        let b: Vec<f32> = (0..N).map(|i| i as f32 - 2.0).collect();
        let b = m
            .add_const("b", Tensor::from_shape(&[1, 1, N], &b).expect("bias"))
            .expect("const");
        let z = m.wire_node("bias", add(), &[y, b]).expect("add")[0];
        let outs = if reuse { vec![z, y] } else { vec![z] };
        m.select_output_outlets(&outs).expect("outputs");
        m
    }

    fn run(m: TypedModel) -> Vec<f32> {
        let x: Vec<f32> = (0..2 * 3 * K).map(|i| (i as f32 * 0.11).cos()).collect();
        f32s(&run_first(
            m,
            [Tensor::from_shape(&[2, 3, K], &x).expect("x")],
        ))
    }

    #[test]
    fn bias_add_is_folded_and_gives_the_same_result() {
        let want = run(model(false));
        let mut m = model(false);
        assert_eq!(fold::<SparseWeights>(&mut m).expect("fold"), 1);
        let m = m.into_decluttered().expect("declutter");
        assert!(m.nodes().iter().all(|n| n.op_as::<TypedBinOp>().is_none()));
        let fc = m
            .nodes()
            .iter()
            .find_map(|n| n.op_as::<NmMatMul>())
            .expect("fc");
        assert_eq!(fc.bias().map(<[f32]>::len), Some(N));
        let (a, b) = (run(m), want);
        assert_eq!(a.len(), 2 * 3 * N);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
    }

    #[test]
    fn matmul_output_used_elsewhere_keeps_its_add() {
        let mut m = model(true);
        assert_eq!(fold::<SparseWeights>(&mut m).expect("fold"), 0);
    }
}
