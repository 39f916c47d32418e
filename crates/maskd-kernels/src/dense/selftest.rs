//! A one-time check of a SIMD dense kernel against the scalar kernel before it is
//! chosen: a wrong kernel (a miscompile, an erratum, a tile bug on a shape the tests
//! never met on this CPU) would not crash, it would publish wrong masks for weeks.
//! Probe shapes cover one row, row tails of every tile height, `K` not a multiple of
//! 4 (the NEON quads), and `N` tails within both halves of a panel. Costs well under a
//! millisecond, once per process.

use super::{DenseError, DenseKind, PackedGemm};

/// `(T, K, N)`.
const SHAPES: [(usize, usize, usize); 5] = [
    (1, 5, 3),
    (13, 70, 37),
    (9, 33, 65),
    (20, 17, 8),
    (7, 4, 50),
];

/// Builds the kernel under test (tests pass a deliberately wrong one).
pub(crate) type Build<'a> =
    &'a dyn Fn(&[f32], usize, usize, Option<&[f32]>) -> Result<PackedGemm, DenseError>;

/// Checks `kind` against the generic kernel; `Ok` for the generic kernel itself.
pub(crate) fn check(kind: DenseKind) -> Result<(), DenseError> {
    if kind == DenseKind::Generic {
        return Ok(());
    }
    check_with(kind, &|w, k, n, b| {
        PackedGemm::with_kernel(w, k, n, b, kind)
    })
}

pub(crate) fn check_with(kind: DenseKind, build: Build) -> Result<(), DenseError> {
    let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
    for (i, &(t, k, n)) in SHAPES.iter().enumerate() {
        let w: Vec<f32> = (0..k * n).map(|_| uniform(&mut rng)).collect();
        let x: Vec<f32> = (0..t * k).map(|_| uniform(&mut rng)).collect();
        let bias: Option<Vec<f32>> =
            (i % 2 == 0).then(|| (0..n).map(|_| uniform(&mut rng)).collect());
        let reference = PackedGemm::with_kernel(&w, k, n, bias.as_deref(), DenseKind::Generic)?;
        let tested = build(&w, k, n, bias.as_deref())?;
        let (mut want, mut got) = (vec![0.0; t * n], vec![f32::NAN; t * n]);
        reference.run(&x, t, &mut want);
        tested.run(&x, t, &mut got);
        // At most 70 products of magnitude < 1: FMA against multiply-then-add stays
        // near 1e-6; a wrong lane, row or panel is off by ~0.1 or more. "Close" is
        // written so that a NaN counts as not close.
        let close = |j: usize| (got[j] - want[j]).abs() <= 1e-4 * (1.0 + want[j].abs());
        if let Some(at) = (0..t * n).find(|&j| !close(j)) {
            return Err(DenseError::SelfTest {
                kernel: kind.name(),
                detail: format!(
                    "T={t} K={k} N={n}: row {} column {} gave {} instead of {}",
                    at / n,
                    at % n,
                    got[at],
                    want[at]
                ),
            });
        }
    }
    Ok(())
}

/// xorshift64*, mapped to [-1, 1).
fn uniform(state: &mut u64) -> f32 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    let bits = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
    bits as f32 / (1 << 23) as f32 - 1.0
}
