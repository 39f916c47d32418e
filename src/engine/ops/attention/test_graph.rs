//! Test inputs shared by the kernel tests and the benchmark: reproducible values and
//! the subgraph tract makes of an exported attention.

use tract_core::internal::*;
use tract_core::ops::array::Gather;
use tract_core::ops::einsum::EinSum;
use tract_core::ops::math::mul;
use tract_core::ops::nn::Softmax;

/// `n` values uniform in `[-amp, amp)` from `seed`.
pub fn values(n: usize, seed: u64, amp: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * amp
        })
        .collect()
}

/// The subgraph tract makes of `softmax(q·kᵀ·scale)·v` exported from PyTorch, on a
/// `[B, T, 3·H·D]` input (`B` = `None`: rank 2), with the einsum strings tract's
/// declutter produced for the default model.
pub fn attention_model(
    batch: Option<usize>,
    t: usize,
    h: usize,
    d: usize,
    exprs: [&str; 2],
) -> TypedModel {
    let mut m = TypedModel::default();
    let packed = 3 * h * d;
    let shape: TVec<usize> = match batch {
        Some(b) => tvec![b, t, packed],
        None => tvec![t, packed],
    };
    let r = shape.len();
    let x = m.add_source("qkv", f32::fact(&shape)).expect("source");
    let x = m
        .wire_node(
            "split",
            AxisOp::Reshape(
                r - 1,
                tvec![packed.to_dim()],
                tvec![3.to_dim(), h.to_dim(), d.to_dim()],
            ),
            &[x],
        )
        .expect("reshape")[0];
    let x = m
        .wire_node("move0", AxisOp::Move(r - 1, 0), &[x])
        .expect("move")[0];
    let x = m
        .wire_node("move1", AxisOp::Move(r - 1, r), &[x])
        .expect("move")[0];
    let part = |m: &mut TypedModel, i: i64| {
        let idx = m.add_const(format!("idx{i}"), tensor0(i)).expect("const");
        m.wire_node(format!("gather{i}"), Gather::new(0), &[x, idx])
            .expect("gather")[0]
    };
    let (q, k, v) = (part(&mut m, 0), part(&mut m, 1), part(&mut m, 2));
    let rank = m.outlet_fact(q).expect("fact").rank();
    let s = m
        .add_const(
            "scale",
            Tensor::from_shape(&vec![1; rank], &[0.125f32]).expect("scale"),
        )
        .expect("const");
    let q = m.wire_node("scaled", mul(), &[q, s]).expect("mul")[0];
    let e1 = EinSum::new(exprs[0].parse().expect("axes"), f32::datum_type());
    let a = m.wire_node("qk", e1, &[q, k]).expect("qk")[0];
    let ar = m.outlet_fact(a).expect("fact").rank();
    let a = m
        .wire_node(
            "softmax",
            Softmax::new(tvec![ar - 1], None, Default::default()),
            &[a],
        )
        .expect("softmax")[0];
    let e2 = EinSum::new(exprs[1].parse().expect("axes"), f32::datum_type());
    let o = m.wire_node("pv", e2, &[a, v]).expect("pv")[0];
    m.select_output_outlets(&[o]).expect("outputs");
    m
}
