//! AVX2 + FMA attention kernel.
//!
//! Per (item, head): the head's keys are transposed once into `K^T [dim, tokens]` so
//! that a score tile is 6 queries × 16 keys of broadcast-and-FMA (12 accumulators, two
//! key vectors, one broadcast: 15 of the 16 registers), the same tile shape as
//! `P · V`, 6 queries × 16 output lanes over the value rows read in place. Softmax runs
//! between the two on the 6 score rows while they are in L1, so the scores never go
//! to memory as a tensor, and no head is ever copied out of `qkv` except the keys.

use std::arch::x86_64::*;
use std::ops::Range;

use super::geometry::Geometry;

/// f32 lanes per register; heads must be a multiple of two registers wide.
pub const LANES: usize = 16;
/// Queries per register tile.
const TILE: usize = 6;

pub fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

fn padded(tokens: usize) -> usize {
    tokens.div_ceil(LANES) * LANES
}

/// `K^T` (`dim` rows of padded width) plus one score row per tile query.
pub fn scratch_len(tokens: usize, dim: usize) -> usize {
    (dim + TILE) * padded(tokens)
}

/// Queries `rows` of item `b`, head `h` into `out` (those rows only, all heads wide);
/// with `received` (`g.tokens` floats), adds each key's probability from these rows.
///
/// # Safety
/// The CPU must have AVX2 and FMA ([`available`]); `g.dim % LANES == 0`; `qkv` holds
/// `g.rows() * g.qkv_row()` floats, `out` holds `rows.len() * g.out_row()`, `scratch`
/// holds [`scratch_len`], and `rows` lies within `0..g.tokens`, `b < g.batch`,
/// `h < g.heads`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn head(
    g: &Geometry,
    scale: f32,
    qkv: &[f32],
    b: usize,
    h: usize,
    rows: Range<usize>,
    out: &mut [f32],
    scratch: &mut [f32],
    mut received: Option<&mut [f32]>,
) {
    let (t, d) = (g.tokens, g.dim);
    let tp = padded(t);
    let stride = g.qkv_row();
    let base = qkv.as_ptr().add(b * t * stride);
    let q_of = |i: usize| base.add(i * stride + h * d);
    let k_of = |j: usize| base.add(j * stride + (g.heads + h) * d);
    let v_of = |j: usize| base.add(j * stride + (2 * g.heads + h) * d);
    let (kt, scores) = scratch.split_at_mut(d * tp);
    let kt = kt.as_mut_ptr();
    let s = scores.as_mut_ptr();

    // K^T, zero past the last key so padded score lanes are finite.
    for j in 0..t {
        let k = k_of(j);
        for c in 0..d {
            *kt.add(c * tp + j) = *k.add(c);
        }
    }
    for c in 0..d {
        for j in t..tp {
            *kt.add(c * tp + j) = 0.0;
        }
    }

    let scale_v = _mm256_set1_ps(scale);
    let mut i = rows.start;
    while i < rows.end {
        let valid = (rows.end - i).min(TILE);
        // Rows past the end repeat the last one: same work, results dropped.
        let q: [*const f32; TILE] = std::array::from_fn(|r| q_of(i + r.min(valid - 1)));

        // Scores: S[r, j] = scale * q_r . k_j.
        let mut jb = 0;
        while jb < tp {
            let mut acc = [[_mm256_setzero_ps(); 2]; TILE];
            for c in 0..d {
                let k0 = _mm256_loadu_ps(kt.add(c * tp + jb));
                let k1 = _mm256_loadu_ps(kt.add(c * tp + jb + 8));
                for r in 0..TILE {
                    let qb = _mm256_broadcast_ss(&*q[r].add(c));
                    acc[r][0] = _mm256_fmadd_ps(qb, k0, acc[r][0]);
                    acc[r][1] = _mm256_fmadd_ps(qb, k1, acc[r][1]);
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                _mm256_storeu_ps(s.add(r * tp + jb), _mm256_mul_ps(acc[0], scale_v));
                _mm256_storeu_ps(s.add(r * tp + jb + 8), _mm256_mul_ps(acc[1], scale_v));
            }
            jb += LANES;
        }

        // Softmax numerators in place; the division waits for the output.
        let mut inv = [0f32; TILE];
        for (r, inv) in inv.iter_mut().enumerate() {
            let row = s.add(r * tp);
            for j in t..tp {
                *row.add(j) = f32::NEG_INFINITY;
            }
            let mut mv = _mm256_set1_ps(f32::NEG_INFINITY);
            for jb in (0..tp).step_by(8) {
                mv = _mm256_max_ps(mv, _mm256_loadu_ps(row.add(jb)));
            }
            let max = _mm256_set1_ps(hmax(mv));
            let mut sum = _mm256_setzero_ps();
            for jb in (0..tp).step_by(8) {
                let e = exp(_mm256_sub_ps(_mm256_loadu_ps(row.add(jb)), max));
                _mm256_storeu_ps(row.add(jb), e);
                sum = _mm256_add_ps(sum, e);
            }
            // Padded lanes hold exp(-inf) clamped to ~1e-38 each: below f32 rounding of
            // a sum that is at least 1 (the max's own term).
            *inv = 1.0 / hsum(sum);
        }
        // What each key received from this tile's real rows (pruning scores).
        if let Some(recv) = received.as_deref_mut() {
            for (r, &w) in inv.iter().enumerate().take(valid) {
                let row = std::slice::from_raw_parts(s.add(r * tp), t);
                for (acc, &p) in recv.iter_mut().zip(row) {
                    *acc += p * w;
                }
            }
        }

        // Output: O[r, :] = (sum_j P[r, j] v_j) / sum_r.
        for cb in (0..d).step_by(LANES) {
            let mut acc = [[_mm256_setzero_ps(); 2]; TILE];
            for j in 0..t {
                let v = v_of(j).add(cb);
                let v0 = _mm256_loadu_ps(v);
                let v1 = _mm256_loadu_ps(v.add(8));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let p = _mm256_broadcast_ss(&*s.add(r * tp + j));
                    acc[0] = _mm256_fmadd_ps(p, v0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(p, v1, acc[1]);
                }
            }
            for (r, acc) in acc.iter().enumerate().take(valid) {
                let o = out
                    .as_mut_ptr()
                    .add((i + r - rows.start) * g.out_row() + h * d + cb);
                let w = _mm256_set1_ps(inv[r]);
                _mm256_storeu_ps(o, _mm256_mul_ps(acc[0], w));
                _mm256_storeu_ps(o.add(8), _mm256_mul_ps(acc[1], w));
            }
        }
        i += valid;
    }
}

#[target_feature(enable = "avx2")]
unsafe fn hmax(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    _mm_cvtss_f32(m)
}

#[target_feature(enable = "avx2")]
unsafe fn hsum(v: __m256) -> f32 {
    let m = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_add_ss(m, _mm_shuffle_ps(m, m, 1));
    _mm_cvtss_f32(m)
}

/// `e^x` for `x <= 0` (softmax arguments), Cephes' `expf` reduction and polynomial:
/// a few ulp; inputs below -87.3 give ~1e-38 instead of a denormal or zero, and the
/// upper clamp keeps `2^n` finite.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn exp(x: __m256) -> __m256 {
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.336_54)),
        _mm256_set1_ps(88.0),
    );
    let fx = _mm256_fmadd_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
        _mm256_set1_ps(0.5),
    );
    let fx = _mm256_floor_ps(fx);
    let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_2e-4);
    for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let r2 = _mm256_mul_ps(r, r);
    let y = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
    let n = _mm256_cvttps_epi32(fx);
    let pow2n = _mm256_castsi256_ps(_mm256_slli_epi32(
        _mm256_add_epi32(n, _mm256_set1_epi32(127)),
        23,
    ));
    _mm256_mul_ps(y, pow2n)
}
