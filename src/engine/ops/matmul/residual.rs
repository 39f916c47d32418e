//! Fusing the residual `Add` after an `NmMatMul` into it.
//!
//! A transformer block ends each half with `x + proj(...)` and `x + fc2(...)`: as
//! separate nodes those are 20 more tensors and passes per frame on the default model
//! (~2 ms of the 2:4 frame, `maskd bench --profile`). Fused, each thread adds the
//! residual rows to the rows the kernel has just written
//! ([`super::NmMatMul::with_residual`]); the sum is the same float operation, so the
//! result is bit for bit unchanged.

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::math::Add;

use super::op::{MatMul, Weights};
use crate::engine::ops::graph::substitute;

/// Fuses every `NmMatMul -> Add(y, r)` where `r` is a computed tensor of exactly `y`'s
/// shape and `y` feeds only that `Add`; returns how many.
pub fn fold<W: Weights>(model: &mut TypedModel) -> TractResult<usize> {
    let mut fused = 0;
    for id in model.eval_order()? {
        let Some((op, add_id, r)) = fusable::<W>(model, id)? else {
            continue;
        };
        let with_residual = op.with_residual();
        let name = model.node(id).name.clone();
        let x = model.node(id).inputs[0];
        substitute(
            model,
            &name,
            with_residual,
            &[x, r],
            &[OutletId::new(add_id, 0)],
        )
        .with_context(|| format!("node `{name}`: fusing its residual add"))?;
        fused += 1;
    }
    Ok(fused)
}

fn fusable<W: Weights>(
    model: &TypedModel,
    id: usize,
) -> TractResult<Option<(&MatMul<W>, usize, OutletId)>> {
    let node = model.node(id);
    let Some(op) = node.op_as::<MatMul<W>>() else {
        return Ok(None);
    };
    let out = OutletId::new(id, 0);
    let [succ] = node.outputs[0].successors.as_slice() else {
        return Ok(None);
    };
    if op.residual() || model.output_outlets()?.contains(&out) {
        return Ok(None);
    }
    let add = model.node(succ.node);
    let is_add = add.op_as::<TypedBinOp>().is_some_and(|b| b.0.is::<Add>());
    if !is_add || add.inputs.len() != 2 || add.inputs[0] == add.inputs[1] {
        return Ok(None);
    }
    let Some(&r) = add.inputs.iter().find(|i| **i != out) else {
        return Ok(None);
    };
    let (y, rf, sum) = (
        model.outlet_fact(out)?,
        model.outlet_fact(r)?,
        model.outlet_fact(OutletId::new(succ.node, 0))?,
    );
    // No broadcast either way (a constant is a bias, handled by `bias.rs`).
    if rf.konst.is_some()
        || rf.datum_type != f32::datum_type()
        || rf.shape != y.shape
        || sum.shape != y.shape
    {
        return Ok(None);
    }
    Ok(Some((op, succ.node, r)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ops::matmul::op::SparseWeights;
    use crate::engine::ops::matmul::tests::layer;
    use crate::engine::ops::matmul::NmMatMul;
    use crate::engine::test_util::{f32s, run_first};
    use tract_core::ops::math::add;

    const K: usize = 16;
    const N: usize = 24;

    /// x[5,K] -> NmMatMul (+bias) -> + r (r = a second input of shape [5,N], or of
    /// shape [1,N] when `broadcast`, which must block the fusion).
    fn model(broadcast: bool) -> TypedModel {
        let mut g = TypedModel::default();
        let x = g.add_source("x", f32::fact([5, K])).expect("source");
        let rows = if broadcast { 1 } else { 5 };
        let r = g.add_source("r", f32::fact([rows, N])).expect("source");
        let y = g.wire_node("fc2", layer(K, N, true), &[x]).expect("fc2")[0];
        let z = g.wire_node("residual", add(), &[r, y]).expect("add")[0];
        g.select_output_outlets(&[z]).expect("outputs");
        g
    }

    fn run(g: TypedModel, rows: usize) -> Vec<f32> {
        let x: Vec<f32> = (0..5 * K).map(|i| (i as f32 * 0.29).cos() * 2.0).collect();
        let r: Vec<f32> = (0..rows * N).map(|i| (i as f32 * 0.13).sin()).collect();
        let x = Tensor::from_shape(&[5, K], &x).expect("x");
        let r = Tensor::from_shape(&[rows, N], &r).expect("r");
        f32s(&run_first(g, [x, r]))
    }

    #[test]
    fn residual_add_is_fused_bit_for_bit() {
        let want = run(model(false), 5);
        let mut g = model(false);
        assert_eq!(fold::<SparseWeights>(&mut g).expect("fold"), 1);
        let g = g.into_decluttered().expect("declutter");
        assert!(g.nodes().iter().all(|n| n.op_as::<TypedBinOp>().is_none()));
        assert!(g
            .nodes()
            .iter()
            .filter_map(|n| n.op_as::<NmMatMul>())
            .all(NmMatMul::residual));
        let got = run(g, 5);
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_broadcast_add_is_left_alone() {
        let mut g = model(true);
        assert_eq!(fold::<SparseWeights>(&mut g).expect("fold"), 0);
    }
}
