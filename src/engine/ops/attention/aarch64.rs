//! aarch64 NEON attention kernel: the AVX-512 kernel's structure on 4-lane registers,
//! with NEON's by-element FMA (`fmla v.4s, v.4s, v.s[lane]`) in place of broadcasts.
//!
//! Per (item, head) the keys are transposed once into `K^T [dim, tokens]` (4×4
//! register transposes, zero past the last key). Per tile of 8 queries (4 for a short
//! tail) the queries are transposed into `Q^T [dim, R]`, pre-multiplied by
//! the scale, so that one vector load gives four queries' channel `c`.
//!
//! * Scores: 8 queries × 12 keys, 24 accumulators + 3 key vectors + 2 query vectors of
//!   the 32 registers, over the whole head width (8- or 4-key blocks at the end).
//!   `S` is stored in blocks of 4 keys holding the tile's rows one after another
//!   (`S[j / 4][r][j % 4]`): one load gives a row's next four probabilities.
//! * Softmax, two-pass over the tile's rows together (max, then `2^((s - max) log2 e)`
//!   in place, the sums apart); lanes past the last key are kept out of both.
//! * `P · V`: 8 queries × 8 output lanes (16 accumulators, the 8 probability vectors
//!   of a 4-key block, 2 value vectors) over the value rows read in place from `qkv`.
//!
//! Performance is unmeasured (qemu only); correctness is checked by the same property
//! tests and self-test as the x86 kernels.

// Tile loops index accumulators, rows and vectors by the same counters; explicit
// indices read better than zipped iterators here.
#![allow(clippy::needless_range_loop)]

use std::arch::aarch64::*;
use std::ops::Range;

use super::geometry::Geometry;

/// f32 lanes per register; heads must be a multiple of one register wide.
pub const LANES: usize = 4;
/// Queries per full tile.
pub const ROWS: usize = 8;
/// Queries per tail tile (a tail of at most 4 rows).
const HALF: usize = 4;

pub fn available() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
}

fn padded(tokens: usize) -> usize {
    tokens.div_ceil(LANES) * LANES
}

/// `K^T` (`dim` rows of padded width), the tile's scores, and `Q^T` (`dim × ROWS`).
pub fn scratch_len(tokens: usize, dim: usize) -> usize {
    let tp = padded(tokens);
    dim * tp + ROWS * tp + dim * ROWS
}

/// What every tile of one (item, head) reads.
struct Head {
    q: *const f32,
    v: *const f32,
    stride: usize,
    tokens: usize,
    /// Padded tokens: the row length of `kt` (and of `s`, blocked).
    tp: usize,
    dim: usize,
    kt: *mut f32,
    s: *mut f32,
    qt: *mut f32,
    /// Folded into `Q^T` (exact for the usual power-of-two `1/sqrt(dim)`); `log2 e`
    /// multiplies the score minus its max instead, so that large scores do not carry
    /// its rounding.
    qscale: f32,
    out_row: usize,
}

/// Queries `rows` of item `b`, head `h` into `out` (those rows only, all heads wide);
/// with `received` (`g.tokens` floats), adds each key's probability from these rows.
///
/// # Safety
/// `g.dim % LANES == 0`; `qkv` holds `g.rows() * g.qkv_row()` floats, `out` holds
/// `rows.len() * g.out_row()`, `scratch` holds [`scratch_len`], and `rows` lies
/// within `0..g.tokens`, `b < g.batch`, `h < g.heads`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon")]
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
    // SAFETY: `b < g.batch`, so the item's rows start inside `qkv`; every pointer
    // below stays within the bounds the caller guarantees.
    unsafe {
        let base = qkv.as_ptr().add(b * t * stride);
        let kt = scratch.as_mut_ptr();
        let s = kt.add(d * tp);
        let hd = Head {
            q: base.add(h * d),
            v: base.add((2 * g.heads + h) * d),
            stride,
            tokens: t,
            tp,
            dim: d,
            kt,
            s,
            qt: s.add(ROWS * tp),
            qscale: scale,
            out_row: g.out_row(),
        };
        transpose_keys(base.add((g.heads + h) * d), stride, t, d, tp, kt);
        let mut i = rows.start;
        while i < rows.end {
            let valid = (rows.end - i).min(ROWS);
            let o = out.as_mut_ptr().add((i - rows.start) * g.out_row() + h * d);
            let recv = received.as_deref_mut();
            if valid <= HALF {
                tile::<HALF>(&hd, i, valid, o, recv);
            } else {
                tile::<ROWS>(&hd, i, valid, o, recv);
            }
            i += valid;
        }
    }
}

/// `K^T[c, j] = k_j[c]`, zero for `j` in `tokens..tp`.
///
/// # Safety
/// `k` points at the first key of `tokens` rows `stride` apart, each `dim` floats;
/// `kt` holds `dim * tp` floats; `dim % LANES == 0`, `tp = padded(tokens)`.
#[target_feature(enable = "neon")]
unsafe fn transpose_keys(
    k: *const f32,
    stride: usize,
    tokens: usize,
    dim: usize,
    tp: usize,
    kt: *mut f32,
) {
    for jb in (0..tp).step_by(LANES) {
        let n = (tokens - jb).min(LANES);
        for cb in (0..dim).step_by(LANES) {
            // SAFETY: rows below `n` are keys `jb + r < tokens`; the stores are rows
            // `cb + x < dim` of `kt`, 4 floats at `jb <= tp - 4`.
            unsafe {
                let m: [float32x4_t; LANES] = std::array::from_fn(|r| {
                    if r < n {
                        vld1q_f32(k.add((jb + r) * stride + cb))
                    } else {
                        vdupq_n_f32(0.0)
                    }
                });
                let m = transpose4(m);
                for (x, v) in m.iter().enumerate() {
                    vst1q_f32(kt.add((cb + x) * tp + jb), *v);
                }
            }
        }
    }
}

/// One tile of `R` query rows starting at `i`, `valid` of them real (the rest repeat
/// the last, their results dropped), into `o` (row `i`'s output for this head).
///
/// # Safety
/// As for [`head`]: `hd` describes scratch and `qkv` the caller bounds, `i + valid <=
/// tokens`, `o` has `valid` rows of `out_row` floats from this head's column.
#[target_feature(enable = "neon")]
unsafe fn tile<const R: usize>(
    hd: &Head,
    i: usize,
    valid: usize,
    o: *mut f32,
    received: Option<&mut [f32]>,
) {
    let (t, tp, d) = (hd.tokens, hd.tp, hd.dim);
    // SAFETY: every access is inside `qkv`'s rows `i..i + valid` and the scratch
    // regions `Head` names, whose sizes `scratch_len` fixed.
    unsafe {
        // Q^T, pre-scaled: row `c` holds the tile's R queries' channel `c`.
        let qscale = vdupq_n_f32(hd.qscale);
        for cb in (0..d).step_by(LANES) {
            for g in 0..R / LANES {
                let m: [float32x4_t; LANES] = std::array::from_fn(|r| {
                    let row = i + (g * LANES + r).min(valid - 1);
                    vld1q_f32(hd.q.add(row * hd.stride + cb))
                });
                for (x, v) in transpose4(m).iter().enumerate() {
                    let dst = hd.qt.add((cb + x) * R + g * LANES);
                    vst1q_f32(dst, vmulq_f32(*v, qscale));
                }
            }
        }

        let mut jb = 0;
        while jb + 3 * LANES <= tp {
            scores::<R, 3>(hd, jb);
            jb += 3 * LANES;
        }
        match (tp - jb) / LANES {
            2 => scores::<R, 2>(hd, jb),
            1 => scores::<R, 1>(hd, jb),
            _ => {}
        }

        // Softmax numerators in place, reciprocal sums apart; all R rows at once, in
        // memory order, for R independent exponentials per step (the dropped rows
        // too: duplicates of the last, harmless). Lanes past the last key are -inf
        // for the max and 0 in the sum.
        let full = t / LANES;
        let rem = t % LANES;
        let lane = vld1q_u32([0u32, 1, 2, 3].as_ptr());
        let tail = vcltq_u32(lane, vdupq_n_u32(rem as u32));
        let vectors = t.div_ceil(LANES);
        let block = R * LANES;
        let log2e = vdupq_n_f32(std::f32::consts::LOG2_E);
        let mut max = [vdupq_n_f32(f32::NEG_INFINITY); R];
        for jv in 0..vectors {
            for r in 0..R {
                let mut x = vld1q_f32(hd.s.add(jv * block + r * LANES));
                if jv == full {
                    x = vbslq_f32(tail, x, vdupq_n_f32(f32::NEG_INFINITY));
                }
                max[r] = vmaxq_f32(max[r], x);
            }
        }
        for r in 0..R {
            max[r] = vdupq_n_f32(vmaxvq_f32(max[r]));
        }
        let mut sum = [vdupq_n_f32(0.0); R];
        for jv in 0..vectors {
            for r in 0..R {
                let p = hd.s.add(jv * block + r * LANES);
                let mut e = exp2(vmulq_f32(vsubq_f32(vld1q_f32(p), max[r]), log2e));
                if jv == full {
                    e = vbslq_f32(tail, e, vdupq_n_f32(0.0));
                }
                vst1q_f32(p, e);
                sum[r] = vaddq_f32(sum[r], e);
            }
        }
        // The max's own term is 1, so the sum is at least 1.
        let mut inv = [0f32; R];
        for r in 0..R {
            inv[r] = 1.0 / vaddvq_f32(sum[r]);
        }

        // What each key received from this tile's real rows (pruning scores).
        if let Some(recv) = received {
            for j in 0..t {
                let (jv, l) = (j / LANES, j % LANES);
                let mut acc = 0f32;
                for r in 0..valid {
                    acc += *hd.s.add(jv * block + r * LANES + l) * inv[r];
                }
                recv[j] += acc;
            }
        }

        // Output, in column blocks of 8 lanes (one of 4 for an odd register count).
        let mut cb = 0;
        while cb + 2 * LANES <= d {
            values::<R, 2>(hd, cb, valid, &inv, o);
            cb += 2 * LANES;
        }
        if cb < d {
            values::<R, 1>(hd, cb, valid, &inv, o);
        }
    }
}

/// `acc + k · q[lane]` for a lane that is a constant-bound loop counter (the match
/// folds once the caller's loop is unrolled).
#[inline]
#[target_feature(enable = "neon")]
fn fma_lane(acc: float32x4_t, k: float32x4_t, q: float32x4_t, lane: usize) -> float32x4_t {
    match lane {
        0 => vfmaq_laneq_f32::<0>(acc, k, q),
        1 => vfmaq_laneq_f32::<1>(acc, k, q),
        2 => vfmaq_laneq_f32::<2>(acc, k, q),
        _ => vfmaq_laneq_f32::<3>(acc, k, q),
    }
}

/// Scores of keys `jb .. jb + 4 NV` for the tile's R rows.
///
/// # Safety
/// `Q^T` of the tile is written; `jb + 4 NV <= tp`.
#[target_feature(enable = "neon")]
unsafe fn scores<const R: usize, const NV: usize>(hd: &Head, jb: usize) {
    // SAFETY: `K^T` rows are `tp` long and `jb + 4 NV <= tp`; `Q^T` is `d × R`; the
    // stores are the tile's R rows of these key blocks.
    unsafe {
        let mut acc = [[vdupq_n_f32(0.0); NV]; R];
        let mut kp = hd.kt.add(jb) as *const f32;
        let mut qp = hd.qt as *const f32;
        for _ in 0..hd.dim {
            let mut k = [vdupq_n_f32(0.0); NV];
            for v in 0..NV {
                k[v] = vld1q_f32(kp.add(v * LANES));
            }
            for g in 0..R / LANES {
                let q = vld1q_f32(qp.add(g * LANES));
                for l in 0..LANES {
                    for v in 0..NV {
                        let r = g * LANES + l;
                        acc[r][v] = fma_lane(acc[r][v], k[v], q, l);
                    }
                }
            }
            kp = kp.add(hd.tp);
            qp = qp.add(R);
        }
        for r in 0..R {
            for v in 0..NV {
                let at = (jb / LANES + v) * R * LANES + r * LANES;
                vst1q_f32(hd.s.add(at), acc[r][v]);
            }
        }
    }
}

/// Output columns `cb .. cb + 4 NV` of the tile's first `valid` rows:
/// `(sum_j P[r, j] v_j) · inv[r]`.
///
/// # Safety
/// The tile's probabilities are in `S`; `cb + 4 NV <= dim`; `o` as for [`tile`].
#[target_feature(enable = "neon")]
unsafe fn values<const R: usize, const NV: usize>(
    hd: &Head,
    cb: usize,
    valid: usize,
    inv: &[f32; R],
    o: *mut f32,
) {
    // SAFETY: value rows `j < tokens` of this head, columns `cb .. cb + 4 NV <= dim`;
    // probabilities of rows `r < R` at keys `j < tp`; output rows `r < valid`.
    unsafe {
        let mut acc = [[vdupq_n_f32(0.0); NV]; R];
        let mut vp = hd.v.add(cb);
        let full = hd.tokens / LANES;
        for jv in 0..full {
            let pb = hd.s.add(jv * R * LANES) as *const f32;
            let mut p = [vdupq_n_f32(0.0); R];
            for r in 0..R {
                p[r] = vld1q_f32(pb.add(r * LANES));
            }
            for l in 0..LANES {
                let mut v = [vdupq_n_f32(0.0); NV];
                for n in 0..NV {
                    v[n] = vld1q_f32(vp.add(n * LANES));
                }
                for r in 0..R {
                    for n in 0..NV {
                        acc[r][n] = fma_lane(acc[r][n], v[n], p[r], l);
                    }
                }
                vp = vp.add(hd.stride);
            }
        }
        // The last keys one at a time: only keys below `tokens` have value rows.
        let pb = hd.s.add(full * R * LANES) as *const f32;
        for l in 0..hd.tokens % LANES {
            let mut v = [vdupq_n_f32(0.0); NV];
            for n in 0..NV {
                v[n] = vld1q_f32(vp.add(n * LANES));
            }
            for r in 0..R {
                let p = *pb.add(r * LANES + l);
                for n in 0..NV {
                    acc[r][n] = vfmaq_n_f32(acc[r][n], v[n], p);
                }
            }
            vp = vp.add(hd.stride);
        }
        for r in 0..valid.min(R) {
            let w = vdupq_n_f32(inv[r]);
            let dst = o.add(r * hd.out_row + cb);
            for n in 0..NV {
                vst1q_f32(dst.add(n * LANES), vmulq_f32(acc[r][n], w));
            }
        }
    }
}

/// 4×4 transpose: lane `r` of result `x` is lane `x` of input `r`.
#[target_feature(enable = "neon")]
fn transpose4(m: [float32x4_t; 4]) -> [float32x4_t; 4] {
    let t0 = vtrn1q_f32(m[0], m[1]);
    let t1 = vtrn2q_f32(m[0], m[1]);
    let t2 = vtrn1q_f32(m[2], m[3]);
    let t3 = vtrn2q_f32(m[2], m[3]);
    let lo = |a: float32x4_t, b: float32x4_t| {
        vreinterpretq_f32_f64(vtrn1q_f64(
            vreinterpretq_f64_f32(a),
            vreinterpretq_f64_f32(b),
        ))
    };
    let hi = |a: float32x4_t, b: float32x4_t| {
        vreinterpretq_f32_f64(vtrn2q_f64(
            vreinterpretq_f64_f32(a),
            vreinterpretq_f64_f32(b),
        ))
    };
    [lo(t0, t2), lo(t1, t3), hi(t0, t2), hi(t1, t3)]
}

/// `2^x` for `x <= 0` (scores minus their max), the AVX-512 kernel's polynomial; below
/// -126 it returns ~1e-38 rather than a denormal (below rounding of a sum >= 1).
#[target_feature(enable = "neon")]
fn exp2(x: float32x4_t) -> float32x4_t {
    let x = vmaxq_f32(x, vdupq_n_f32(-126.0));
    let n = vrndnq_f32(x);
    let f = vsubq_f32(x, n);
    let mut p = vdupq_n_f32(1.534_581_1e-4);
    for c in [
        1.339_993_1e-3,
        9.618_489e-3,
        5.550_328_6e-2,
        0.240_226_46,
        std::f32::consts::LN_2,
        1.0,
    ] {
        p = vfmaq_f32(vdupq_n_f32(c), p, f);
    }
    // n is in [-126, 0]: a normal power of two built from its exponent bits.
    let bits = vshlq_n_s32::<23>(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)));
    vmulq_f32(p, vreinterpretq_f32_s32(bits))
}
