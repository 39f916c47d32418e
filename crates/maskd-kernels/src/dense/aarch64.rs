//! aarch64 NEON dense kernel: 8 x 8 tile, `neon_gemm_f32_8x8`.
//!
//! The x86 kernels broadcast one `x` value per FMA; NEON's by-lane FMLA takes the
//! multiplier from a lane of a register instead, so each tile row loads four
//! consecutive `x` values (`k .. k + 4`) once and feeds them lane by lane to the four
//! panel rows of those `k`: one load per four FMAs per row rather than one broadcast
//! each. 16 accumulators, 8 `x` quads and 2 panel vectors: 26 of 32 registers, 16
//! independent FMA chains for the 4-cycle latency of two pipes (Cortex-A78). A `K`
//! not a multiple of 4 finishes with broadcast FMAs. Summation is in ascending `k`,
//! as everywhere. Speed unmeasured (no ARM machine here; correctness under qemu).

#![allow(clippy::needless_range_loop)]

use std::arch::aarch64::*;
use std::ops::Range;

use super::pack::Panels;

pub(crate) const MR: usize = 8;
pub(crate) const NR: usize = 8;

/// Panels `panels` over rows `0..t`.
///
/// # Safety
/// `x` holds `t * K` floats, `y` `t * N`; nothing else touches these panels' columns
/// of `y` meanwhile. (NEON is baseline on aarch64.)
pub(crate) unsafe fn run(p: &Panels, x: *const f32, t: usize, y: *mut f32, panels: Range<usize>) {
    let (k, n) = (p.k(), p.n());
    let mut r0 = 0;
    while r0 < t {
        let rows = (t - r0).min(MR);
        for pi in panels.clone() {
            let cols = p.cols(pi);
            // SAFETY: rows `r0..r0 + rows` < t and this panel's columns are inside `x`
            // and `y` (caller); the panel holds `k * NR` floats and the start `NR`.
            unsafe {
                let xp = x.add(r0 * k);
                let yp = y.add(r0 * n + pi * NR);
                let (w, s) = (p.panel(pi).as_ptr(), p.start(pi).as_ptr());
                match rows {
                    8 => tile::<8>(k, xp, w, s, yp, n, cols),
                    7 => tile::<7>(k, xp, w, s, yp, n, cols),
                    6 => tile::<6>(k, xp, w, s, yp, n, cols),
                    5 => tile::<5>(k, xp, w, s, yp, n, cols),
                    4 => tile::<4>(k, xp, w, s, yp, n, cols),
                    3 => tile::<3>(k, xp, w, s, yp, n, cols),
                    2 => tile::<2>(k, xp, w, s, yp, n, cols),
                    _ => tile::<1>(k, xp, w, s, yp, n, cols),
                }
            }
        }
        r0 += rows;
    }
}

/// One `R x 8` tile; `cols` of its 8 columns exist.
#[inline]
unsafe fn tile<const R: usize>(
    k: usize,
    x: *const f32,
    w: *const f32,
    start: *const f32,
    y: *mut f32,
    ld: usize,
    cols: usize,
) {
    // SAFETY: the caller's bounds (see `run`).
    unsafe {
        let s0 = vld1q_f32(start);
        let s1 = vld1q_f32(start.add(4));
        let mut acc = [[s0, s1]; R];
        let quads = k / 4;
        for q in 0..quads {
            let kk = q * 4;
            let mut a = [vdupq_n_f32(0.0); R];
            for r in 0..R {
                a[r] = vld1q_f32(x.add(r * k + kk));
            }
            macro_rules! step {
                ($lane:literal) => {
                    let b0 = vld1q_f32(w.add((kk + $lane) * NR));
                    let b1 = vld1q_f32(w.add((kk + $lane) * NR + 4));
                    for r in 0..R {
                        acc[r][0] = vfmaq_laneq_f32::<$lane>(acc[r][0], b0, a[r]);
                        acc[r][1] = vfmaq_laneq_f32::<$lane>(acc[r][1], b1, a[r]);
                    }
                };
            }
            step!(0);
            step!(1);
            step!(2);
            step!(3);
        }
        for kk in quads * 4..k {
            let b0 = vld1q_f32(w.add(kk * NR));
            let b1 = vld1q_f32(w.add(kk * NR + 4));
            for r in 0..R {
                let a = vdupq_n_f32(*x.add(r * k + kk));
                acc[r][0] = vfmaq_f32(acc[r][0], b0, a);
                acc[r][1] = vfmaq_f32(acc[r][1], b1, a);
            }
        }
        if cols == NR {
            for r in 0..R {
                vst1q_f32(y.add(r * ld), acc[r][0]);
                vst1q_f32(y.add(r * ld + 4), acc[r][1]);
            }
        } else {
            let mut tmp = [0.0f32; NR];
            for r in 0..R {
                vst1q_f32(tmp.as_mut_ptr(), acc[r][0]);
                vst1q_f32(tmp.as_mut_ptr().add(4), acc[r][1]);
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), y.add(r * ld), cols);
            }
        }
    }
}
