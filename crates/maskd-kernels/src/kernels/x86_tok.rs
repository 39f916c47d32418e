//! x86-64 AVX2+FMA token-SIMD kernel: `avx2tok_spmm*_f32_48x2`.
//!
//! The column-SIMD AVX2 kernel (`x86.rs`) pays one `vpermilps` per useful FMA, and
//! on Zen 3 that permute competes with the FMAs for the same pipes. Here SIMD runs
//! across **tokens** instead, like the NEON kernel, so there is no permute at all:
//!
//! * Per block of up to 48 token rows (`ROWS`, 6 ymm vectors) and per K-chunk of at
//!   most `KC_MAX` = 128 inputs, `x` is transposed once (8x8 AVX transposes) into a
//!   24 KiB stack panel `panel[k][48]` that stays in L1 (a 192-input, 36 KiB panel
//!   measured ~20 % slower). The stride is always 48 floats, so packed offsets do
//!   not depend on the block height; lanes past the block are never read.
//! * Weights are packed once (`pack.rs`) into **shared slots** (a row both columns
//!   of a pair keep: one panel load feeds both columns' FMAs) and **pair slots**
//!   (one load per FMA), with panel byte offsets.
//! * Micro-kernel, `B` vectors (8B tokens) x 2 columns = up to 12 accumulators
//!   (plus two weights and one input of 16 ymm). A shared slot costs 2
//!   `vbroadcastss`, `B` loads and `2B` FMAs, (B + 2)/2B loads per FMA: 0.67 at
//!   B = 6, where the FMA pipes, not the loads, set the pace. A pair slot costs
//!   (1 + B)/B loads per FMA. Magnitude 2:4 shares one row per group of 4 on
//!   average (half the slots); masks learned with one pattern per column pair
//!   (`NmMatrix::from_dense_pruned_shared`, `training/sparse24.py --share 2`)
//!   share all of them.
//! * Accumulators start from the bias (first chunk) or from a stack scratch of
//!   column-major partial sums (later chunks), which holds a group of 768 columns;
//!   round trips through row-major `y` instead cost ~30 % at K = 192. After the
//!   last chunk an octet leaves the scratch with 8x8 transposes into row-major `y`.
//! * Rows are split into blocks of balanced height (`T = 50` runs as 4 + 3 vectors
//!   rather than 6 + 1), each block with its own `B` (1..=6). Blocks of 1-3
//!   vectors are bound by FMA latency (6 chains or fewer for 4 cycles x 2 pipes),
//!   so 1-4 rows past whole vectors (`T = 8q + 1..4`: 49, 98 and 196 after
//!   pruning) do not get a vector: they **ride** in the last block, in one extra
//!   accumulator for both columns of the pair (xmm for 1 or 2 rows, ymm for 3 or
//!   4), their inputs in a side panel indexed by `offset >> shift`. That adds one
//!   FMA per slot to the `2B` of the block (16 registers at B = 6). fc2 at T = 49
//!   went from 4 + 3 vectors, ~30 % dearer than T = 48, to 6 vectors and a
//!   rider, ~10 % dearer; T = 196 runs as 4 blocks of 6 vectors and a 4-row rider
//!   instead of 5 blocks of 5 (qkv ~1.1x faster).
//!
//! Any N:M pattern works. Each output sums its shared slots, then its pair slots,
//! each in ascending `k`, whatever the row blocking, so `run_parallel` gives the
//! same bits as `run` (but not tract's bits: its order is plain ascending `k`).
//! Stack use: 186 KiB (panel, scratch and the riders', uninitialised).

// Kernel loops index several arrays (accumulators, vectors, columns) by the same
// counter; explicit indices read better here than zipped iterators.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::mem::MaybeUninit;
use std::ops::Range;

pub(crate) use super::tok_pack::{Packed, COLS, ROWS};
use super::tok_pack::{KC_MAX, OCT, SLOT};

/// Vectors of 8 tokens per block at most.
const VECS: usize = ROWS / 8;
/// Octets per column group: partial sums of a group stay in a stack scratch of
/// `GROUP_OCT * 8 * ROWS` floats (144 KiB, in L2) across K-chunks, instead of round
/// trips through row-major `y` (measured ~30 % slower for K = 192 in 2 chunks).
/// Every column group transposes each K-chunk of `x` again, so one group for all
/// of a ViT-Tiny's widths (N <= 768) beats an L1-sized one: 32 octets (48 KiB)
/// ran qkv (N = 576, 3 groups) ~6 % slower, in six alternating runs.
const GROUP_OCT: usize = 96;

#[repr(C, align(64))]
struct Panel([f32; KC_MAX * ROWS]);

/// Column-major partial sums of one column group: `sc[col][token]`.
#[repr(C, align(64))]
struct Scratch([[f32; ROWS]; GROUP_OCT * OCT]);

/// Most rider rows, and the rider's partial sums kept per column (`rs[col * 4 + r]`).
const RIDER_MAX: usize = 4;

/// Where the rider's inputs for panel row `kk` start: `rp[kk * stride]`, found from
/// that row's panel byte offset `kk * 192` with one shift, `offset >> shift`
/// (stride 3, 6 or 12 floats), so the packed format holds no second offset. The
/// stride fits the `R` inputs of one row, twice over for `R > 1` (once per column).
const fn rider_shift(r: usize) -> u32 {
    match r {
        1 => 6,
        2 => 5,
        _ => 4,
    }
}

/// Floats of the rider's input panel: the widest stride, 12 floats per panel row.
const RIDER_PANEL: usize = KC_MAX * 12;

/// The rider rows' input panel, then their partial sums.
#[repr(C, align(64))]
struct Rider([f32; RIDER_PANEL + GROUP_OCT * OCT * RIDER_MAX]);

/// `offset >> rider_shift(r)` is `kk * stride` only while a panel row is 192 bytes.
const _RIDER_INDEX: () = assert!(ROWS * 4 == 3 << 6);

/// In-register 8x8 transpose: row `i` of the result is lane `i` of every input.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}

/// `y[t, n] = x[t, k] · W + bias`, row-major and contiguous, for the output columns
/// of octets `octs` (`0..p.noct()` for all); no other column of `y` is touched.
///
/// # Safety
/// The CPU has AVX2 and FMA; `x` holds `t * p.k` floats and `y` holds `t * p.n`. `octs.end <= p.noct()`.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn run(p: &Packed, x: *const f32, t: usize, y: *mut f32, octs: Range<usize>) {
    // Left uninitialised (zeroing 72 KiB per call showed up at T = 49): the panel
    // is only read at rows < kl and lanes < 8B, which `fill_panel` wrote, and the
    // scratch only at columns and lanes the previous K-chunk stored.
    let mut panel = MaybeUninit::<Panel>::uninit();
    let mut sc = MaybeUninit::<Scratch>::uninit();
    let mut rider = MaybeUninit::<Rider>::uninit();
    let s = Stack {
        panel: panel.as_mut_ptr().cast::<f32>(),
        sc: sc.as_mut_ptr().cast::<f32>(),
        rp: rider.as_mut_ptr().cast::<f32>(),
        rs: rider.as_mut_ptr().cast::<f32>().add(RIDER_PANEL),
    };
    // 1-4 rows past whole vectors (49, 98 and 196 after pruning by 1, 2 and 4) ride
    // in the last block instead of costing a vector: a 1-vector block is FMA-latency
    // bound and cost as much as a 4-vector one (fc2 ran T = 48 + 1 ~30 % slower than
    // 48), and a padded 25th vector made T = 196 run as 5 blocks of 5 instead of 4
    // of 6 (qkv: 19 % slower than T = 192). 3 rows ride as 4 with a zero lane.
    let tail = t % 8;
    let rider = match tail {
        1 | 2 if t > 8 => tail,
        3 | 4 if t > 8 => 4,
        _ => 0,
    };
    let nvec = if rider > 0 { t / 8 } else { t.div_ceil(8) };
    let nblk = nvec.div_ceil(VECS);
    let (mut r0, mut done) = (0, 0);
    for blk in 0..nblk {
        // Spread the vectors evenly, so a small row tail is not a block of its own.
        let v = (nvec - done).div_ceil(nblk - blk);
        let last = blk + 1 == nblk;
        let rows = if rider > 0 && last {
            8 * v + tail
        } else {
            (v * 8).min(t - r0)
        };
        let blk = Block {
            r0,
            rows,
            x,
            y,
            octs: octs.clone(),
        };
        macro_rules! by_height {
            ($r:literal) => {
                match v {
                    1 => block::<1, $r>(p, &blk, &s),
                    2 => block::<2, $r>(p, &blk, &s),
                    3 => block::<3, $r>(p, &blk, &s),
                    4 => block::<4, $r>(p, &blk, &s),
                    5 => block::<5, $r>(p, &blk, &s),
                    _ => block::<6, $r>(p, &blk, &s),
                }
            };
        }
        // SAFETY: rows r0..r0 + rows <= t; the other contracts are `run`'s.
        match if last { rider } else { 0 } {
            1 => by_height!(1),
            2 => by_height!(2),
            4 => by_height!(4),
            _ => by_height!(0),
        }
        r0 += rows;
        done += v;
    }
}

/// The stack buffers of one `run` call.
struct Stack {
    panel: *mut f32,
    sc: *mut f32,
    /// Rider rows' inputs, see [`rider_shift`].
    rp: *mut f32,
    /// Rider rows' partial sums, `rs[col * 4 + r]` for column `col` of the group.
    rs: *mut f32,
}

/// One block of rows: `x` and `y` are the whole matrices, rows `r0..r0 + rows`,
/// output columns in octets `octs` (only those columns of `y` are written).
struct Block {
    r0: usize,
    rows: usize,
    x: *const f32,
    y: *mut f32,
    octs: Range<usize>,
}

/// A block of `rows <= 8B` token rows, all K-chunks, all columns. With `R > 0` the
/// last `rows - 8B` (1..=R) rows ride along in one extra accumulator for the pair:
/// lanes `[c0, c1, c0, c1]` of an xmm (`R = 1`), `[r0c0, r1c0, r0c1, r1c1]` of an
/// xmm (`R = 2`) or rows 0-3 of column 0 then of column 1 in a ymm (`R = 4`).
// Not inlined: with its (then 12) instantiations inlined into `run`, LLVM stopped
// inlining `fill_panel` and `octet_out` into them, and T = 98 ran 0.1-0.3x slower.
#[inline(never)]
#[target_feature(enable = "avx2,fma")]
unsafe fn block<const B: usize, const R: usize>(p: &Packed, blk: &Block, s: &Stack) {
    let (k, n) = (p.k, p.n);
    let (pp, sp, rp, rs) = (s.panel, s.sc, s.rp, s.rs);
    let shift = rider_shift(R);
    let rr = blk.rows.saturating_sub(8 * B); // real rider rows, <= R
    let octs = blk.octs.clone();
    for g0 in octs.clone().step_by(GROUP_OCT) {
        for c in 0..p.nkc {
            let k0 = c * p.kc;
            let kl = p.kc.min(k - k0);
            if p.nkc > 1 || g0 == octs.start {
                fill_panel::<B>(blk, k, k0, kl, pp);
                if R > 0 {
                    fill_rider::<R>(blk, 8 * B, k, k0, kl, rp);
                }
            }
            let pb = pp.cast_const().cast::<u8>();
            for o in g0..octs.end.min(g0 + GROUP_OCT) {
                let col = o * OCT;
                let cols = OCT.min(n - col);
                let so = (o - g0) * OCT;
                let mut wp = p.data.as_ptr().add(p.starts[c * p.noct + o]);
                for _ in 0..cols.div_ceil(COLS) {
                    let h = *wp as usize;
                    wp = wp.add(1);
                    let (shared, pair) = (h & 0xFFF, (h >> 12) & 0xFFF);
                    let sj = [so + ((h >> 24) & 0xF), so + (h >> 28)];
                    let mut acc = [[_mm256_setzero_ps(); B]; COLS];
                    let (mut accr, mut accr8) = (_mm_setzero_ps(), _mm256_setzero_ps());
                    if R > 0 {
                        let (ra, rb) = (rs.add(RIDER_MAX * sj[0]), rs.add(RIDER_MAX * sj[1]));
                        if c == 0 {
                            let (ba, bb) = (p.bias[col + sj[0] - so], p.bias[col + sj[1] - so]);
                            match R {
                                1 => accr = _mm_setr_ps(ba, bb, ba, bb),
                                2 => accr = _mm_setr_ps(ba, ba, bb, bb),
                                _ => accr8 = _mm256_set_m128(_mm_set1_ps(bb), _mm_set1_ps(ba)),
                            }
                        } else {
                            match R {
                                1 => accr = _mm_setr_ps(*ra, *rb, *ra, *rb),
                                2 => {
                                    let lo = _mm_load_sd(ra.cast::<f64>());
                                    accr = _mm_castpd_ps(_mm_loadh_pd(lo, rb.cast::<f64>()));
                                }
                                _ => accr8 = _mm256_loadu2_m128(rb, ra),
                            }
                        }
                    }
                    for j in 0..COLS {
                        for b in 0..B {
                            acc[j][b] = if c == 0 {
                                _mm256_set1_ps(p.bias[col + sj[j] - so])
                            } else {
                                _mm256_load_ps(sp.add(sj[j] * ROWS + 8 * b))
                            };
                        }
                    }
                    // SAFETY (both loops): a slot is SLOT u32s; its offsets name panel
                    // rows < kl, so 8B floats from there are in the panel, 32-byte
                    // aligned (the stride is 192 bytes), and the rider's inputs of
                    // that row are in its panel (`fill_rider`).
                    for _ in 0..shared {
                        // One panel load feeds both columns: (B + 2) loads per 2B FMAs.
                        let w0 = _mm256_broadcast_ss(&*wp.cast::<f32>());
                        let w1 = _mm256_broadcast_ss(&*wp.add(1).cast::<f32>());
                        let xp = pb.add(*wp.add(2) as usize).cast::<f32>();
                        for b in 0..B {
                            let xv = _mm256_load_ps(xp.add(8 * b));
                            acc[0][b] = _mm256_fmadd_ps(w0, xv, acc[0][b]);
                            acc[1][b] = _mm256_fmadd_ps(w1, xv, acc[1][b]);
                        }
                        // The rider's weights are blends of the broadcasts (a blend
                        // runs on any FP pipe): 16 ymm registers at B = 6.
                        let xr = rp.add((*wp.add(2) >> shift) as usize);
                        let (w0x, w1x) = (_mm256_castps256_ps128(w0), _mm256_castps256_ps128(w1));
                        match R {
                            0 => {}
                            1 => {
                                let wv = _mm_blend_ps::<0b1010>(w0x, w1x);
                                accr = _mm_fmadd_ps(_mm_broadcast_ss(&*xr), wv, accr);
                            }
                            2 => {
                                let wv = _mm_blend_ps::<0b1100>(w0x, w1x);
                                accr = _mm_fmadd_ps(_mm_loadu_ps(xr), wv, accr);
                            }
                            _ => {
                                let wv = _mm256_blend_ps::<0xF0>(w0, w1);
                                accr8 = _mm256_fmadd_ps(_mm256_loadu_ps(xr), wv, accr8);
                            }
                        }
                        wp = wp.add(SLOT);
                    }
                    for _ in 0..pair {
                        for j in 0..COLS {
                            let w = _mm256_broadcast_ss(&*wp.add(j).cast::<f32>());
                            let off = (*wp.add(2) >> (16 * j)) & 0xFFFF;
                            let xp = pb.add(off as usize).cast::<f32>();
                            for b in 0..B {
                                let xv = _mm256_load_ps(xp.add(8 * b));
                                acc[j][b] = _mm256_fmadd_ps(w, xv, acc[j][b]);
                            }
                        }
                        // Each column its own input row.
                        let off = *wp.add(2);
                        let xa = rp.add(((off & 0xFFFF) >> shift) as usize);
                        let xb = rp.add((off >> (16 + shift)) as usize);
                        match R {
                            0 => {}
                            1 => {
                                // [wa, wb] twice times [x(ka), x(kb)] twice.
                                let wv = _mm_castpd_ps(_mm_load1_pd(wp.cast::<f64>()));
                                let xv = _mm_setr_ps(*xa, *xb, *xa, *xb);
                                accr = _mm_fmadd_ps(xv, wv, accr);
                            }
                            2 => {
                                let w2 = _mm_castpd_ps(_mm_load_sd(wp.cast::<f64>()));
                                let lo = _mm_load_sd(xa.cast::<f64>());
                                let xv = _mm_castpd_ps(_mm_loadh_pd(lo, xb.cast::<f64>()));
                                accr = _mm_fmadd_ps(xv, _mm_unpacklo_ps(w2, w2), accr);
                            }
                            _ => {
                                let wv = _mm256_blend_ps::<0xF0>(
                                    _mm256_broadcast_ss(&*wp.cast::<f32>()),
                                    _mm256_broadcast_ss(&*wp.add(1).cast::<f32>()),
                                );
                                let xv = _mm256_loadu2_m128(xb, xa);
                                accr8 = _mm256_fmadd_ps(xv, wv, accr8);
                            }
                        }
                        wp = wp.add(SLOT);
                    }
                    for j in 0..COLS {
                        for b in 0..B {
                            _mm256_store_ps(sp.add(sj[j] * ROWS + 8 * b), acc[j][b]);
                        }
                    }
                    let (ra, rb) = (rs.add(RIDER_MAX * sj[0]), rs.add(RIDER_MAX * sj[1]));
                    match R {
                        0 => {}
                        1 => {
                            _mm_store_ss(ra, accr);
                            _mm_store_ss(rb, _mm_movehdup_ps(accr));
                        }
                        2 => {
                            _mm_storel_pd(ra.cast::<f64>(), _mm_castps_pd(accr));
                            _mm_storeh_pd(rb.cast::<f64>(), _mm_castps_pd(accr));
                        }
                        _ => _mm256_storeu2_m128(rb, ra, accr8),
                    }
                }
                if c + 1 == p.nkc {
                    octet_out::<B>(blk, n, col, cols, sp.add(so * ROWS));
                    for i in 0..rr {
                        // SAFETY: rider rows r0 + 8B + i < r0 + rows <= t, columns < n.
                        let yr = blk.y.add((blk.r0 + 8 * B + i) * n + col);
                        for j in 0..cols {
                            *yr.add(j) = *rs.add(RIDER_MAX * (so + j) + i);
                        }
                    }
                }
            }
        }
    }
}

/// Copies the rider rows' inputs `k0..k0 + kl` (rows `r0 + v0..r0 + rows`) into
/// `rp` at the stride of [`rider_shift`]: one row's value for `R = 1` (broadcast
/// when used), the `R` rows twice otherwise. A 3-row rider's fourth lane is never
/// written out, but gets zeros rather than stale stack bytes, which could be
/// denormals (slow FMAs) or NaNs.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn fill_rider<const R: usize>(
    blk: &Block,
    v0: usize,
    k: usize,
    k0: usize,
    kl: usize,
    rp: *mut f32,
) {
    let stride = (ROWS * 4) >> rider_shift(R);
    for i in 0..R {
        let row = v0 + i;
        // SAFETY: rows r0 + row < r0 + rows <= t, inputs k0 + kk < k; rp holds
        // KC_MAX * 12 floats and kk * stride + 2R <= kk * 12 + 8.
        let xr = (row < blk.rows).then(|| blk.x.add((blk.r0 + row) * k + k0));
        for kk in 0..kl {
            let v = xr.map_or(0.0, |xr| *xr.add(kk));
            *rp.add(kk * stride + i) = v;
            if R > 1 {
                *rp.add(kk * stride + R + i) = v;
            }
        }
    }
}

/// Transposes rows `r0..r0 + rows`, inputs `k0..k0 + kl` of `x` into `panel[kk][i]`;
/// lanes of rows past the block's end are zero.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn fill_panel<const B: usize>(blk: &Block, k: usize, k0: usize, kl: usize, pp: *mut f32) {
    for b in 0..B {
        let i0 = 8 * b;
        // SAFETY: only rows r0 + i < r0 + rows <= t and inputs k0 + kk < k are read;
        // panel rows kk < kl <= KC_MAX, lanes < 8B <= ROWS are written.
        let xr = |i: usize| blk.x.add((blk.r0 + i0 + i) * k + k0);
        let mut kk = 0;
        if i0 + 8 <= blk.rows {
            while kk + 8 <= kl {
                let r = std::array::from_fn(|i| _mm256_loadu_ps(xr(i).add(kk)));
                for (j, v) in transpose8(r).into_iter().enumerate() {
                    _mm256_store_ps(pp.add((kk + j) * ROWS + i0), v);
                }
                kk += 8;
            }
        }
        for kk in kk..kl {
            for i in 0..8 {
                *pp.add(kk * ROWS + i0 + i) = if i0 + i < blk.rows {
                    *xr(i).add(kk)
                } else {
                    0.0
                };
            }
        }
    }
}

/// Writes one octet of results (`sc[j][i]`: column `col + j`, row `r0 + i`) to
/// row-major `y`; only `rows x cols` are touched.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn octet_out<const B: usize>(
    blk: &Block,
    n: usize,
    col: usize,
    cols: usize,
    sc: *const f32,
) {
    for b in 0..B {
        let i0 = 8 * b;
        // SAFETY: rows r0 + i0 + i < r0 + rows <= t, columns col + j < n.
        let yr = |i: usize| blk.y.add((blk.r0 + i0 + i) * n + col);
        if cols == OCT && i0 + 8 <= blk.rows {
            let r = std::array::from_fn(|j| _mm256_load_ps(sc.add(j * ROWS + i0)));
            for (i, v) in transpose8(r).into_iter().enumerate() {
                _mm256_storeu_ps(yr(i), v);
            }
        } else {
            for i in 0..8.min(blk.rows.saturating_sub(i0)) {
                for j in 0..cols {
                    *yr(i).add(j) = *sc.add(j * ROWS + i0 + i);
                }
            }
        }
    }
}
