//! A one-time check of a SIMD kernel against the scalar kernel before it is chosen.
//!
//! The AVX-512 kernel's intrinsics have never run on an AVX-512 machine during
//! development (its logic is tested through a 16-lane emulation), and any kernel can
//! meet a miscompile or a CPU erratum. A wrong kernel would not crash: it would
//! publish wrong masks for weeks. So before a SIMD kernel is selected it multiplies
//! a few small matrices (row tails, riders, two K-chunks, an all-zero group, every
//! pattern it covers) and must agree with the generic kernel. Auto selection skips a
//! kernel that disagrees; a forced one is refused. It costs ~7 ms once per
//! process (release build, Zen 3; mostly packing the probe weights).

use super::{KernelKind, PackedSpmm};
use crate::{NmMatrix, NmPattern, SparseError};

/// `(T, K, N)`: one row and a K below one group; row tails with 1-4 riders on the
/// token kernel; K over two of its chunks; N not a multiple of any column tile.
const SHAPES: [(usize, usize, usize); 4] = [(1, 5, 3), (13, 70, 37), (51, 200, 19), (12, 33, 8)];

/// Patterns probed (those the kernel covers): 2:4 (the shipped form), the other M of
/// the column-SIMD kernels, and an odd one for the token kernels.
const PATTERNS: [(usize, usize); 5] = [(2, 4), (1, 2), (4, 8), (5, 16), (3, 7)];

/// Builds the kernel under test for a matrix and its bias.
pub(crate) type Build<'a> =
    &'a dyn Fn(&NmMatrix, Option<&[f32]>) -> Result<PackedSpmm, SparseError>;

/// Checks `kind` against the generic kernel; `Ok` for the generic kernel itself.
pub(crate) fn check(kind: KernelKind) -> Result<(), SparseError> {
    if kind == KernelKind::Generic {
        return Ok(());
    }
    check_with(kind, &|m, b| PackedSpmm::with_kernel(m, b, kind))
}

/// The check itself, with the kernel under test built by `build` (tests pass a
/// deliberately wrong one).
pub(crate) fn check_with(kind: KernelKind, build: Build) -> Result<(), SparseError> {
    let fail = |detail: String| SparseError::SelfTest {
        kernel: kind.name(),
        detail,
    };
    let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
    for (n_keep, m_group) in PATTERNS {
        let pattern = NmPattern::new(n_keep, m_group)?;
        if !kind.supports(pattern) {
            continue;
        }
        for (i, &(t, k, n)) in SHAPES.iter().enumerate() {
            let mut w: Vec<f32> = (0..k * n).map(|_| uniform(&mut rng)).collect();
            // Column 0's first group all zero: its slots still point somewhere.
            for row in 0..m_group.min(k) {
                w[row * n] = 0.0;
            }
            let x: Vec<f32> = (0..t * k).map(|_| uniform(&mut rng)).collect();
            let bias: Option<Vec<f32>> =
                (i % 2 == 0).then(|| (0..n).map(|_| uniform(&mut rng)).collect());
            let matrix = NmMatrix::from_dense_pruned_shared(&w, k, n, pattern, 1 + i % 2)?;
            let reference = PackedSpmm::with_kernel(&matrix, bias.as_deref(), KernelKind::Generic)?;
            let tested = build(&matrix, bias.as_deref())?;
            let (mut want, mut got) = (vec![0.0; t * n], vec![f32::NAN; t * n]);
            reference.run(&x, t, &mut want);
            tested.run(&x, t, &mut got);
            // Sums of at most 200 products of magnitude < 1 in another order: the
            // difference stays near 1e-5; a wrong index or lane is off by ~0.1 or more.
            // Written as "close" so that a NaN output counts as not close.
            let close = |j: usize| (got[j] - want[j]).abs() <= 1e-4 * (1.0 + want[j].abs());
            if let Some(at) = (0..t * n).find(|&j| !close(j)) {
                return Err(fail(format!(
                    "{pattern}, T={t} K={k} N={n}: row {} column {} gave {} instead of {}",
                    at / n,
                    at % n,
                    got[at],
                    want[at]
                )));
            }
        }
    }
    Ok(())
}

/// xorshift64*, mapped to [-1, 1): reproducible without a random-number crate.
fn uniform(state: &mut u64) -> f32 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    let bits = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40; // 24 bits
    bits as f32 / (1 << 23) as f32 - 1.0
}
