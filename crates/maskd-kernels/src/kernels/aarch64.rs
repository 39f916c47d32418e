//! aarch64 NEON kernel: `neon_spmm*_f32_8x4`, token-SIMD with by-element FMLA.
//!
//! NEON has no cheap 16-way float permute (`TBL` over four registers costs several
//! µops and needs byte indices), so the x86 column-SIMD design does not carry over.
//! Instead SIMD runs across **tokens** (PLATFORM.md's suggestion for NEON):
//!
//! * Per block of 8 token rows and per K-chunk of at most 512 inputs, `x` is
//!   transposed once into a stack panel `panel[k][8]` (rows past `T` are zero).
//! * Weights are packed once, per block of 4 output columns and K-chunk, as
//!   *quads*: 4 consecutive kept slots of each of the 4 columns = 16 values
//!   (column-major by slot), then their 16 panel offsets (`row_in_chunk * 8`, u32).
//!   Columns keep `groups * N` slots per chunk, padded to a multiple of 4 with zero
//!   weights at offset 0; missing columns (N % 4) are all zero.
//! * Micro-kernel, 8 tokens x 4 columns = 8 accumulators: per quad, load the 4
//!   weight vectors; per slot lane and column, load the 8 panel inputs its offset
//!   names (`ld1 {v.4s, v.4s}`) and `fmla v.4s, v.4s, w.s[lane]` twice.
//!   Accumulators start from the bias (or from `y` on later K-chunks) and are
//!   transposed 4x4 back to row-major `y`.
//!
//! Any N:M pattern works (nothing depends on `M` dividing a lane count). The
//! register tile is small (8 of 32 registers hold accumulators) because each FMA
//! already needs its own input load; performance is unmeasured here (qemu only).

// Kernel loops index several arrays (accumulators, panel rows, columns) by the
// same counter; explicit indices read better here than zipped iterators.
#![allow(clippy::needless_range_loop)]

use std::arch::aarch64::*;

use crate::NmMatrix;

/// Token rows per block (two 4-lane vectors).
pub(crate) const ROWS: usize = 8;
/// Output columns per block.
pub(crate) const COLS: usize = 4;
/// Largest K-chunk: the stack panel is `KC_MAX * ROWS` floats (16 KiB).
const KC_MAX: usize = 512;

#[derive(Clone)]
pub(crate) struct Packed {
    k: usize,
    n: usize,
    /// K-chunk length, a multiple of `M`.
    kc: usize,
    nkc: usize,
    nblocks: usize,
    /// Quads per K-chunk (the same for every column block).
    quads: Vec<usize>,
    /// Start (in u32s) of block `b`, chunk `c` at `b * nkc + c`.
    starts: Vec<usize>,
    /// Quads: 16 f32 values (as bits) then 16 u32 panel offsets.
    data: Vec<u32>,
    /// Bias padded to `nblocks * COLS`.
    bias: Vec<f32>,
}

impl Packed {
    pub(crate) fn new(m: &NmMatrix, bias: Option<&[f32]>) -> Packed {
        let p = m.pattern();
        let (k, n) = (m.k(), m.n());
        let gpc = KC_MAX / p.m(); // groups per chunk
        let kc = gpc * p.m();
        let nkc = k.div_ceil(kc);
        let nblocks = n.div_ceil(COLS);
        let quads: Vec<usize> = (0..nkc)
            .map(|c| {
                let groups = gpc.min(m.groups() - c * gpc);
                (groups * p.n()).div_ceil(4)
            })
            .collect();
        let mut data = Vec::with_capacity(nblocks * quads.iter().sum::<usize>() * 32);
        let mut starts = Vec::with_capacity(nblocks * nkc);
        let mut slots: [Vec<(f32, u32)>; COLS] = Default::default();
        for b in 0..nblocks {
            for c in 0..nkc {
                starts.push(data.len());
                let (k0, g0, nq) = (c * kc, c * gpc, quads[c]);
                for (j, list) in slots.iter_mut().enumerate() {
                    list.clear();
                    let col = b * COLS + j;
                    if col < n {
                        for g in g0..(g0 + gpc).min(m.groups()) {
                            for s in 0..p.n() {
                                let row = g * p.m() + m.index(g, s, col);
                                if row < k {
                                    list.push((m.value(g, s, col), ((row - k0) * ROWS) as u32));
                                } else {
                                    list.push((0.0, 0)); // tail padding, value 0
                                }
                            }
                        }
                    }
                    list.resize(nq * 4, (0.0, 0));
                }
                for q in 0..nq {
                    for list in &slots {
                        data.extend(list[q * 4..][..4].iter().map(|s| s.0.to_bits()));
                    }
                    for list in &slots {
                        data.extend(list[q * 4..][..4].iter().map(|s| s.1));
                    }
                }
            }
        }
        let mut padded = vec![0.0; nblocks * COLS];
        if let Some(b) = bias {
            padded[..n].copy_from_slice(b);
        }
        Packed {
            k,
            n,
            kc,
            nkc,
            nblocks,
            quads,
            starts,
            data,
            bias: padded,
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        4 * (self.data.len() + self.bias.len()) + 8 * (self.starts.len() + self.quads.len())
    }
}

/// One FMA step for slot lane `$l` of a quad: all 4 columns, both token halves.
macro_rules! lane {
    ($l:literal, $acc:ident, $w:ident, $off:ident, $panel:ident) => {
        for j in 0..COLS {
            // SAFETY: offsets were packed as (row_in_chunk * 8) with row_in_chunk < kc,
            // so 8 floats from there lie inside the panel.
            let xv = vld1q_f32_x2($panel.add(*$off.add(j * 4 + $l) as usize));
            $acc[j][0] = vfmaq_laneq_f32::<$l>($acc[j][0], xv.0, $w[j]);
            $acc[j][1] = vfmaq_laneq_f32::<$l>($acc[j][1], xv.1, $w[j]);
        }
    };
}

/// `acc[j][h]` (column j, tokens 4h..4h+4) -> `out[token][col]` rows of 4.
#[inline(always)]
pub(super) unsafe fn transpose4(a: [float32x4_t; 4]) -> [float32x4_t; 4] {
    let t0 = vreinterpretq_f64_f32(vtrn1q_f32(a[0], a[1]));
    let t1 = vreinterpretq_f64_f32(vtrn2q_f32(a[0], a[1]));
    let t2 = vreinterpretq_f64_f32(vtrn1q_f32(a[2], a[3]));
    let t3 = vreinterpretq_f64_f32(vtrn2q_f32(a[2], a[3]));
    [
        vreinterpretq_f32_f64(vtrn1q_f64(t0, t2)),
        vreinterpretq_f32_f64(vtrn1q_f64(t1, t3)),
        vreinterpretq_f32_f64(vtrn2q_f64(t0, t2)),
        vreinterpretq_f32_f64(vtrn2q_f64(t1, t3)),
    ]
}

/// `y[t, n] = x[t, k] · W + bias`, row-major and contiguous.
///
/// # Safety
/// `x` holds `t * p.k` floats and `y` holds `t * p.n` floats.
pub(crate) unsafe fn run(p: &Packed, x: *const f32, t: usize, y: *mut f32) {
    let (k, n) = (p.k, p.n);
    let mut panel = [0f32; KC_MAX * ROWS];
    let pp = panel.as_ptr();
    let mut r0 = 0;
    while r0 < t {
        let rows = ROWS.min(t - r0);
        for c in 0..p.nkc {
            let k0 = c * p.kc;
            let kl = p.kc.min(k - k0);
            for kk in 0..kl {
                for i in 0..ROWS {
                    // SAFETY: row r0 + i < t and column k0 + kk < k when read.
                    panel[kk * ROWS + i] = if i < rows {
                        *x.add((r0 + i) * k + k0 + kk)
                    } else {
                        0.0
                    };
                }
            }
            for b in 0..p.nblocks {
                let col = b * COLS;
                let cols = COLS.min(n - col);
                let mut acc = [[vdupq_n_f32(0.0); 2]; COLS];
                if c == 0 {
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = [vdupq_n_f32(p.bias[col + j]); 2];
                    }
                } else {
                    // Later K-chunks accumulate onto y (only when K > KC_MAX).
                    let mut tmp = [[0f32; ROWS]; COLS];
                    for i in 0..rows {
                        for j in 0..cols {
                            tmp[j][i] = *y.add((r0 + i) * n + col + j);
                        }
                    }
                    for j in 0..COLS {
                        acc[j] = [
                            vld1q_f32(tmp[j].as_ptr()),
                            vld1q_f32(tmp[j].as_ptr().add(4)),
                        ];
                    }
                }
                let mut wp = p.data.as_ptr().add(p.starts[b * p.nkc + c]);
                for _ in 0..p.quads[c] {
                    // SAFETY: a quad is 32 u32s: 16 value bits then 16 offsets.
                    let w = [
                        vld1q_f32(wp.cast()),
                        vld1q_f32(wp.add(4).cast()),
                        vld1q_f32(wp.add(8).cast()),
                        vld1q_f32(wp.add(12).cast()),
                    ];
                    let off = wp.add(16);
                    lane!(0, acc, w, off, pp);
                    lane!(1, acc, w, off, pp);
                    lane!(2, acc, w, off, pp);
                    lane!(3, acc, w, off, pp);
                    wp = wp.add(32);
                }
                for h in 0..2 {
                    let out = transpose4([acc[0][h], acc[1][h], acc[2][h], acc[3][h]]);
                    for (i, v) in out.iter().enumerate() {
                        let r = h * 4 + i;
                        if r >= rows {
                            break;
                        }
                        // SAFETY: row r0 + r < t; `cols` columns from `col` are in row.
                        let dst = y.add((r0 + r) * n + col);
                        if cols == COLS {
                            vst1q_f32(dst, *v);
                        } else {
                            let mut tmp = [0f32; COLS];
                            vst1q_f32(tmp.as_mut_ptr(), *v);
                            std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, cols);
                        }
                    }
                }
            }
        }
        r0 += ROWS;
    }
}
