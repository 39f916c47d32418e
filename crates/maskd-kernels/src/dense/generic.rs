//! The scalar dense kernel: the reference the SIMD kernels are checked against at
//! start-up, and the fallback on CPUs without one. Same panels, same tile walk, same
//! summation order (bias, then ascending `k`) as the SIMD kernels, without FMA.

use std::ops::Range;

use super::pack::Panels;

/// Rows per tile.
pub(crate) const MR: usize = 4;
/// Columns per panel.
pub(crate) const NR: usize = 8;

/// Panels `panels` of `p` over rows `0..t`.
///
/// # Safety
/// `x` holds `t * K` floats, `y` holds `t * N`, and nothing else touches the columns of
/// these panels in `y` meanwhile (other threads may write other columns, so `y` is
/// written through the pointer, never as a slice).
pub(crate) unsafe fn run(p: &Panels, x: *const f32, t: usize, y: *mut f32, panels: Range<usize>) {
    let (k, n) = (p.k(), p.n());
    // SAFETY: the caller guarantees `t * k` readable floats; nothing writes `x`.
    let x = unsafe { std::slice::from_raw_parts(x, t * k) };
    for r0 in (0..t).step_by(MR) {
        let rows = (t - r0).min(MR);
        for pi in panels.clone() {
            let (w, start, cols) = (p.panel(pi), p.start(pi), p.cols(pi));
            let mut acc = [[0.0f32; NR]; MR];
            for row in acc.iter_mut().take(rows) {
                row.copy_from_slice(start);
            }
            for kk in 0..k {
                let wk = &w[kk * NR..(kk + 1) * NR];
                for (r, row) in acc.iter_mut().enumerate().take(rows) {
                    let a = x[(r0 + r) * k + kk];
                    for (c, wv) in row.iter_mut().zip(wk) {
                        *c += a * wv;
                    }
                }
            }
            for (r, row) in acc.iter().enumerate().take(rows) {
                for (j, v) in row.iter().enumerate().take(cols) {
                    // SAFETY: row `r0 + r < t`, column `pi * NR + j < N`: inside `y`,
                    // in this call's panels.
                    unsafe { *y.add((r0 + r) * n + pi * NR + j) = *v };
                }
            }
        }
    }
}
