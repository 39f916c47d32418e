//! The N:M format: patterns, checking, pruning, compression and decompression.
//!
//! Weights follow ONNX `MatMul`: `W[K, N]` row-major, `y[T, N] = x[T, K] · W`.
//! Groups are `M` consecutive weights along the **input** dimension `K`, per output
//! column: column `c`, group `g` covers `W[g*M .. g*M+M, c]`. An N:M matrix keeps at
//! most `N` non-zeros per group.
//!
//! Compressed form (the on-disk / ONNX-facing layout; `docs/SPARSE.md` is the spec):
//!
//! * `G = ceil(K / M)` groups. When `K % M != 0` the last group is padded with zero
//!   rows of `W` up to `M`; a kept slot may point into that padding only if its value
//!   is `0.0` (this happens only when the tail group has fewer than `N` real rows).
//! * `values`: `f32`, logical shape `[G*N, N_out]`, row-major: element
//!   `(g*N + s) * N_out + c` is slot `s` of group `g` of column `c`.
//! * `indices`: the position (`0..M`) inside its group of each value, in the same
//!   element order, packed as `b = ceil(log2 M)` bits per index into a little-endian
//!   bit stream: index `e` occupies bits `e*b .. e*b+b`, bit `i` of the stream is bit
//!   `i % 8` of byte `i / 8`. Trailing bits of the last byte are zero.
//! * Canonical order: the `N` positions of a group are distinct and strictly
//!   increasing. Groups with fewer than `N` non-zeros keep zero values at the
//!   lowest-numbered free positions, so every group always has exactly `N` slots.
//!
//! Decompression is lossless: `to_dense(from_dense_checked(W)) == W` value for value
//! (a `-0.0` that is not kept comes back as `+0.0`).

use std::fmt;

use crate::SparseError;

/// An N:M sparsity pattern: at most `n` non-zeros in every group of `m`
/// consecutive weights along the input dimension. `1 <= n < m <= 16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NmPattern {
    n: u8,
    m: u8,
}

impl NmPattern {
    /// The 2:4 pattern (Ampere-style), the one the SIMD kernels are tuned for.
    pub const TWO_FOUR: NmPattern = NmPattern { n: 2, m: 4 };

    /// Largest supported group size: indices fit 4 bits and the 16-lane kernels
    /// select inputs from one 16-float register.
    pub const MAX_M: usize = 16;

    pub fn new(n: usize, m: usize) -> Result<Self, SparseError> {
        if n == 0 || n >= m || m > Self::MAX_M {
            return Err(SparseError::BadPattern { n, m });
        }
        Ok(NmPattern {
            n: n as u8,
            m: m as u8,
        })
    }

    /// Kept values per group.
    pub fn n(self) -> usize {
        self.n as usize
    }

    /// Group size.
    pub fn m(self) -> usize {
        self.m as usize
    }

    /// Bits per packed index: `ceil(log2 M)` (2 for 2:4, 4 for M = 16).
    pub fn index_bits(self) -> usize {
        (usize::BITS - (self.m() - 1).leading_zeros()) as usize
    }

    /// Number of groups along an input dimension of `k`: `ceil(k / M)`.
    pub fn groups(self, k: usize) -> usize {
        k.div_ceil(self.m())
    }

    /// Checks that dense `w[K, N]` (row-major) keeps at most `N` non-zeros per
    /// group. `NaN` counts as non-zero, `-0.0` as zero.
    pub fn check(self, w: &[f32], k: usize, n: usize) -> Result<(), SparseError> {
        check_shape(w.len(), k, n)?;
        let m = self.m();
        for c in 0..n {
            for g in 0..self.groups(k) {
                let (start, end) = (g * m, ((g + 1) * m).min(k));
                let nonzeros = (start..end).filter(|&r| w[r * n + c] != 0.0).count();
                if nonzeros > self.n() {
                    return Err(SparseError::NotNm {
                        col: c,
                        start,
                        end,
                        nonzeros,
                        allowed: self.n(),
                        pattern: self.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for NmPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.n, self.m)
    }
}

fn check_shape(len: usize, k: usize, n: usize) -> Result<(), SparseError> {
    if k == 0 || n == 0 || k.checked_mul(n) != Some(len) {
        return Err(SparseError::ShapeMismatch { len, k, n });
    }
    Ok(())
}

/// A compressed N:M weight matrix `W[K, N]` (see the module docs for the layout).
#[derive(Debug, Clone, PartialEq)]
pub struct NmMatrix {
    pattern: NmPattern,
    k: usize,
    n: usize,
    values: Vec<f32>,
    indices: Vec<u8>,
}

impl NmMatrix {
    /// Length of `values` for a `[k, n]` matrix: `ceil(k/M) * N * n`.
    pub fn values_len(pattern: NmPattern, k: usize, n: usize) -> usize {
        pattern.groups(k) * pattern.n() * n
    }

    /// Length in bytes of the packed `indices`: `ceil(values_len * bits / 8)`.
    pub fn indices_len(pattern: NmPattern, k: usize, n: usize) -> usize {
        (Self::values_len(pattern, k, n) * pattern.index_bits()).div_ceil(8)
    }

    /// Magnitude-prunes dense `w[K, N]` (row-major) to the pattern: per group keep
    /// the `N` largest `|w|`; ties go to the lower position, padding positions of the
    /// tail group count as `0.0` and lose ties against real rows; `NaN` counts as the
    /// largest magnitude. Never fails on a well-shaped input.
    pub fn from_dense_pruned(
        w: &[f32],
        k: usize,
        n: usize,
        pattern: NmPattern,
    ) -> Result<NmMatrix, SparseError> {
        Self::from_dense_pruned_shared(w, k, n, pattern, 1)
    }

    /// Magnitude-prunes like [`from_dense_pruned`](Self::from_dense_pruned), but
    /// every run of `share` consecutive output columns (the last run may be shorter)
    /// keeps the same positions in each group: those with the largest `|w|` summed
    /// over the run. The result is an ordinary N:M matrix; the x86 token kernel runs
    /// column pairs that share their rows with one input load per two FMAs
    /// (docs/SPARSE.md section 3), at some cost in accuracy that learned masks
    /// can recover. `share` 0 is taken as 1.
    pub fn from_dense_pruned_shared(
        w: &[f32],
        k: usize,
        n: usize,
        pattern: NmPattern,
        share: usize,
    ) -> Result<NmMatrix, SparseError> {
        check_shape(w.len(), k, n)?;
        let share = share.max(1);
        let (pn, pm, bits) = (pattern.n(), pattern.m(), pattern.index_bits());
        let groups = pattern.groups(k);
        let mut values = vec![0f32; Self::values_len(pattern, k, n)];
        let mut indices = vec![0u8; Self::indices_len(pattern, k, n)];
        let mut order = [0usize; NmPattern::MAX_M];
        for g in 0..groups {
            for c0 in (0..n).step_by(share) {
                let run = c0..(c0 + share).min(n);
                let at = |pos: usize, c: usize| {
                    let r = g * pm + pos;
                    if r < k {
                        w[r * n + c]
                    } else {
                        0.0
                    }
                };
                let score = |pos: usize| run.clone().map(|c| at(pos, c).abs()).sum::<f32>();
                let order = &mut order[..pm];
                for (i, o) in order.iter_mut().enumerate() {
                    *o = i;
                }
                // Stable sort by descending magnitude: equal magnitudes keep the
                // lower position first, which is the documented tie-break.
                order.sort_by(|&a, &b| score(b).total_cmp(&score(a)));
                let kept = &mut order[..pn];
                kept.sort_unstable();
                for c in run.clone() {
                    for (s, &pos) in kept.iter().enumerate() {
                        let e = (g * pn + s) * n + c;
                        values[e] = at(pos, c);
                        put_bits(&mut indices, e, bits, pos);
                    }
                }
            }
        }
        Ok(NmMatrix {
            pattern,
            k,
            n,
            values,
            indices,
        })
    }

    /// Compresses dense `w[K, N]` that already obeys the pattern, without losing
    /// anything; [`SparseError::NotNm`] names the first group that does not obey.
    pub fn from_dense_checked(
        w: &[f32],
        k: usize,
        n: usize,
        pattern: NmPattern,
    ) -> Result<NmMatrix, SparseError> {
        pattern.check(w, k, n)?;
        // On an obeying matrix pruning keeps every non-zero (they outrank zeros)
        // and fills with the lowest free positions: exactly the canonical form.
        Self::from_dense_pruned(w, k, n, pattern)
    }

    /// Takes a compressed matrix produced elsewhere (e.g. read from ONNX
    /// initialisers) and validates lengths, index order and padding.
    pub fn from_parts(
        pattern: NmPattern,
        k: usize,
        n: usize,
        values: Vec<f32>,
        indices: Vec<u8>,
    ) -> Result<NmMatrix, SparseError> {
        if k == 0 || n == 0 {
            return Err(SparseError::ShapeMismatch {
                len: values.len(),
                k,
                n,
            });
        }
        let expected = Self::values_len(pattern, k, n);
        if values.len() != expected {
            return Err(SparseError::BadLength {
                what: "values",
                len: values.len(),
                expected,
            });
        }
        let expected = Self::indices_len(pattern, k, n);
        if indices.len() != expected {
            return Err(SparseError::BadLength {
                what: "indices",
                len: indices.len(),
                expected,
            });
        }
        let m = NmMatrix {
            pattern,
            k,
            n,
            values,
            indices,
        };
        let pn = pattern.n();
        for g in 0..pattern.groups(k) {
            for c in 0..n {
                let idx: Vec<usize> = (0..pn).map(|s| m.index(g, s, c)).collect();
                if idx.windows(2).any(|p| p[0] >= p[1]) || idx[pn - 1] >= pattern.m() {
                    return Err(SparseError::BadIndexOrder {
                        col: c,
                        group: g,
                        indices: idx,
                    });
                }
                for (s, &i) in idx.iter().enumerate() {
                    let v = m.value(g, s, c);
                    if g * pattern.m() + i >= k && v != 0.0 {
                        return Err(SparseError::PaddingNotZero {
                            col: c,
                            group: g,
                            index: i,
                            k,
                            value: v.to_string(),
                        });
                    }
                }
            }
        }
        Ok(m)
    }

    /// Decompresses to dense `W[K, N]`, row-major.
    pub fn to_dense(&self) -> Vec<f32> {
        let (k, n) = (self.k, self.n);
        let mut w = vec![0f32; k * n];
        for g in 0..self.groups() {
            for s in 0..self.pattern.n() {
                for c in 0..n {
                    let r = g * self.pattern.m() + self.index(g, s, c);
                    if r < k {
                        w[r * n + c] = self.value(g, s, c);
                    }
                }
            }
        }
        w
    }

    pub fn pattern(&self) -> NmPattern {
        self.pattern
    }

    /// Input dimension (rows of `W`).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Output dimension (columns of `W`).
    pub fn n(&self) -> usize {
        self.n
    }

    /// `ceil(K / M)`.
    pub fn groups(&self) -> usize {
        self.pattern.groups(self.k)
    }

    /// Kept values, logical shape `[groups * N, n]`, row-major.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// Packed indices (see the module docs for the bit order).
    pub fn indices(&self) -> &[u8] {
        &self.indices
    }

    /// Position (`0..M`) inside group `group` of slot `slot` of column `col`.
    pub fn index(&self, group: usize, slot: usize, col: usize) -> usize {
        let e = (group * self.pattern.n() + slot) * self.n + col;
        get_bits(&self.indices, e, self.pattern.index_bits())
    }

    /// Value of slot `slot` of group `group` of column `col`.
    pub fn value(&self, group: usize, slot: usize, col: usize) -> f32 {
        self.values[(group * self.pattern.n() + slot) * self.n + col]
    }

    /// Bytes of the dense `f32` matrix: `4 * K * N`.
    pub fn dense_bytes(&self) -> usize {
        4 * self.k * self.n
    }

    /// Bytes of the compressed form: `4 * values + packed index bytes`
    /// (for 2:4 and K % 4 == 0: `K*N*(2*4 + 2*2/8)/4`, i.e. 53.1% of dense).
    pub fn compressed_bytes(&self) -> usize {
        4 * self.values.len() + self.indices.len()
    }
}

fn get_bits(bytes: &[u8], e: usize, bits: usize) -> usize {
    let bit = e * bits;
    let (byte, shift) = (bit / 8, bit % 8);
    let lo = bytes[byte] as usize;
    let hi = bytes.get(byte + 1).copied().unwrap_or(0) as usize;
    ((lo | hi << 8) >> shift) & ((1 << bits) - 1)
}

fn put_bits(bytes: &mut [u8], e: usize, bits: usize, v: usize) {
    debug_assert!(v < 1 << bits);
    let bit = e * bits;
    let (byte, shift) = (bit / 8, bit % 8);
    let word = v << shift;
    bytes[byte] |= word as u8;
    if shift + bits > 8 {
        bytes[byte + 1] |= (word >> 8) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pattern_strategy() -> impl Strategy<Value = NmPattern> {
        (2usize..=16)
            .prop_flat_map(|m| (1..m, Just(m)))
            .prop_map(|(n, m)| NmPattern::new(n, m).unwrap())
    }

    /// Dense weights with many exact zeros and repeated magnitudes (tie-breaks).
    fn weights(len: usize) -> impl Strategy<Value = Vec<f32>> {
        proptest::collection::vec(
            prop_oneof![
                3 => Just(0.0f32),
                1 => Just(1.0f32),
                1 => Just(-1.0f32),
                4 => -4.0f32..4.0,
            ],
            len,
        )
    }

    fn case() -> impl Strategy<Value = (NmPattern, usize, usize, Vec<f32>)> {
        (pattern_strategy(), 1usize..40, 1usize..20)
            .prop_flat_map(|(p, k, n)| (Just(p), Just(k), Just(n), weights(k * n)))
    }

    proptest! {
        #[test]
        fn pruned_obeys_and_roundtrips((p, k, n, w) in case()) {
            let s = NmMatrix::from_dense_pruned(&w, k, n, p).unwrap();
            let d = s.to_dense();
            p.check(&d, k, n).unwrap();
            // Pruning only zeroes weights, and keeps the N largest magnitudes.
            for (a, b) in w.iter().zip(&d) {
                prop_assert!(*b == 0.0 || a.to_bits() == b.to_bits());
            }
            for c in 0..n {
                for g in 0..p.groups(k) {
                    let rows = g * p.m()..((g + 1) * p.m()).min(k);
                    let min_kept = rows.clone().filter(|&r| d[r * n + c] != 0.0)
                        .map(|r| w[r * n + c].abs()).fold(f32::INFINITY, f32::min);
                    let max_dropped = rows.filter(|&r| d[r * n + c] == 0.0)
                        .map(|r| w[r * n + c].abs()).fold(0.0, f32::max);
                    prop_assert!(max_dropped <= min_kept);
                }
            }
            // Checked compression of the pruned matrix is lossless and identical.
            let s2 = NmMatrix::from_dense_checked(&d, k, n, p).unwrap();
            prop_assert_eq!(&s2, &s);
            prop_assert_eq!(s2.to_dense(), d);
            // Parts survive validation.
            let s3 = NmMatrix::from_parts(p, k, n, s.values().to_vec(), s.indices().to_vec()).unwrap();
            prop_assert_eq!(s3, s);
        }

        #[test]
        fn shared_pruning_shares_rows((p, k, n, w) in case(), share in 1usize..5) {
            let s = NmMatrix::from_dense_pruned_shared(&w, k, n, p, share).unwrap();
            for g in 0..p.groups(k) {
                for c in 0..n {
                    // Same kept positions as the first column of the run.
                    let c0 = c - c % share;
                    for slot in 0..p.n() {
                        prop_assert_eq!(s.index(g, slot, c), s.index(g, slot, c0));
                    }
                    // Kept values are the dense ones.
                    for slot in 0..p.n() {
                        let r = g * p.m() + s.index(g, slot, c);
                        let want = if r < k { w[r * n + c] } else { 0.0 };
                        prop_assert_eq!(s.value(g, slot, c).to_bits(), want.to_bits());
                    }
                }
            }
            // A run of one column is plain magnitude pruning.
            if share == 1 {
                prop_assert_eq!(&s, &NmMatrix::from_dense_pruned(&w, k, n, p).unwrap());
            }
        }

        #[test]
        fn checked_accepts_exactly_obeying((p, k, n, w) in case()) {
            let obeys = p.check(&w, k, n).is_ok();
            match NmMatrix::from_dense_checked(&w, k, n, p) {
                Ok(s) => {
                    prop_assert!(obeys);
                    prop_assert_eq!(s.to_dense(), w);
                }
                Err(SparseError::NotNm { nonzeros, allowed, .. }) => {
                    prop_assert!(!obeys);
                    prop_assert!(nonzeros > allowed);
                }
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }

        #[test]
        fn byte_counts((p, k, n, w) in case()) {
            let s = NmMatrix::from_dense_pruned(&w, k, n, p).unwrap();
            let slots = p.groups(k) * p.n() * n;
            prop_assert_eq!(s.values().len(), slots);
            prop_assert_eq!(s.indices().len(), (slots * p.index_bits()).div_ceil(8));
            prop_assert_eq!(s.dense_bytes(), 4 * k * n);
            prop_assert_eq!(s.compressed_bytes(), 4 * slots + s.indices().len());
        }
    }

    #[test]
    fn index_bits() {
        let bits = |n, m| NmPattern::new(n, m).unwrap().index_bits();
        assert_eq!(bits(1, 2), 1);
        assert_eq!(bits(2, 3), 2);
        assert_eq!(bits(2, 4), 2);
        assert_eq!(bits(4, 5), 3);
        assert_eq!(bits(4, 8), 3);
        assert_eq!(bits(2, 9), 4);
        assert_eq!(bits(8, 16), 4);
        assert!(NmPattern::new(0, 4).is_err());
        assert!(NmPattern::new(4, 4).is_err());
        assert!(NmPattern::new(2, 17).is_err());
    }

    #[test]
    fn two_four_layout_and_bytes() {
        // W[8, 2]: column 0 keeps rows 1,3 then 4,6; column 1 keeps rows 0,2 and 5,7.
        #[rustfmt::skip]
        let w = [
            0.0, 5.0,
            1.0, 0.0,
            0.0, 6.0,
            2.0, 0.0,
            3.0, 0.0,
            0.0, 7.0,
            4.0, 0.0,
            0.0, 8.0,
        ];
        let s = NmMatrix::from_dense_checked(&w, 8, 2, NmPattern::TWO_FOUR).unwrap();
        assert_eq!(s.values(), &[1.0, 5.0, 2.0, 6.0, 3.0, 7.0, 4.0, 8.0]);
        // Indices in element order: (1,0), (3,2), (0,1), (2,3) -> 2 bits each, LSB first.
        // byte 0 = 1 | 0<<2 | 3<<4 | 2<<6 = 0b10_11_00_01; byte 1 = 0 | 1<<2 | 2<<4 | 3<<6.
        assert_eq!(s.indices(), &[0b1011_0001, 0b1110_0100]);
        assert_eq!(s.dense_bytes(), 64);
        assert_eq!(s.compressed_bytes(), 32 + 2);
        assert_eq!(s.to_dense(), w);
    }

    #[test]
    fn tail_group_is_padded() {
        // K = 5 with 2:4: the second group has one real row; its second slot points
        // into the padding with value 0.
        let w = [1.0, 2.0, 3.0, 0.0, 9.0];
        let s = NmMatrix::from_dense_pruned(&w, 5, 1, NmPattern::TWO_FOUR).unwrap();
        assert_eq!(s.values(), &[2.0, 3.0, 9.0, 0.0]);
        assert_eq!((s.index(1, 0, 0), s.index(1, 1, 0)), (0, 1));
        assert_eq!(s.to_dense(), vec![0.0, 2.0, 3.0, 0.0, 9.0]);
        // A non-zero in the padding is refused.
        let mut bad = s.values().to_vec();
        bad[3] = 1.0;
        assert!(matches!(
            NmMatrix::from_parts(NmPattern::TWO_FOUR, 5, 1, bad, s.indices().to_vec()),
            Err(SparseError::PaddingNotZero { index: 1, .. })
        ));
    }

    #[test]
    fn not_nm_names_the_group() {
        let w = [1.0, 1.0, 1.0, 0.0];
        let e = NmMatrix::from_dense_checked(&w, 4, 1, NmPattern::TWO_FOUR).unwrap_err();
        assert_eq!(
            e.to_string(),
            "weight column 0, input rows 0..4: 3 non-zeros, pattern 2:4 allows 2"
        );
    }

    #[test]
    fn from_parts_rejects_bad_order_and_lengths() {
        let p = NmPattern::TWO_FOUR;
        // Slots (2, 1) are not increasing.
        let idx = vec![0b0110];
        let e = NmMatrix::from_parts(p, 4, 1, vec![1.0, 2.0], idx).unwrap_err();
        assert!(matches!(e, SparseError::BadIndexOrder { .. }), "{e}");
        let e = NmMatrix::from_parts(p, 4, 1, vec![1.0], vec![0]).unwrap_err();
        assert!(
            matches!(e, SparseError::BadLength { what: "values", .. }),
            "{e}"
        );
        // M = 3 uses 2 bits, so index 3 is representable but out of range.
        let p3 = NmPattern::new(1, 3).unwrap();
        let e = NmMatrix::from_parts(p3, 3, 1, vec![1.0], vec![3]).unwrap_err();
        assert!(matches!(e, SparseError::BadIndexOrder { .. }), "{e}");
    }
}
