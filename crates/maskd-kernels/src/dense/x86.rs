//! x86-64 dense kernels: AVX-512F (8 x 32 tile) and AVX2+FMA (6 x 16 tile).
//!
//! Both are the textbook broadcast kernel MLAS uses: per `k`, load the panel's vector
//! row once and, per tile row, broadcast one `x` value into an FMA with it. The tile
//! sizes keep the accumulators plus the panel vectors and one broadcast within the
//! register file (16 + 2 + 1 of 32 zmm; 12 + 2 + 1 of 16 ymm) and give each FMA chain
//! enough independent neighbours to hide its 4-cycle latency on two FMA pipes. Rows
//! walk in tiles of `MR` (the last tile has fewer), panels inside each row tile, so a
//! tile's `MR x K` inputs stay in L1 while the panels stream from L2. The last panel's
//! missing columns are masked off the stores (both ISAs' masked stores ignore masked
//! lanes, addresses included).

// Tile loops index accumulators and rows by the same counter.
#![allow(clippy::needless_range_loop)]

/// Calls `$tile::<R>(args)` for the runtime row count `$rows` (1..=8).
macro_rules! by_rows {
    ($rows:expr, $tile:ident, $($arg:expr),*) => {
        match $rows {
            8 => $tile::<8>($($arg),*),
            7 => $tile::<7>($($arg),*),
            6 => $tile::<6>($($arg),*),
            5 => $tile::<5>($($arg),*),
            4 => $tile::<4>($($arg),*),
            3 => $tile::<3>($($arg),*),
            2 => $tile::<2>($($arg),*),
            _ => $tile::<1>($($arg),*),
        }
    };
}

pub(crate) mod avx512 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use crate::dense::pack::Panels;

    pub(crate) const MR: usize = 8;
    pub(crate) const NR: usize = 32;

    /// Panels `panels` over rows `0..t`.
    ///
    /// # Safety
    /// AVX-512F available; `x` holds `t * K` floats, `y` `t * N`; nothing else touches
    /// these panels' columns of `y` meanwhile.
    pub(crate) unsafe fn run(
        p: &Panels,
        x: *const f32,
        t: usize,
        y: *mut f32,
        panels: Range<usize>,
    ) {
        // SAFETY: the caller's contract, passed on.
        unsafe { walk(p, x, t, y, panels) }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn walk(p: &Panels, x: *const f32, t: usize, y: *mut f32, panels: Range<usize>) {
        let (k, n) = (p.k(), p.n());
        let mut r0 = 0;
        while r0 < t {
            let rows = (t - r0).min(MR);
            for pi in panels.clone() {
                let cols = p.cols(pi);
                let lo = if cols >= 16 {
                    0xFFFF
                } else {
                    (1u32 << cols) as u16 - 1
                };
                let hi = if cols >= 32 {
                    0xFFFF
                } else if cols > 16 {
                    ((1u32 << (cols - 16)) - 1) as u16
                } else {
                    0
                };
                // SAFETY: rows `r0..r0 + rows` < t and this panel's columns are inside
                // `x` and `y` (caller); the panel holds `k * NR` floats and the start `NR`.
                unsafe {
                    let xp = x.add(r0 * k);
                    let yp = y.add(r0 * n + pi * NR);
                    let (w, s) = (p.panel(pi).as_ptr(), p.start(pi).as_ptr());
                    by_rows!(rows, tile, k, xp, w, s, yp, n, lo, hi);
                }
            }
            r0 += rows;
        }
    }

    /// One `R x 32` tile: `y[r][0..32] = start + sum_k x[r][k] * w[k][0..32]`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const R: usize>(
        k: usize,
        x: *const f32,
        w: *const f32,
        start: *const f32,
        y: *mut f32,
        ld: usize,
        lo: u16,
        hi: u16,
    ) {
        // SAFETY: the caller's bounds (see `walk`); `ld` is both `y`'s row stride
        // and, below, `x`'s is `k`.
        unsafe {
            let s0 = _mm512_loadu_ps(start);
            let s1 = _mm512_loadu_ps(start.add(16));
            let mut acc = [[s0, s1]; R];
            for kk in 0..k {
                let b0 = _mm512_loadu_ps(w.add(kk * NR));
                let b1 = _mm512_loadu_ps(w.add(kk * NR + 16));
                for r in 0..R {
                    let a = _mm512_set1_ps(*x.add(r * k + kk));
                    acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
                    acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
                }
            }
            for r in 0..R {
                _mm512_mask_storeu_ps(y.add(r * ld), lo, acc[r][0]);
                _mm512_mask_storeu_ps(y.add(r * ld + 16), hi, acc[r][1]);
            }
        }
    }
}

pub(crate) mod avx2 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use crate::dense::pack::Panels;

    pub(crate) const MR: usize = 6;
    pub(crate) const NR: usize = 16;

    /// Panels `panels` over rows `0..t`.
    ///
    /// # Safety
    /// AVX2 and FMA available; `x` holds `t * K` floats, `y` `t * N`; nothing else
    /// touches these panels' columns of `y` meanwhile.
    pub(crate) unsafe fn run(
        p: &Panels,
        x: *const f32,
        t: usize,
        y: *mut f32,
        panels: Range<usize>,
    ) {
        // SAFETY: the caller's contract, passed on.
        unsafe { walk(p, x, t, y, panels) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn walk(p: &Panels, x: *const f32, t: usize, y: *mut f32, panels: Range<usize>) {
        let (k, n) = (p.k(), p.n());
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mut r0 = 0;
        while r0 < t {
            let rows = (t - r0).min(MR);
            for pi in panels.clone() {
                let cols = p.cols(pi) as i32;
                let lo = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols), lanes);
                let hi = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols - 8), lanes);
                // SAFETY: as in the AVX-512 kernel.
                unsafe {
                    let xp = x.add(r0 * k);
                    let yp = y.add(r0 * n + pi * NR);
                    let (w, s) = (p.panel(pi).as_ptr(), p.start(pi).as_ptr());
                    match rows {
                        6 => tile::<6>(k, xp, w, s, yp, n, lo, hi),
                        5 => tile::<5>(k, xp, w, s, yp, n, lo, hi),
                        4 => tile::<4>(k, xp, w, s, yp, n, lo, hi),
                        3 => tile::<3>(k, xp, w, s, yp, n, lo, hi),
                        2 => tile::<2>(k, xp, w, s, yp, n, lo, hi),
                        _ => tile::<1>(k, xp, w, s, yp, n, lo, hi),
                    }
                }
            }
            r0 += rows;
        }
    }

    /// One `R x 16` tile.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const R: usize>(
        k: usize,
        x: *const f32,
        w: *const f32,
        start: *const f32,
        y: *mut f32,
        ld: usize,
        lo: __m256i,
        hi: __m256i,
    ) {
        // SAFETY: the caller's bounds (see `walk`).
        unsafe {
            let s0 = _mm256_loadu_ps(start);
            let s1 = _mm256_loadu_ps(start.add(8));
            let mut acc = [[s0, s1]; R];
            for kk in 0..k {
                let b0 = _mm256_loadu_ps(w.add(kk * NR));
                let b1 = _mm256_loadu_ps(w.add(kk * NR + 8));
                for r in 0..R {
                    let a = _mm256_broadcast_ss(&*x.add(r * k + kk));
                    acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);
                    acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);
                }
            }
            for r in 0..R {
                _mm256_maskstore_ps(y.add(r * ld), lo, acc[r][0]);
                _mm256_maskstore_ps(y.add(r * ld + 8), hi, acc[r][1]);
            }
        }
    }
}
