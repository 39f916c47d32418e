//! aarch64 NEON token-SIMD kernel with shared slots: `neontok_spmm*_f32_48x2`.
//!
//! The AVX2 token kernel's design (`x86_tok.rs`, measured there at 1.9-2.5x over
//! tract on pair-shared 2:4) on NEON, with the same packed weights (`tok_pack.rs`):
//!
//! * Per block of up to 48 token rows (12 q-vectors of 4) and per K-chunk of at most
//!   128 inputs, `x` is transposed once (4x4 NEON transposes) into a 24 KiB stack
//!   panel `panel[k][48]`.
//! * Micro-kernel, `B` vectors (4B tokens) x 2 columns = up to 24 accumulators of
//!   the 32 q registers. A shared slot loads the pair's two weights as one d
//!   register and its `B` panel vectors once, for `2B` by-element `fmla`s (0.54
//!   loads per FMA at B = 12); a pair slot loads `2B` vectors for `2B` FMAs. The
//!   older `neon` kernel (`aarch64.rs`) loads 8 panel floats for every 2 FMAs and
//!   streams all weights once per 8 rows instead of once per 48.
//! * Partial sums stay in a column-major stack scratch across K-chunks; the last
//!   chunk leaves through 4x4 transposes into row-major `y`.
//! * Rows are split into blocks of balanced height (1-12 vectors). Lanes past `T`
//!   in the last vector are zero in the panel and never written out: with 4-lane
//!   vectors a tail wastes at most 3 rows, so no rider rows as on AVX2.
//!
//! Each output sums its shared slots, then its pair slots, each in ascending `k`,
//! whatever the blocking: `run_parallel` gives the same bits as `run`, and the same
//! bits as `avx2tok` up to FMA rounding (both fuse). **Speed unmeasured**: no ARM
//! machine was at hand (tests run under qemu), so `best()` keeps `neon`; select
//! this one with `MASKD_SPARSE_KERNEL=neontok` after `cargo bench -p maskd-kernels`
//! on the target shows it ahead. Stack use: 168 KiB (panel and scratch).

// Kernel loops index several arrays (accumulators, vectors, columns) by the same
// counter; explicit indices read better here than zipped iterators.
#![allow(clippy::needless_range_loop)]

use std::arch::aarch64::*;
use std::mem::MaybeUninit;
use std::ops::Range;

use super::aarch64::transpose4;
pub(crate) use super::tok_pack::{Packed, COLS, ROWS};
use super::tok_pack::{KC_MAX, OCT, SLOT};

/// q-vectors of 4 tokens per block at most.
const VECS: usize = ROWS / 4;
/// Octets per column group whose partial sums stay in the scratch (768 columns,
/// every width of a ViT-Tiny, as on AVX2).
const GROUP_OCT: usize = 96;

#[repr(C, align(64))]
struct Panel([f32; KC_MAX * ROWS]);

/// Column-major partial sums of one column group: `sc[col][token]`.
#[repr(C, align(64))]
struct Scratch([[f32; ROWS]; GROUP_OCT * OCT]);

/// One block of rows: `x` and `y` are the whole matrices, rows `r0..r0 + rows`,
/// output columns in octets `octs` (only those columns of `y` are written).
struct Block {
    r0: usize,
    rows: usize,
    x: *const f32,
    y: *mut f32,
    octs: Range<usize>,
}

/// `y[t, n] = x[t, k] · W + bias`, row-major and contiguous, for the output columns
/// of octets `octs` (`0..p.noct()` for all); no other column of `y` is touched.
///
/// # Safety
/// `x` holds `t * p.k` floats and `y` holds `t * p.n` floats. `octs.end <= p.noct()`.
pub(crate) unsafe fn run(p: &Packed, x: *const f32, t: usize, y: *mut f32, octs: Range<usize>) {
    // Uninitialised: the panel is read only at rows < kl and lanes < 4B, which
    // `fill_panel` wrote, and the scratch only where the previous K-chunk stored.
    let mut panel = MaybeUninit::<Panel>::uninit();
    let mut sc = MaybeUninit::<Scratch>::uninit();
    let (pp, sp) = (
        panel.as_mut_ptr().cast::<f32>(),
        sc.as_mut_ptr().cast::<f32>(),
    );
    let nvec = t.div_ceil(4);
    let nblk = nvec.div_ceil(VECS);
    let (mut r0, mut done) = (0, 0);
    for b in 0..nblk {
        let v = (nvec - done).div_ceil(nblk - b);
        let rows = (v * 4).min(t - r0);
        let blk = Block {
            r0,
            rows,
            x,
            y,
            octs: octs.clone(),
        };
        // SAFETY: rows r0..r0 + rows <= t; the other contracts are `run`'s.
        match v {
            1 => block::<1>(p, &blk, pp, sp),
            2 => block::<2>(p, &blk, pp, sp),
            3 => block::<3>(p, &blk, pp, sp),
            4 => block::<4>(p, &blk, pp, sp),
            5 => block::<5>(p, &blk, pp, sp),
            6 => block::<6>(p, &blk, pp, sp),
            7 => block::<7>(p, &blk, pp, sp),
            8 => block::<8>(p, &blk, pp, sp),
            9 => block::<9>(p, &blk, pp, sp),
            10 => block::<10>(p, &blk, pp, sp),
            11 => block::<11>(p, &blk, pp, sp),
            _ => block::<12>(p, &blk, pp, sp),
        }
        r0 += rows;
        done += v;
    }
}

/// A block of `rows <= 4B` token rows, all K-chunks, all columns.
#[inline(never)]
unsafe fn block<const B: usize>(p: &Packed, blk: &Block, pp: *mut f32, sp: *mut f32) {
    let (k, n) = (p.k, p.n);
    let octs = blk.octs.clone();
    for g0 in octs.clone().step_by(GROUP_OCT) {
        for c in 0..p.nkc {
            let k0 = c * p.kc;
            let kl = p.kc.min(k - k0);
            if p.nkc > 1 || g0 == octs.start {
                fill_panel::<B>(blk, k, k0, kl, pp);
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
                    let mut acc = [[vdupq_n_f32(0.0); B]; COLS];
                    for j in 0..COLS {
                        for b in 0..B {
                            acc[j][b] = if c == 0 {
                                vdupq_n_f32(p.bias[col + sj[j] - so])
                            } else {
                                vld1q_f32(sp.add(sj[j] * ROWS + 4 * b))
                            };
                        }
                    }
                    // SAFETY (both loops): a slot is SLOT u32s, both weights first;
                    // its offsets name panel rows < kl, so 4B floats from there are
                    // in the panel.
                    for _ in 0..shared {
                        let w = vld1_f32(wp.cast::<f32>());
                        let xp = pb.add(*wp.add(2) as usize).cast::<f32>();
                        for b in 0..B {
                            let xv = vld1q_f32(xp.add(4 * b));
                            acc[0][b] = vfmaq_lane_f32::<0>(acc[0][b], xv, w);
                            acc[1][b] = vfmaq_lane_f32::<1>(acc[1][b], xv, w);
                        }
                        wp = wp.add(SLOT);
                    }
                    for _ in 0..pair {
                        let w = vld1_f32(wp.cast::<f32>());
                        let off = *wp.add(2) as usize;
                        let xa = pb.add(off & 0xFFFF).cast::<f32>();
                        let xb = pb.add(off >> 16).cast::<f32>();
                        for b in 0..B {
                            acc[0][b] = vfmaq_lane_f32::<0>(acc[0][b], vld1q_f32(xa.add(4 * b)), w);
                            acc[1][b] = vfmaq_lane_f32::<1>(acc[1][b], vld1q_f32(xb.add(4 * b)), w);
                        }
                        wp = wp.add(SLOT);
                    }
                    for j in 0..COLS {
                        for b in 0..B {
                            vst1q_f32(sp.add(sj[j] * ROWS + 4 * b), acc[j][b]);
                        }
                    }
                }
                if c + 1 == p.nkc {
                    octet_out::<B>(blk, n, col, cols, sp.add(so * ROWS));
                }
            }
        }
    }
}

/// Transposes rows `r0..r0 + rows`, inputs `k0..k0 + kl` of `x` into `panel[kk][i]`;
/// lanes of rows past the block's end are zero.
#[inline(always)]
unsafe fn fill_panel<const B: usize>(blk: &Block, k: usize, k0: usize, kl: usize, pp: *mut f32) {
    for b in 0..B {
        let i0 = 4 * b;
        // SAFETY: only rows r0 + i < r0 + rows <= t and inputs k0 + kk < k are read;
        // panel rows kk < kl <= KC_MAX, lanes < 4B <= ROWS are written.
        let xr = |i: usize| blk.x.add((blk.r0 + i0 + i) * k + k0);
        let mut kk = 0;
        if i0 + 4 <= blk.rows {
            while kk + 4 <= kl {
                let r = std::array::from_fn(|i| vld1q_f32(xr(i).add(kk)));
                for (j, v) in transpose4(r).into_iter().enumerate() {
                    vst1q_f32(pp.add((kk + j) * ROWS + i0), v);
                }
                kk += 4;
            }
        }
        for kk in kk..kl {
            for i in 0..4 {
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
#[inline(always)]
unsafe fn octet_out<const B: usize>(
    blk: &Block,
    n: usize,
    col: usize,
    cols: usize,
    sc: *const f32,
) {
    for b in 0..B {
        let i0 = 4 * b;
        // SAFETY: rows r0 + i0 + i < r0 + rows <= t, columns col + j < n.
        let yr = |i: usize| blk.y.add((blk.r0 + i0 + i) * n + col);
        if cols == OCT && i0 + 4 <= blk.rows {
            for half in 0..2 {
                let r = std::array::from_fn(|j| vld1q_f32(sc.add((4 * half + j) * ROWS + i0)));
                for (i, v) in transpose4(r).into_iter().enumerate() {
                    vst1q_f32(yr(i).add(4 * half), v);
                }
            }
        } else {
            for i in 0..4.min(blk.rows.saturating_sub(i0)) {
                for j in 0..cols {
                    *yr(i).add(j) = *sc.add(j * ROWS + i0 + i);
                }
            }
        }
    }
}
