//! The start-up probe a SIMD attention kernel must pass before it is chosen: a few
//! small attentions (one key, a key count off the lane width, rows split mid-tile and
//! across batch items, scores large enough to test the exponential's range) against
//! the f64 reference, outputs and the received sums both. Well under a millisecond.

use super::geometry::Geometry;
use super::kernel::{attend_rows, Kind};

/// A kernel under test: `attend_rows` without the kind (the tests pass a wrong one).
pub(super) type Run<'a> = &'a dyn Fn(&Geometry, f32, &[f32], usize, &mut [f32], Option<&mut [f32]>);

/// `(batch, tokens, heads, dim, rows per call, scale, amplitude)`. Every SIMD kernel
/// handles head widths that are multiples of 16.
const PROBES: [(usize, usize, usize, usize, usize, f32, f32); 4] = [
    (2, 1, 1, 16, 1, 0.25, 1.0),
    (1, 23, 2, 64, 5, 0.125, 1.0),
    (2, 37, 1, 32, 17, 0.2, 1.0),
    // Scores up to ~100: exp must neither overflow nor flush the winner.
    (1, 19, 1, 16, 19, 1.0, 3.0),
];

/// Checks `run` against the reference on every probe; the error names the probe,
/// the element and both values.
pub(super) fn check(run: Run) -> Result<(), String> {
    let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
    for (batch, tokens, heads, dim, split, scale, amp) in PROBES {
        let g = Geometry {
            batch,
            tokens,
            heads,
            dim,
        };
        let qkv: Vec<f32> = (0..g.rows() * g.qkv_row())
            .map(|_| amp * uniform(&mut rng))
            .collect();
        let mut want = vec![0f32; g.rows() * g.out_row()];
        let mut want_recv = vec![0f32; g.rows()];
        attend_rows(
            Kind::Reference,
            &g,
            scale,
            &qkv,
            0,
            &mut want,
            Some(&mut want_recv),
        );
        let mut got = vec![f32::NAN; want.len()];
        let mut got_recv = vec![0f32; g.rows()];
        for (c, chunk) in got.chunks_mut(split * g.out_row()).enumerate() {
            run(&g, scale, &qkv, c * split, chunk, Some(&mut got_recv));
        }
        let shape = format!("B={batch} T={tokens} H={heads} D={dim}");
        compare(&got, &want, g.out_row()).map_err(|e| format!("{shape}: output {e}"))?;
        compare(&got_recv, &want_recv, tokens).map_err(|e| format!("{shape}: received {e}"))?;
    }
    Ok(())
}

/// The first element off by more than `1e-4 (1 + |want|)`, as "row r column c gave
/// x instead of y". The reference differs from a correct f32 kernel by ~1e-6; a wrong
/// lane or index is off by ~0.1. Written as "close" so that NaN counts as not close.
fn compare(got: &[f32], want: &[f32], row: usize) -> Result<(), String> {
    let close = |j: usize| (got[j] - want[j]).abs() <= 1e-4 * (1.0 + want[j].abs());
    match (0..want.len()).find(|&j| !close(j)) {
        None => Ok(()),
        Some(at) => Err(format!(
            "row {} column {} gave {} instead of {}",
            at / row.max(1),
            at % row.max(1),
            got[at],
            want[at]
        )),
    }
}

/// xorshift64*, mapped to [-1, 1): reproducible without a random-number crate.
fn uniform(state: &mut u64) -> f32 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    let bits = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
    bits as f32 / (1 << 23) as f32 - 1.0
}
