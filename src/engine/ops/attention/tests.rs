//! The SIMD kernel against the f64 reference, and the rewrite against tract's graph.

use proptest::prelude::*;
use tract_core::internal::*;
use tract_core::ops::array::Gather;
use tract_core::ops::einsum::EinSum;
use tract_core::ops::math::mul;
use tract_core::ops::nn::Softmax;

use super::kernel::{self, Kind};
use super::Geometry;
use super::*;
use crate::engine::test_util::{assert_close, f32s, run_first};

fn values(n: usize, seed: u64, amp: f32) -> Vec<f32> {
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

/// Every kernel this CPU has, whole and split into arbitrary row chunks (as the
/// thread pool splits it), against the reference. Outputs start as NaN so an
/// unwritten element fails.
fn check(g: Geometry, scale: f32, amp: f32, split: usize, seed: u64) {
    let qkv = values(g.rows() * g.qkv_row(), seed, amp);
    let mut want = vec![f32::NAN; g.rows() * g.out_row()];
    let mut want_recv = vec![0f32; g.rows()];
    kernel::attend(
        Kind::Reference,
        &g,
        scale,
        &qkv,
        &mut want,
        Some(&mut want_recv),
    );
    // Each query row hands out probability 1 per head.
    let total: f32 = want_recv.iter().sum();
    let expect = (g.rows() * g.heads) as f32;
    assert!(
        (total - expect).abs() <= 1e-3 * expect,
        "{total} vs {expect}"
    );
    let Some(kind) = Kind::best() else {
        return;
    };
    if !kind.supports(g.dim) {
        return;
    }
    let mut got = vec![f32::NAN; want.len()];
    let mut got_recv = vec![0f32; g.rows()];
    kernel::attend(kind, &g, scale, &qkv, &mut got, Some(&mut got_recv));
    assert_close(&got, &want, 2e-5);
    assert_close(&got_recv, &want_recv, 2e-5);

    let mut parts = vec![f32::NAN; want.len()];
    let mut parts_recv = vec![0f32; g.rows()];
    let mut scratch = vec![0f32; kernel::scratch_len(kind, g.tokens, g.dim)];
    let rows_per = split.clamp(1, g.rows().max(1));
    for (c, chunk) in parts.chunks_mut(rows_per * g.out_row()).enumerate() {
        let recv = Some(&mut parts_recv[..]);
        kernel::attend_rows(
            kind,
            &g,
            scale,
            &qkv,
            c * rows_per,
            chunk,
            &mut scratch,
            recv,
        );
    }
    assert_close(&parts, &want, 2e-5);
    assert_close(&parts_recv, &want_recv, 2e-5);
}

#[test]
fn kernel_on_the_model_shapes() {
    // Encoder blocks (one image), decoder blocks (three prompts), pruned token counts.
    for (batch, tokens) in [(1, 196), (3, 196), (1, 98), (1, 49)] {
        let g = Geometry {
            batch,
            tokens,
            heads: 3,
            dim: 64,
        };
        check(g, 0.125, 2.0, 37, tokens as u64);
    }
}

#[test]
fn kernel_softmax_survives_large_scores() {
    // Scores of several hundred: exp must not overflow, one key takes all the weight.
    let g = Geometry {
        batch: 2,
        tokens: 23,
        heads: 2,
        dim: 16,
    };
    check(g, 1.0, 8.0, 5, 7);
}

#[test]
fn reference_is_attention() {
    // One query, two keys with a score gap of ln 3: weights 3/4 and 1/4.
    let g = Geometry {
        batch: 1,
        tokens: 2,
        heads: 1,
        dim: 1,
    };
    let ln3 = 3f32.ln();
    // rows: [q, k, v] per token
    let qkv = [1.0, ln3, 10.0, 1.0, 0.0, 20.0];
    let mut out = [0f32; 2];
    let mut received = [0f32; 2];
    kernel::attend(
        Kind::Reference,
        &g,
        1.0,
        &qkv,
        &mut out,
        Some(&mut received),
    );
    assert!((out[0] - 12.5).abs() < 1e-4, "{out:?}");
    assert!((out[1] - 12.5).abs() < 1e-4, "{out:?}");
    // Both queries give the first key 3/4 and the second 1/4.
    assert!((received[0] - 1.5).abs() < 1e-5, "{received:?}");
    assert!((received[1] - 0.5).abs() < 1e-5, "{received:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn kernel_matches_reference(
        batch in 1usize..4, tokens in 1usize..45, heads in 1usize..4,
        lanes in 1usize..5, scale in 0.05f32..1.0, split in 1usize..50, seed in 0u64..1000,
    ) {
        let g = Geometry { batch, tokens, heads, dim: 16 * lanes };
        check(g, scale, 1.5, split, seed);
    }
}

/// The subgraph tract makes of `softmax(q·kᵀ·scale)·v` exported from PyTorch, on a
/// `[B, T, 3·H·D]` input (`B` = `None`: rank 2), with the einsum strings tract's
/// declutter produced for the default model.
fn attention_model(
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

fn rewrite_case(batch: Option<usize>, exprs: [&str; 2], fused: bool) {
    let (t, h, d) = (13, 2, 16);
    let model = attention_model(batch, t, h, d, exprs);
    let n = batch.unwrap_or(1) * t * 3 * h * d;
    let shape: Vec<usize> = match batch {
        Some(b) => vec![b, t, 3 * h * d],
        None => vec![t, 3 * h * d],
    };
    let x = Tensor::from_shape(&shape, &values(n, 3, 2.0)).expect("tensor");
    let want = run_first(model.clone(), [x.clone()]);
    let mut model = model;
    let done = apply(&mut model).expect("apply");
    let expect = usize::from(fused && Kind::best().is_some_and(|k| k.supports(d)));
    assert_eq!(done, expect, "{exprs:?}");
    let got = run_first(model, [x]);
    assert_eq!(got.shape(), want.shape());
    assert_close(&f32s(&got), &f32s(&want), 1e-5);
}

#[test]
fn rewrite_matches_tract_on_the_encoder_form() {
    // Batch 1 absorbed by the einsums, as in the encoder blocks.
    rewrite_case(Some(1), ["abmk,abnk->bmn", "bmk,abkn->mbn"], true);
}

#[test]
fn rewrite_matches_tract_on_the_decoder_form() {
    // Batch kept (the prompts), as in the decoder blocks.
    rewrite_case(Some(3), ["abmk,abnk->abmn", "abmk,abkn->ambn"], true);
}

#[test]
fn rewrite_matches_tract_without_a_batch_axis() {
    rewrite_case(None, ["bmk,bnk->bmn", "bmk,bkn->mbn"], true);
}

#[test]
fn other_layouts_keep_tract_nodes() {
    // Output heads-major ([B, H, T, D]): not what the op writes, so left alone.
    rewrite_case(Some(2), ["abmk,abnk->abmn", "abmk,abkn->abmn"], false);
    // Scores transposed, so the softmax normalises over queries: not attention.
    rewrite_case(Some(1), ["abmk,abnk->bnm", "bnm,abnc->mbc"], false);
}
