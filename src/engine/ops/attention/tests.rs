//! Every SIMD kernel against the f64 reference, the self-test and the selection rule,
//! and the rewrite against tract's graph.

use proptest::prelude::*;
use tract_core::internal::*;

use super::kernel::{self, select, Kind, SelectError};
use super::selftest;
use super::test_graph::{attention_model, values};
use super::Geometry;
use super::*;
use crate::engine::test_util::{assert_close, f32s, run_first};

/// The SIMD kernels this CPU runs (not only the selected one).
fn simd_kinds() -> Vec<Kind> {
    Kind::CANDIDATES
        .iter()
        .copied()
        .filter(|k| k.available())
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
    for kind in simd_kinds().into_iter().filter(|k| k.supports(g.dim)) {
        let mut got = vec![f32::NAN; want.len()];
        let mut got_recv = vec![0f32; g.rows()];
        kernel::attend(kind, &g, scale, &qkv, &mut got, Some(&mut got_recv));
        assert_close(&got, &want, 2e-5);
        assert_close(&got_recv, &want_recv, 2e-5);
        // Without the second output the kernel takes another path; same result.
        let mut plain = vec![f32::NAN; want.len()];
        kernel::attend(kind, &g, scale, &qkv, &mut plain, None);
        assert_eq!(
            plain.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{kind:?}: output depends on whether received is asked for"
        );

        let mut parts = vec![f32::NAN; want.len()];
        let mut parts_recv = vec![0f32; g.rows()];
        // One scratch for every chunk, as a pool thread reuses its own.
        let mut scratch = vec![f32::NAN; kind.scratch_len(g.tokens, g.dim)];
        let rows_per = split.clamp(1, g.rows().max(1));
        for (c, chunk) in parts.chunks_mut(rows_per * g.out_row()).enumerate() {
            let recv = Some(&mut parts_recv[..]);
            kernel::attend_rows_in(
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
}

#[test]
fn kernels_on_the_model_shapes() {
    // Encoder blocks (one image), decoder blocks (three prompts), pruned token counts,
    // and counts that leave every kind of tail (keys past a register, a short tile).
    for (batch, tokens) in [
        (1, 196),
        (3, 196),
        (1, 98),
        (1, 49),
        (1, 1),
        (2, 7),
        (1, 197),
        (1, 50),
        (1, 15),
        (1, 33),
    ] {
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
fn kernels_on_other_head_widths() {
    // 16 and 48 wide: a 16-lane column block after (or instead of) 32-lane ones.
    for dim in [16, 48, 80, 128] {
        let g = Geometry {
            batch: 2,
            tokens: 29,
            heads: 2,
            dim,
        };
        check(g, 0.1, 1.5, 11, dim as u64);
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
    fn kernels_match_reference(
        batch in 1usize..4, tokens in 1usize..70, heads in 1usize..4,
        lanes in 1usize..5, scale in 0.05f32..1.0, split in 1usize..50, seed in 0u64..1000,
    ) {
        let g = Geometry { batch, tokens, heads, dim: 16 * lanes };
        check(g, scale, 1.5, split, seed);
    }

    #[test]
    fn kernels_match_reference_on_narrow_heads(
        tokens in 1usize..40, quads in 1usize..6, split in 1usize..20, seed in 0u64..1000,
    ) {
        // Widths a multiple of 4 only: the NEON kernel's one-register tails.
        let g = Geometry { batch: 2, tokens, heads: 2, dim: 4 * quads };
        check(g, 0.3, 1.5, split, seed);
    }
}

#[test]
fn selftest_passes_every_kernel_this_cpu_has() {
    for kind in simd_kinds() {
        let run = |g: &Geometry, s: f32, qkv: &[f32], row0, out: &mut [f32], recv: Received| {
            kernel::attend_rows(kind, g, s, qkv, row0, out, recv)
        };
        assert_eq!(selftest::check(&run), Ok(()), "{kind:?}");
    }
}

#[test]
fn selftest_rejects_a_wrong_kernel() {
    // Off in one output element of the longest probe.
    let nudged =
        |g: &Geometry, s: f32, qkv: &[f32], row0: usize, out: &mut [f32], recv: Received| {
            kernel::attend_rows(Kind::Reference, g, s, qkv, row0, out, recv);
            if g.tokens == 37 && row0 == 0 {
                out[3] += 0.05;
            }
        };
    let err = selftest::check(&nudged).expect_err("a wrong output passed");
    assert!(
        err.contains("T=37") && err.contains("output row 0 column 3"),
        "{err}"
    );
    // Right outputs, but the pruning score left out.
    let forgetful = |g: &Geometry, s: f32, qkv: &[f32], row0, out: &mut [f32], _: Received| {
        kernel::attend_rows(Kind::Reference, g, s, qkv, row0, out, None)
    };
    let err = selftest::check(&forgetful).expect_err("missing received passed");
    assert!(err.contains("received"), "{err}");
    // NaN is not close to anything.
    let nan = |_: &Geometry, _: f32, _: &[f32], _, out: &mut [f32], _: Received| out.fill(f32::NAN);
    assert!(selftest::check(&nan).is_err());
}

/// The second output as a probe passes it.
type Received<'a> = Option<&'a mut [f32]>;

fn failed(kind: Kind) -> SelectError {
    SelectError::SelfTest {
        kernel: kind.name(),
        detail: "probe".into(),
    }
}

#[test]
fn selection_skips_a_kernel_that_fails_its_self_test() {
    // The reference stands in for a slower kernel that passes: it is always there.
    let mut candidates = simd_kinds();
    candidates.push(Kind::Reference);
    let only_reference = |k: Kind| {
        if k == Kind::Reference {
            Ok(())
        } else {
            Err(failed(k))
        }
    };
    assert_eq!(
        select(None, &candidates, &only_reference),
        Ok(Some(Kind::Reference))
    );
    assert_eq!(
        select(Some(" "), &candidates, &only_reference),
        Ok(Some(Kind::Reference))
    );
    // Nothing passes: tract's nodes stay.
    assert_eq!(select(None, &candidates, &|k| Err(failed(k))), Ok(None));
    // Everything passes: the fastest available is first.
    assert_eq!(
        select(None, &candidates, &|_| Ok(())),
        Ok(candidates.first().copied())
    );
}

#[test]
fn the_knob_forces_refuses_or_keeps_tract() {
    let all = Kind::CANDIDATES;
    assert_eq!(select(Some("tract"), all, &|_| Ok(())), Ok(None));
    assert_eq!(
        select(Some("sse9"), all, &|_| Ok(())),
        Err(SelectError::Unknown("sse9".into()))
    );
    for &kind in all {
        let forced = select(Some(kind.name()), all, &|_| Ok(()));
        if kind.available() {
            assert_eq!(forced, Ok(Some(kind)));
            // A forced kernel that fails its self-test is an error, not a fallback.
            assert_eq!(
                select(Some(kind.name()), all, &|k| Err(failed(k))),
                Err(failed(kind))
            );
        } else {
            assert_eq!(forced, Err(SelectError::Unavailable(kind.name())));
        }
    }
}

#[test]
fn the_selected_kernel_is_the_fastest_that_passes() {
    // Unless the environment forces one, every kernel here passes, so it is the first.
    if std::env::var(kernel::KERNEL_ENV).is_err() {
        assert_eq!(Kind::best(), simd_kinds().first().copied());
    }
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
    for kind in simd_kinds() {
        let mut fused_model = model.clone();
        let done = apply_with(&mut fused_model, kind).expect("apply");
        assert_eq!(done, usize::from(fused), "{kind:?} {exprs:?}");
        let got = run_first(fused_model, [x.clone()]);
        assert_eq!(got.shape(), want.shape());
        assert_close(&f32s(&got), &f32s(&want), 1e-5);
    }
    let mut selected = model.clone();
    let expect = usize::from(fused && Kind::best().is_some_and(|k| k.supports(d)));
    assert_eq!(apply(&mut selected).expect("apply"), expect, "{exprs:?}");
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
