//! AVX2 + FMA attention kernel: the AVX-512 kernel's structure (`x86_512.rs`) on
//! 16 registers of 8 lanes.
//!
//! Per (item, head) the keys are transposed once into `K^T [dim, tokens]` (8×8
//! register transposes, zero past the last key). Per tile of 6 queries (3 for a short
//! tail) the queries are transposed into `Q^T [dim, R]`, pre-multiplied by the scale,
//! so that every broadcast is one displacement off one pointer.
//!
//! * Scores: 6 queries × 16 keys, 12 accumulators + 2 key vectors + 1 broadcast of
//!   the 16 registers (an 8-key block at the end). `S` is stored in blocks of 8 keys,
//!   the tile's rows one after another (`S[j / 8][r][j % 8]`), so that `P · V` finds
//!   each row's probability at a constant displacement too.
//! * Softmax, two-pass over the tile's rows together (max, then `2^((s - max) log2 e)`
//!   in place, the sums apart); lanes past the last key hold -inf, whose ~1e-38 terms
//!   are below f32 rounding of a sum that is at least 1.
//! * `P · V`: 6 queries × 16 output lanes over the value rows read in place.

// Tile loops index accumulators, rows and vectors by the same counters; explicit
// indices read better than zipped iterators here.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::ops::Range;

use super::geometry::Geometry;

/// f32 lanes per register; heads must be a multiple of one register wide.
pub const LANES: usize = 8;
/// Queries per full tile.
pub const TILE: usize = 6;
/// Queries per tail tile (a tail of at most 3 rows).
const HALF: usize = 3;

pub fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

fn padded(tokens: usize) -> usize {
    tokens.div_ceil(LANES) * LANES
}

/// `K^T` (`dim` rows of padded width), the tile's scores, `Q^T` (`dim × TILE`) and
/// one register of slack: `Q^T` rows are written 8 floats at a time.
pub fn scratch_len(tokens: usize, dim: usize) -> usize {
    let tp = padded(tokens);
    dim * tp + TILE * tp + dim * TILE + LANES
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
    scale: f32,
    out_row: usize,
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
            qt: s.add(TILE * tp),
            scale,
            out_row: g.out_row(),
        };
        transpose_keys(base.add((g.heads + h) * d), stride, t, d, tp, kt);
        let mut i = rows.start;
        while i < rows.end {
            let valid = (rows.end - i).min(TILE);
            let o = out.as_mut_ptr().add((i - rows.start) * g.out_row() + h * d);
            let recv = received.as_deref_mut();
            if valid <= HALF {
                tile::<HALF>(&hd, i, valid, o, recv);
            } else {
                tile::<TILE>(&hd, i, valid, o, recv);
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
#[target_feature(enable = "avx2,fma")]
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
            // `cb + x < dim` of `kt`, 8 floats at `jb <= tp - 8`.
            unsafe {
                let mut m: [__m256; LANES] = std::array::from_fn(|r| {
                    if r < n {
                        _mm256_loadu_ps(k.add((jb + r) * stride + cb))
                    } else {
                        _mm256_setzero_ps()
                    }
                });
                transpose8(&mut m);
                for (x, v) in m.iter().enumerate() {
                    _mm256_storeu_ps(kt.add((cb + x) * tp + jb), *v);
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
#[target_feature(enable = "avx2,fma")]
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
        // Q^T, pre-scaled: row `c` holds the tile's R queries' channel `c`. Each store
        // writes 8 floats; the R..8 past a row are the next row's, rewritten next
        // (the last row's land in the slack).
        let scale = _mm256_set1_ps(hd.scale);
        for cb in (0..d).step_by(LANES) {
            let mut m: [__m256; LANES] = std::array::from_fn(|r| {
                if r < R {
                    let row = i + r.min(valid - 1);
                    _mm256_loadu_ps(hd.q.add(row * hd.stride + cb))
                } else {
                    _mm256_setzero_ps()
                }
            });
            transpose8(&mut m);
            for (x, v) in m.iter().enumerate() {
                _mm256_storeu_ps(hd.qt.add((cb + x) * R), _mm256_mul_ps(*v, scale));
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

        // Softmax numerators in place, reciprocal sums apart.
        let block = R * LANES;
        let vectors = tp / LANES;
        let last = hd.s.add((vectors - 1) * block);
        let log2e = _mm256_set1_ps(std::f32::consts::LOG2_E);
        // All R rows at once, in memory order (the dropped rows too: duplicates of the
        // last, harmless): R independent exponentials per step keep the pipes full
        // where one row at a time left them waiting on the polynomial's latency.
        let rem = t % LANES;
        if rem != 0 {
            for r in 0..R {
                for l in rem..LANES {
                    *last.add(r * LANES + l) = f32::NEG_INFINITY;
                }
            }
        }
        let mut max = [_mm256_set1_ps(f32::NEG_INFINITY); R];
        for jv in 0..vectors {
            for r in 0..R {
                let x = _mm256_loadu_ps(hd.s.add(jv * block + r * LANES));
                max[r] = _mm256_max_ps(max[r], x);
            }
        }
        for r in 0..R {
            max[r] = _mm256_set1_ps(hmax(max[r]));
        }
        let mut sum = [_mm256_setzero_ps(); R];
        for jv in 0..vectors {
            for r in 0..R {
                let p = hd.s.add(jv * block + r * LANES);
                let e = exp2(_mm256_mul_ps(
                    _mm256_sub_ps(_mm256_loadu_ps(p), max[r]),
                    log2e,
                ));
                _mm256_storeu_ps(p, e);
                sum[r] = _mm256_add_ps(sum[r], e);
            }
        }
        let mut inv = [0f32; R];
        for r in 0..R {
            inv[r] = 1.0 / hsum(sum[r]);
        }

        // What each key received from this tile's real rows (pruning scores).
        if let Some(recv) = received {
            let full = t / LANES;
            let rp = recv.as_mut_ptr();
            for jv in 0..full {
                let mut acc = _mm256_loadu_ps(rp.add(jv * LANES));
                for r in 0..valid {
                    let p = _mm256_loadu_ps(hd.s.add(jv * block + r * LANES));
                    acc = _mm256_fmadd_ps(p, _mm256_set1_ps(inv[r]), acc);
                }
                _mm256_storeu_ps(rp.add(jv * LANES), acc);
            }
            for j in full * LANES..t {
                for r in 0..valid {
                    *rp.add(j) += *hd.s.add(full * block + r * LANES + j % LANES) * inv[r];
                }
            }
        }

        // Output, in column blocks of 16 lanes (one of 8 for an odd register count).
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

/// Scores of keys `jb .. jb + 8 NV` for the tile's R rows.
///
/// # Safety
/// `Q^T` of the tile is written; `jb + 8 NV <= tp`.
#[target_feature(enable = "avx2,fma")]
unsafe fn scores<const R: usize, const NV: usize>(hd: &Head, jb: usize) {
    // SAFETY: `K^T` rows are `tp` long and `jb + 8 NV <= tp`; `Q^T` is `d × R`; the
    // stores are the tile's R rows of these key blocks.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); NV]; R];
        let mut kp = hd.kt.add(jb) as *const f32;
        let mut qp = hd.qt as *const f32;
        for _ in 0..hd.dim {
            let mut k = [_mm256_setzero_ps(); NV];
            for v in 0..NV {
                k[v] = _mm256_loadu_ps(kp.add(v * LANES));
            }
            for r in 0..R {
                let q = _mm256_broadcast_ss(&*qp.add(r));
                for v in 0..NV {
                    acc[r][v] = _mm256_fmadd_ps(q, k[v], acc[r][v]);
                }
            }
            kp = kp.add(hd.tp);
            qp = qp.add(R);
        }
        for r in 0..R {
            for v in 0..NV {
                let at = (jb / LANES + v) * R * LANES + r * LANES;
                _mm256_storeu_ps(hd.s.add(at), acc[r][v]);
            }
        }
    }
}

/// Output columns `cb .. cb + 8 NV` of the tile's first `valid` rows:
/// `(sum_j P[r, j] v_j) · inv[r]`.
///
/// # Safety
/// The tile's probabilities are in `S`; `cb + 8 NV <= dim`; `o` as for [`tile`].
#[target_feature(enable = "avx2,fma")]
unsafe fn values<const R: usize, const NV: usize>(
    hd: &Head,
    cb: usize,
    valid: usize,
    inv: &[f32; R],
    o: *mut f32,
) {
    // SAFETY: value rows `j < tokens` of this head, columns `cb .. cb + 8 NV <= dim`;
    // probabilities of rows `r < R` at keys `j < tokens <= tp`; output rows `r < valid`.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); NV]; R];
        let mut vp = hd.v.add(cb);
        let mut pp = hd.s as *const f32;
        // One flat loop over the keys (a nested block loop kept the accumulators in
        // memory as well in the AVX-512 kernel).
        for j in 0..hd.tokens {
            let mut v = [_mm256_setzero_ps(); NV];
            for n in 0..NV {
                v[n] = _mm256_loadu_ps(vp.add(n * LANES));
            }
            for r in 0..R {
                let p = _mm256_broadcast_ss(&*pp.add(r * LANES));
                for n in 0..NV {
                    acc[r][n] = _mm256_fmadd_ps(p, v[n], acc[r][n]);
                }
            }
            vp = vp.add(hd.stride);
            // The next key: the next lane, or the first of the next 8-key block.
            let last_lane = j % LANES == LANES - 1;
            pp = pp.add(if last_lane { (R - 1) * LANES + 1 } else { 1 });
        }
        for r in 0..valid.min(R) {
            let w = _mm256_set1_ps(inv[r]);
            let dst = o.add(r * hd.out_row + cb);
            for n in 0..NV {
                _mm256_storeu_ps(dst.add(n * LANES), _mm256_mul_ps(acc[r][n], w));
            }
        }
    }
}

/// 8×8 transpose in registers: `m[x]` lane `r` becomes the old `m[r]` lane `x`.
#[target_feature(enable = "avx2,fma")]
fn transpose8(m: &mut [__m256; LANES]) {
    // Pairs of rows interleaved within 128-bit halves.
    let mut a = [_mm256_setzero_ps(); LANES];
    for k in 0..4 {
        a[2 * k] = _mm256_unpacklo_ps(m[2 * k], m[2 * k + 1]);
        a[2 * k + 1] = _mm256_unpackhi_ps(m[2 * k], m[2 * k + 1]);
    }
    // Groups of four rows: b[4g + j] half L = column 4L + j of rows 4g .. 4g + 3.
    let mut b = [_mm256_setzero_ps(); LANES];
    for g in 0..2 {
        let (x, y) = (a[4 * g], a[4 * g + 2]);
        let (z, w) = (a[4 * g + 1], a[4 * g + 3]);
        b[4 * g] = _mm256_shuffle_ps::<0x44>(x, y);
        b[4 * g + 1] = _mm256_shuffle_ps::<0xEE>(x, y);
        b[4 * g + 2] = _mm256_shuffle_ps::<0x44>(z, w);
        b[4 * g + 3] = _mm256_shuffle_ps::<0xEE>(z, w);
    }
    // Lower halves of both groups give columns 0..4, upper halves columns 4..8.
    for j in 0..4 {
        m[j] = _mm256_permute2f128_ps::<0x20>(b[j], b[4 + j]);
        m[4 + j] = _mm256_permute2f128_ps::<0x31>(b[j], b[4 + j]);
    }
}

#[target_feature(enable = "avx2")]
fn hmax(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_shuffle_ps::<1>(m, m));
    _mm_cvtss_f32(m)
}

#[target_feature(enable = "avx2")]
fn hsum(v: __m256) -> f32 {
    let m = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_add_ss(m, _mm_shuffle_ps::<1>(m, m));
    _mm_cvtss_f32(m)
}

/// `2^x` for `x <= 0`, the AVX-512 kernel's polynomial; below -126 it returns ~1e-38
/// rather than a denormal.
#[target_feature(enable = "avx2,fma")]
fn exp2(x: __m256) -> __m256 {
    let x = _mm256_max_ps(x, _mm256_set1_ps(-126.0));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
    let f = _mm256_sub_ps(x, n);
    let mut p = _mm256_set1_ps(1.534_581_1e-4);
    for c in [
        1.339_993_1e-3,
        9.618_489e-3,
        5.550_328_6e-2,
        0.240_226_46,
        std::f32::consts::LN_2,
        1.0,
    ] {
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(c));
    }
    // n is in [-126, 0]: a normal power of two built from its exponent bits.
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_mul_ps(p, _mm256_castsi256_ps(bits))
}
