//! Safe scalar kernel: every N:M pattern, every CPU. It is the fallback and the
//! readable statement of what the SIMD kernels compute.
//!
//! Packed layout: the compressed values in their `[G*N, n]` order, and each value's
//! absolute input row `g*M + index` decoded once to a `u32`. Slots that point into
//! the tail group's padding (value 0 by the format's rule) are redirected to row 0
//! so the kernel never reads past a row of `x`.

use crate::NmMatrix;

#[derive(Debug, Clone)]
pub(crate) struct Packed {
    k: usize,
    n: usize,
    /// Rows of `values` / `rows`: `groups * N`.
    slots: usize,
    values: Vec<f32>,
    rows: Vec<u32>,
    bias: Vec<f32>,
}

impl Packed {
    pub(crate) fn new(m: &NmMatrix, bias: Option<&[f32]>) -> Packed {
        let (k, n, p) = (m.k(), m.n(), m.pattern());
        let slots = m.groups() * p.n();
        let mut values = m.values().to_vec();
        let mut rows = vec![0u32; values.len()];
        for g in 0..m.groups() {
            for s in 0..p.n() {
                for c in 0..n {
                    let e = (g * p.n() + s) * n + c;
                    let r = g * p.m() + m.index(g, s, c);
                    if r < k {
                        rows[e] = r as u32;
                    } else {
                        values[e] = 0.0;
                    }
                }
            }
        }
        Packed {
            k,
            n,
            slots,
            values,
            rows,
            bias: bias.map_or_else(|| vec![0.0; n], <[f32]>::to_vec),
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        4 * (self.values.len() + self.rows.len() + self.bias.len())
    }

    /// `y[t, n] = x[t, k] · W + bias`, both row-major and contiguous.
    pub(crate) fn run(&self, x: &[f32], y: &mut [f32]) {
        let (k, n) = (self.k, self.n);
        for (xr, yr) in x.chunks_exact(k).zip(y.chunks_exact_mut(n)) {
            yr.copy_from_slice(&self.bias);
            for e in 0..self.slots {
                let vals = &self.values[e * n..][..n];
                let rows = &self.rows[e * n..][..n];
                for ((yv, &w), &r) in yr.iter_mut().zip(vals).zip(rows) {
                    *yv += xr[r as usize] * w;
                }
            }
        }
    }
}
