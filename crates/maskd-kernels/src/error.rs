//! The crate's one error type. Variants carry the offending values so a caller
//! can print them without re-deriving context.

/// Errors from building, checking or packing N:M sparse weights.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SparseError {
    /// `N:M` outside `1 <= N < M <= 16`.
    #[error("invalid N:M pattern {n}:{m}: need 1 <= N < M <= 16")]
    BadPattern { n: usize, m: usize },

    /// A dense matrix whose length is not `K * N`, or a zero dimension.
    #[error("dense weight has {len} values, expected K*N = {k}*{n} (K, N >= 1)")]
    ShapeMismatch { len: usize, k: usize, n: usize },

    /// A group holds more non-zeros than the pattern allows.
    #[error(
        "weight column {col}, input rows {start}..{end}: {nonzeros} non-zeros, \
         pattern {pattern} allows {allowed}"
    )]
    NotNm {
        col: usize,
        start: usize,
        end: usize,
        nonzeros: usize,
        allowed: usize,
        pattern: String,
    },

    /// `values` or `indices` of a compressed matrix have the wrong length.
    #[error("compressed {what} has {len} elements, expected {expected}")]
    BadLength {
        what: &'static str,
        len: usize,
        expected: usize,
    },

    /// Kept indices of a group are not strictly increasing (the canonical order).
    #[error(
        "weight column {col}, group {group}: kept indices {indices:?} are not strictly increasing"
    )]
    BadIndexOrder {
        col: usize,
        group: usize,
        indices: Vec<usize>,
    },

    /// A kept slot points past `K` (into the tail group's padding) with a non-zero value.
    #[error("weight column {col}, group {group}: index {index} points past K = {k} but its value {value} is not 0")]
    PaddingNotZero {
        col: usize,
        group: usize,
        index: usize,
        k: usize,
        value: String,
    },

    /// A bias whose length is not `N`.
    #[error("bias has {len} values, expected N = {n}")]
    BiasLength { len: usize, n: usize },

    /// `MASKD_SPARSE_KERNEL` (or an explicit request) names an unknown kernel.
    #[error("unknown sparse kernel `{requested}` (expected one of generic, avx2, avx2tok, avx512, neon, neontok)")]
    UnknownKernel { requested: String },

    /// The requested kernel cannot run here (CPU feature missing, other architecture)
    /// or does not cover the pattern.
    #[error("sparse kernel `{kernel}` unavailable: {reason}")]
    KernelUnavailable {
        kernel: &'static str,
        reason: String,
    },

    /// A SIMD kernel disagreed with the scalar kernel on its start-up probe.
    #[error("sparse kernel `{kernel}` failed its self-test against the scalar kernel: {detail}")]
    SelfTest {
        kernel: &'static str,
        detail: String,
    },
}
