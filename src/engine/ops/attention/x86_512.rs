//! AVX-512F attention kernel.
//!
//! Per (item, head) the keys are transposed once into `K^T [dim, tokens]` (16×16
//! register transposes, zero past the last key). Per tile of 14 queries (7 for a
//! short tail, so that 196, 98 and 49 tokens tile without waste), the queries are
//! transposed into `Q^T [dim, 14]`, pre-multiplied by the scale: then every
//! broadcast of the score micro-tile is one displacement off one pointer (an FMA's
//! `{1to16}` memory operand), with no per-row address registers.
//!
//! * Scores: 14 queries × 32 keys, 28 accumulators + 2 key vectors + 1 broadcast of
//!   the 32 registers, over the whole head width (a 16-key block for an odd
//!   key-vector count). `S` is stored in blocks of 16 keys, each holding the tile's
//!   rows one after another (`S[j / 16][r][j % 16]`), so that `P · V` below also
//!   finds each row's probability at a constant displacement.
//! * Softmax, two-pass over 7 rows at a time while the tile is in L1 (max, then
//!   `2^((s - max) log2 e)` in place, the sums kept apart): the rows of one tile are
//!   at most a few thousand floats, so an online softmax's rescaling would buy
//!   nothing here. Masked tail lanes keep padded keys out of the max and the sum.
//! * `P · V`: 14 queries × 32 output lanes (7 × 32 for the tail tile) over the value
//!   rows read in place from `qkv`, the broadcast probabilities again memory
//!   operands; the division by the sum is one multiply per output.
//!
//! `2^x` is a degree-6 polynomial on the reduced argument and `vscalefps` (~1e-7
//! relative in f32). Against the f64 reference the outputs differ by ~5e-7 relative
//! on the model's value range, ~1e-5 when scores reach hundreds (the f32 rounding of
//! the scores themselves), as the AVX2 kernel's do.

// Tile loops index accumulators, rows and vectors by the same counters; explicit
// indices read better than zipped iterators here.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::ops::Range;

use super::geometry::Geometry;

/// f32 lanes per register; heads must be a multiple of one register wide.
pub const LANES: usize = 16;
/// Queries per full tile.
pub const ROWS: usize = 14;
/// Queries per tail tile (a tail of at most 7 rows).
const HALF: usize = 7;

pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
}

fn padded(tokens: usize) -> usize {
    tokens.div_ceil(LANES) * LANES
}

/// `K^T` (`dim` rows of padded width), one score row per tile query, `Q^T`
/// (`dim × ROWS`), and slack to align the first two to 64 bytes (two zmm loads per
/// cycle need it on Zen 4).
pub fn scratch_len(tokens: usize, dim: usize) -> usize {
    let tp = padded(tokens);
    dim * tp + ROWS * tp + dim * ROWS + LANES
}

/// What every tile of one (item, head) reads.
struct Head {
    /// Query, value rows of this item and head (`stride` floats apart).
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
/// The CPU must have AVX-512F ([`available`]); `g.dim % LANES == 0`; `qkv` holds
/// `g.rows() * g.qkv_row()` floats, `out` holds `rows.len() * g.out_row()`, `scratch`
/// holds [`scratch_len`], and `rows` lies within `0..g.tokens`, `b < g.batch`,
/// `h < g.heads`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
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
        let sp = scratch.as_mut_ptr();
        // At most LANES - 1 floats for a 4-byte aligned pointer; the slack covers it.
        let kt = sp.add(sp.align_offset(64).min(LANES - 1));
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
#[target_feature(enable = "avx512f")]
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
            // `cb + x < dim` of `kt`, 16 floats at `jb <= tp - 16`.
            unsafe {
                let mut m: [__m512; LANES] = std::array::from_fn(|r| {
                    if r < n {
                        _mm512_loadu_ps(k.add((jb + r) * stride + cb))
                    } else {
                        _mm512_setzero_ps()
                    }
                });
                transpose16(&mut m);
                for (x, v) in m.iter().enumerate() {
                    _mm512_storeu_ps(kt.add((cb + x) * tp + jb), *v);
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
#[target_feature(enable = "avx512f")]
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
        let qscale = _mm512_set1_ps(hd.qscale);
        let keep = ((1u32 << R) - 1) as __mmask16;
        for cb in (0..d).step_by(LANES) {
            let mut m: [__m512; LANES] = std::array::from_fn(|r| {
                if r < R {
                    let row = i + r.min(valid - 1);
                    _mm512_loadu_ps(hd.q.add(row * hd.stride + cb))
                } else {
                    _mm512_setzero_ps()
                }
            });
            transpose16(&mut m);
            for (x, v) in m.iter().enumerate() {
                let dst = hd.qt.add((cb + x) * R);
                _mm512_mask_storeu_ps(dst, keep, _mm512_mul_ps(*v, qscale));
            }
        }

        let mut jb = 0;
        while jb + 2 * LANES <= tp {
            scores::<R, 2>(hd, jb);
            jb += 2 * LANES;
        }
        if jb < tp {
            scores::<R, 1>(hd, jb);
        }

        // Softmax numerators in place, reciprocal sums apart. Seven rows at a time, in
        // memory order: seven independent exponentials per step keep the pipes full
        // where one row at a time waited on the polynomial's latency (7 maxima and
        // 7 sums leave registers for the constants).
        let full = t / LANES;
        let tail: __mmask16 = ((1u32 << (t % LANES)) - 1) as u16;
        let vectors = t.div_ceil(LANES);
        let log2e = _mm512_set1_ps(std::f32::consts::LOG2_E);
        let block = R * LANES;
        let mut inv = [0f32; R];
        for r0 in (0..valid).step_by(HALF) {
            let rows = hd.s.add(r0 * LANES);
            let mut max = [_mm512_set1_ps(f32::NEG_INFINITY); HALF];
            for jv in 0..vectors {
                let m = if jv < full { 0xffff } else { tail };
                for k in 0..HALF {
                    let x = _mm512_loadu_ps(rows.add(jv * block + k * LANES));
                    max[k] = _mm512_mask_max_ps(max[k], m, max[k], x);
                }
            }
            for k in 0..HALF {
                max[k] = _mm512_set1_ps(_mm512_reduce_max_ps(max[k]));
            }
            let mut sum = [_mm512_setzero_ps(); HALF];
            for jv in 0..vectors {
                let m = if jv < full { 0xffff } else { tail };
                for k in 0..HALF {
                    let p = rows.add(jv * block + k * LANES);
                    let x = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(p), max[k]), log2e);
                    let e = exp2(x);
                    _mm512_storeu_ps(p, e);
                    sum[k] = _mm512_mask_add_ps(sum[k], m, sum[k], e);
                }
            }
            // The max's own term is 1, so the sum is at least 1.
            for k in 0..HALF {
                inv[r0 + k] = 1.0 / _mm512_reduce_add_ps(sum[k]);
            }
        }

        // What each key received from this tile's real rows (pruning scores).
        if let Some(recv) = received {
            let rp = recv.as_mut_ptr();
            let weights: [__m512; R] = std::array::from_fn(|r| _mm512_set1_ps(inv[r]));
            for jv in 0..t.div_ceil(LANES) {
                let m = if jv < full { 0xffff } else { tail };
                let mut acc = _mm512_maskz_loadu_ps(m, rp.add(jv * LANES));
                for r in 0..valid {
                    let p = _mm512_loadu_ps(hd.s.add(jv * block + r * LANES));
                    acc = _mm512_fmadd_ps(p, weights[r], acc);
                }
                _mm512_mask_storeu_ps(rp.add(jv * LANES), m, acc);
            }
        }

        // Output, in column blocks of 32 lanes (one of 16 for an odd register count).
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

/// `S[r, jb .. jb + 16 NV] = Q^T[:, r] · K^T[:, jb ..]` for the tile's R rows.
///
/// # Safety
/// `Q^T` of the tile is written; `jb + 16 NV <= tp`.
#[target_feature(enable = "avx512f")]
unsafe fn scores<const R: usize, const NV: usize>(hd: &Head, jb: usize) {
    // SAFETY: `K^T` rows are `tp` long and `jb + 16 NV <= tp`; `Q^T` is `d × R`; the
    // stores are the tile's R score rows.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); NV]; R];
        let mut kp = hd.kt.add(jb) as *const f32;
        let mut qp = hd.qt as *const f32;
        for _ in 0..hd.dim {
            let mut k = [_mm512_setzero_ps(); NV];
            for v in 0..NV {
                k[v] = _mm512_loadu_ps(kp.add(v * LANES));
            }
            for r in 0..R {
                let q = _mm512_set1_ps(*qp.add(r));
                for v in 0..NV {
                    acc[r][v] = _mm512_fmadd_ps(q, k[v], acc[r][v]);
                }
            }
            kp = kp.add(hd.tp);
            qp = qp.add(R);
        }
        for r in 0..R {
            for v in 0..NV {
                let at = (jb / LANES + v) * R * LANES + r * LANES;
                _mm512_storeu_ps(hd.s.add(at), acc[r][v]);
            }
        }
    }
}

/// Output columns `cb .. cb + 16 NV` of the tile's first `valid` rows:
/// `(sum_j P[r, j] v_j) · inv[r]`.
///
/// # Safety
/// The tile's probabilities are in `S`; `cb + 16 NV <= dim`; `o` as for [`tile`].
#[target_feature(enable = "avx512f")]
unsafe fn values<const R: usize, const NV: usize>(
    hd: &Head,
    cb: usize,
    valid: usize,
    inv: &[f32; R],
    o: *mut f32,
) {
    // SAFETY: value rows `j < tokens` of this head, columns `cb .. cb + 16 NV <= dim`;
    // probabilities of rows `r < R` at keys `j < tokens <= tp`; output rows `r < valid`.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); NV]; R];
        let mut vp = hd.v.add(cb);
        let mut pp = hd.s as *const f32;
        // One flat loop over the keys: with a nested block loop LLVM kept the
        // accumulators in memory as well, one store each per key.
        for j in 0..hd.tokens {
            let mut v = [_mm512_setzero_ps(); NV];
            for n in 0..NV {
                v[n] = _mm512_loadu_ps(vp.add(n * LANES));
            }
            for r in 0..R {
                let p = _mm512_set1_ps(*pp.add(r * LANES));
                for n in 0..NV {
                    acc[r][n] = _mm512_fmadd_ps(p, v[n], acc[r][n]);
                }
            }
            vp = vp.add(hd.stride);
            // The next key: the next lane, or the first of the next 16-key block.
            let last_lane = j % LANES == LANES - 1;
            pp = pp.add(if last_lane { (R - 1) * LANES + 1 } else { 1 });
        }
        for r in 0..valid.min(R) {
            let w = _mm512_set1_ps(inv[r]);
            let dst = o.add(r * hd.out_row + cb);
            for n in 0..NV {
                _mm512_storeu_ps(dst.add(n * LANES), _mm512_mul_ps(acc[r][n], w));
            }
        }
    }
}

/// 16×16 transpose in registers: `m[x]` lane `r` becomes the old `m[r]` lane `x`.
#[target_feature(enable = "avx512f")]
fn transpose16(m: &mut [__m512; LANES]) {
    // Pairs of rows interleaved within 128-bit lanes.
    let mut a = [_mm512_setzero_ps(); LANES];
    for k in 0..8 {
        a[2 * k] = _mm512_unpacklo_ps(m[2 * k], m[2 * k + 1]);
        a[2 * k + 1] = _mm512_unpackhi_ps(m[2 * k], m[2 * k + 1]);
    }
    // Groups of four rows: b[4g + j] lane L = column 4L + j of rows 4g .. 4g + 3.
    let mut b = [_mm512_setzero_ps(); LANES];
    for g in 0..4 {
        let (x, y) = (a[4 * g], a[4 * g + 2]);
        let (z, w) = (a[4 * g + 1], a[4 * g + 3]);
        b[4 * g] = _mm512_shuffle_ps::<0x44>(x, y);
        b[4 * g + 1] = _mm512_shuffle_ps::<0xEE>(x, y);
        b[4 * g + 2] = _mm512_shuffle_ps::<0x44>(z, w);
        b[4 * g + 3] = _mm512_shuffle_ps::<0xEE>(z, w);
    }
    // For each column-in-lane j, a 4×4 transpose of 128-bit blocks over the groups.
    for j in 0..4 {
        let (b0, b1, b2, b3) = (b[j], b[4 + j], b[8 + j], b[12 + j]);
        let c0 = _mm512_shuffle_f32x4::<0x44>(b0, b1);
        let c1 = _mm512_shuffle_f32x4::<0xEE>(b0, b1);
        let c2 = _mm512_shuffle_f32x4::<0x44>(b2, b3);
        let c3 = _mm512_shuffle_f32x4::<0xEE>(b2, b3);
        m[j] = _mm512_shuffle_f32x4::<0x88>(c0, c2);
        m[4 + j] = _mm512_shuffle_f32x4::<0xDD>(c0, c2);
        m[8 + j] = _mm512_shuffle_f32x4::<0x88>(c1, c3);
        m[12 + j] = _mm512_shuffle_f32x4::<0xDD>(c1, c3);
    }
}

/// `2^x` for `x <= 0` (scores minus their max). Below -126 it returns ~1e-38 rather
/// than a denormal: such a term is below f32 rounding of a sum that is at least 1.
#[target_feature(enable = "avx512f")]
fn exp2(x: __m512) -> __m512 {
    let x = _mm512_max_ps(x, _mm512_set1_ps(-126.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
    let f = _mm512_sub_ps(x, n);
    // Relative-error fit of 2^f on [-1/2, 1/2].
    let mut p = _mm512_set1_ps(1.534_581_1e-4);
    for c in [
        1.339_993_1e-3,
        9.618_489e-3,
        5.550_328_6e-2,
        0.240_226_46,
        std::f32::consts::LN_2,
        1.0,
    ] {
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}
