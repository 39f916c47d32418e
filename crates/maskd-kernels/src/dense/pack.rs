//! The packed weight layout every dense kernel reads: `W[K, N]` cut into panels of
//! `NR` columns, each `k`-major (`panel[k][0..NR]`), zero-padded past `N`, starting on
//! a 64-byte boundary so that no vector load of a panel row splits a cache line.

/// Floats of padding a `Vec<f32>` needs to offer a 64-byte aligned start.
const ALIGN_FLOATS: usize = 16;

/// A float buffer whose data starts on a 64-byte boundary. `Vec` only guarantees the
/// element's alignment, and a cloned `Vec` may land elsewhere, so the offset is found
/// again on every clone.
struct Aligned {
    raw: Vec<f32>,
    offset: usize,
}

impl Aligned {
    fn zeroed(len: usize) -> Aligned {
        let raw = vec![0.0f32; len + ALIGN_FLOATS];
        let offset = raw.as_ptr().align_offset(64).min(ALIGN_FLOATS);
        Aligned { raw, offset }
    }

    fn len(&self) -> usize {
        self.raw.len() - ALIGN_FLOATS
    }

    fn as_slice(&self) -> &[f32] {
        &self.raw[self.offset..self.offset + self.len()]
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        let len = self.len();
        &mut self.raw[self.offset..self.offset + len]
    }
}

impl Clone for Aligned {
    fn clone(&self) -> Aligned {
        let mut copy = Aligned::zeroed(self.len());
        copy.as_mut_slice().copy_from_slice(self.as_slice());
        copy
    }
}

#[derive(Clone)]
pub(crate) struct Panels {
    k: usize,
    n: usize,
    nr: usize,
    count: usize,
    /// `count` panels of `k * nr` floats.
    data: Aligned,
    /// The bias (zeros without one), padded to `count * nr`.
    start: Aligned,
    bias: Option<Vec<f32>>,
}

impl Panels {
    /// `w` is row-major `[k, n]`; lengths are the caller's to check.
    pub(crate) fn new(w: &[f32], k: usize, n: usize, bias: Option<&[f32]>, nr: usize) -> Panels {
        let count = n.div_ceil(nr);
        let mut data = Aligned::zeroed(count * k * nr);
        {
            let d = data.as_mut_slice();
            for p in 0..count {
                let cols = (n - p * nr).min(nr);
                for kk in 0..k {
                    let to = (p * k + kk) * nr;
                    let from = kk * n + p * nr;
                    d[to..to + cols].copy_from_slice(&w[from..from + cols]);
                }
            }
        }
        let mut start = Aligned::zeroed(count * nr);
        if let Some(b) = bias {
            start.as_mut_slice()[..n].copy_from_slice(b);
        }
        Panels {
            k,
            n,
            nr,
            count,
            data,
            start,
            bias: bias.map(<[f32]>::to_vec),
        }
    }

    pub(crate) fn k(&self) -> usize {
        self.k
    }

    pub(crate) fn n(&self) -> usize {
        self.n
    }

    pub(crate) fn nr(&self) -> usize {
        self.nr
    }

    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// Panel `p`: `k * nr` floats.
    pub(crate) fn panel(&self, p: usize) -> &[f32] {
        let len = self.k * self.nr;
        &self.data.as_slice()[p * len..(p + 1) * len]
    }

    /// The accumulators' start for panel `p`: `nr` floats.
    pub(crate) fn start(&self, p: usize) -> &[f32] {
        &self.start.as_slice()[p * self.nr..(p + 1) * self.nr]
    }

    /// Columns of panel `p` that exist (`nr`, or fewer for the last).
    pub(crate) fn cols(&self, p: usize) -> usize {
        (self.n - p * self.nr).min(self.nr)
    }

    pub(crate) fn bias(&self) -> Option<&[f32]> {
        self.bias.as_deref()
    }

    pub(crate) fn unpack(&self) -> Vec<f32> {
        let mut w = vec![0.0; self.k * self.n];
        for p in 0..self.count {
            let (panel, cols) = (self.panel(p), self.cols(p));
            for kk in 0..self.k {
                let to = kk * self.n + p * self.nr;
                w[to..to + cols].copy_from_slice(&panel[kk * self.nr..kk * self.nr + cols]);
            }
        }
        w
    }

    pub(crate) fn bytes(&self) -> usize {
        (self.data.len() + self.start.len()) * std::mem::size_of::<f32>()
    }
}
