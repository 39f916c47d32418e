//! Weight packing for the token-SIMD kernels (`x86_tok.rs` with AVX2, `aarch64_tok.rs`
//! with NEON): per K-chunk, per *octet* of 8 output columns, per pair of columns.
//!
//! Rows both columns keep become **shared slots** `[value0, value1, offset]`: one
//! panel load feeds both columns' FMAs. The other rows are paired up in ascending
//! order as **pair slots** `[value0, value1, offset0 | offset1 << 16]` (one load per
//! FMA). Offsets are panel byte offsets (the panel stride is `ROWS` floats, whatever
//! the block height, so packing does not depend on `T`). The columns of an octet are matched into pairs to share the most
//! rows (all 105 matchings are tried); a header per pair holds both slot counts
//! and the pair's columns. Padding and weights that are exactly zero are left out.

use crate::NmMatrix;

/// Most token rows per block, and the panel stride in floats.
pub(crate) const ROWS: usize = 48;
/// Output columns per micro-kernel (2 x 6 accumulators + 2 weights + 1 input of 16 ymm).
pub(crate) const COLS: usize = 2;
/// Columns per write-back block: one 8x8 transpose wide.
pub(crate) const OCT: usize = 8;
/// u32s per slot of a column pair: both values, then the shared panel offset or
/// both offsets as u16s (one scalar load for two offsets: pair slots are bound by
/// loads, not ALU ops).
pub(crate) const SLOT: usize = 3;
/// Largest K-chunk: the panel (`KC_MAX * ROWS` floats, 24 KiB) stays in a 32 KiB L1d.
pub(crate) const KC_MAX: usize = 128;

/// Panel byte offsets are packed as u16 pairs, and a slot holds exactly 2 columns.
const _OFFSETS_FIT: () = assert!(KC_MAX * ROWS * 4 <= 1 << 16 && COLS == 2);

#[derive(Clone)]
pub(crate) struct Packed {
    pub(super) k: usize,
    pub(super) n: usize,
    /// K-chunk length, a multiple of `M`.
    pub(super) kc: usize,
    pub(super) nkc: usize,
    /// Octets of columns: `ceil(n / 8)`.
    pub(super) noct: usize,
    /// Start (in u32s) of chunk `c`, octet `o` at `c * noct + o`.
    pub(super) starts: Vec<usize>,
    /// Per chunk, octet and column pair: a header (see [`header`]), then the shared
    /// slots `[value0, value1, offset]`, then the pair slots `[value0, value1,
    /// offset0 | offset1 << 16]`.
    pub(super) data: Vec<u32>,
    /// Bias padded to `noct * 8`.
    pub(super) bias: Vec<f32>,
}

/// A pair's header: shared and pair slot counts (< 2^12, since a column keeps at
/// most `KC_MAX` slots per chunk), then both columns' positions in the octet.
fn header(shared: usize, pair: usize, ca: usize, cb: usize) -> u32 {
    (shared | pair << 12 | ca << 24 | cb << 28) as u32
}

const _HEADER_FITS: () = assert!(KC_MAX < 1 << 12 && OCT <= 16);

/// One column's kept `(value, panel row)` entries in a chunk, ascending rows.
/// Padding (groups past `K`, columns past `N`) and kept weights that are exactly
/// zero are left out: they would only add zeros, and a zero's index is arbitrary
/// (the canonical form puts it at the lowest free position), which would hide
/// rows that two columns share.
fn column_entries(m: &NmMatrix, k0: usize, g0: usize, g1: usize, col: usize) -> Vec<(f32, usize)> {
    let p = m.pattern();
    let mut out = Vec::new();
    if col < m.n() {
        // Ascending already: groups in order, and an `NmMatrix` keeps each group's
        // slot indices strictly increasing.
        for g in g0..g1 {
            for s in 0..p.n() {
                let row = g * p.m() + m.index(g, s, col);
                let v = m.value(g, s, col);
                if row < m.k() && v != 0.0 {
                    out.push((v, row - k0));
                }
            }
        }
    }
    out
}

/// Rows two columns both keep: each such slot costs one panel load for two FMAs.
fn common_rows(a: &[(f32, usize)], b: &[(f32, usize)]) -> usize {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].1.cmp(&b[j].1) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => (i, j, n) = (i + 1, j + 1, n + 1),
        }
    }
    n
}

/// The perfect matching of `cols` (an even count, at most 8) with the most common
/// rows; 105 matchings at most, so exhaustively.
fn best_pairs(
    cols: &[usize],
    score: &dyn Fn(usize, usize) -> usize,
) -> (usize, Vec<(usize, usize)>) {
    let Some((&a, rest)) = cols.split_first() else {
        return (0, Vec::new());
    };
    let mut best = (0, Vec::new());
    for (i, &b) in rest.iter().enumerate() {
        let others: Vec<usize> = rest
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(_, &c)| c)
            .collect();
        let (s, mut pairs) = best_pairs(&others, score);
        let s = s + score(a, b);
        if best.1.is_empty() || s > best.0 {
            pairs.insert(0, (a, b));
            best = (s, pairs);
        }
    }
    best
}

/// Packs one column pair: rows both keep become shared slots, the rest are paired
/// up in ascending order, and whatever one column has beyond the other becomes
/// shared slots with a zero weight on the other side.
fn pack_pair(a: &[(f32, usize)], b: &[(f32, usize)], ca: usize, cb: usize, data: &mut Vec<u32>) {
    let off = |row: usize| (row * ROWS * 4) as u32; // < 2^16, see _OFFSETS_FIT
    let (mut shared, mut only_a, mut only_b) = (Vec::new(), Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let ra = a.get(i).map_or(usize::MAX, |e| e.1);
        let rb = b.get(j).map_or(usize::MAX, |e| e.1);
        if ra == rb {
            shared.push((a[i].0, b[j].0, ra));
            (i, j) = (i + 1, j + 1);
        } else if ra < rb {
            only_a.push(a[i]);
            i += 1;
        } else {
            only_b.push(b[j]);
            j += 1;
        }
    }
    let np = only_a.len().min(only_b.len());
    shared.extend(only_a[np..].iter().map(|&(v, r)| (v, 0.0, r)));
    shared.extend(only_b[np..].iter().map(|&(v, r)| (0.0, v, r)));
    data.push(header(shared.len(), np, ca, cb));
    for (va, vb, r) in shared {
        data.extend([va.to_bits(), vb.to_bits(), off(r)]);
    }
    for (ea, eb) in only_a.iter().zip(&only_b) {
        data.extend([ea.0.to_bits(), eb.0.to_bits(), off(ea.1) | off(eb.1) << 16]);
    }
}

impl Packed {
    pub(crate) fn new(m: &NmMatrix, bias: Option<&[f32]>) -> Packed {
        let p = m.pattern();
        let (k, n) = (m.k(), m.n());
        let gpc = KC_MAX / p.m(); // groups per chunk
        let kc = gpc * p.m();
        let nkc = k.div_ceil(kc);
        let noct = n.div_ceil(OCT);
        let mut data = Vec::new();
        let mut starts = Vec::with_capacity(nkc * noct);
        for c in 0..nkc {
            let (k0, g0) = (c * kc, c * gpc);
            let g1 = (g0 + gpc).min(m.groups());
            for o in 0..noct {
                starts.push(data.len());
                let col = o * OCT;
                // Columns of the octet in pairs; an odd last column pairs with a missing one.
                let width = OCT.min(n - col).div_ceil(COLS) * COLS;
                let cols: Vec<Vec<(f32, usize)>> = (0..width)
                    .map(|j| column_entries(m, k0, g0, g1, col + j))
                    .collect();
                let idx: Vec<usize> = (0..width).collect();
                let (_, pairs) = best_pairs(&idx, &|a, b| common_rows(&cols[a], &cols[b]));
                for (a, b) in pairs {
                    pack_pair(&cols[a], &cols[b], a, b, &mut data);
                }
            }
        }
        let mut padded = vec![0.0; noct * OCT];
        if let Some(b) = bias {
            padded[..n].copy_from_slice(b);
        }
        Packed {
            k,
            n,
            kc,
            nkc,
            noct,
            starts,
            data,
            bias: padded,
        }
    }

    /// Octets of 8 output columns: the unit of a column split.
    pub(crate) fn noct(&self) -> usize {
        self.noct
    }

    pub(crate) fn bytes(&self) -> usize {
        4 * (self.data.len() + self.bias.len()) + 8 * self.starts.len()
    }

    /// Shared slots over all slots, from the pair headers.
    pub(crate) fn shared_fraction(&self) -> f64 {
        let (mut shared, mut all) = (0, 0);
        let mut at = 0;
        while at < self.data.len() {
            let h = self.data[at] as usize;
            let (s, p) = (h & 0xFFF, (h >> 12) & 0xFFF);
            (shared, all) = (shared + s, all + s + p);
            at += 1 + SLOT * (s + p);
        }
        if all == 0 {
            1.0
        } else {
            shared as f64 / all as f64
        }
    }
}
