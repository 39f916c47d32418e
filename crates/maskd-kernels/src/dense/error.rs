//! Errors from packing dense weights or choosing a dense kernel.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DenseError {
    /// A weight whose length is not `K * N`, or a zero dimension.
    #[error("dense weight has {len} values, expected K*N = {k}*{n} (K, N >= 1)")]
    Shape { len: usize, k: usize, n: usize },

    #[error("bias has {len} values, expected N = {n}")]
    BiasLength { len: usize, n: usize },

    /// `MASKD_DENSE_KERNEL` names an unknown kernel.
    #[error("unknown dense kernel `{requested}` (expected one of generic, avx2, avx512, neon)")]
    UnknownKernel { requested: String },

    /// The kernel cannot run here (CPU feature missing, other architecture).
    #[error("dense kernel `{kernel}` unavailable: {reason}")]
    KernelUnavailable {
        kernel: &'static str,
        reason: String,
    },

    /// A SIMD kernel disagreed with the scalar kernel on its start-up probe.
    #[error("dense kernel `{kernel}` failed its self-test against the scalar kernel: {detail}")]
    SelfTest {
        kernel: &'static str,
        detail: String,
    },
}
