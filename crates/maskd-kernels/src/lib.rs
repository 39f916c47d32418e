//! maskd's matmul kernels for constant weights: dense, and N:M structured-sparse with
//! its weight format.
//!
//! This crate owns three things:
//!
//! * the **dense kernels** ([`dense`], [`PackedGemm`]): `y[T,N] = x[T,K] · W (+ bias)`
//!   with `W` packed once into panels; AVX-512F, AVX2+FMA, NEON and a scalar
//!   reference, chosen at run time after a self-test (`MASKD_DENSE_KERNEL` forces one);
//! * the **format** ([`NmPattern`], [`NmMatrix`]): checking a dense weight matrix
//!   against an N:M pattern, magnitude pruning to it, the compressed
//!   values + packed-indices representation that `maskd.NmMatMul` stores as ONNX
//!   initialisers (byte layout in `docs/SPARSE.md`), and lossless decompression;
//! * the **sparse kernels** ([`PackedSpmm`]): `y[T,N] = x[T,K] · W (+ bias)` with `W` packed
//!   once into a kernel-specific layout. A safe scalar kernel handles every
//!   pattern; AVX2+FMA, AVX-512F (x86-64) and NEON (aarch64) kernels are overlaid
//!   at run time when the CPU has them (see [`best`], [`selected`] and the
//!   `MASKD_SPARSE_KERNEL` knob).
//!
//! It leaves out tract integration (the custom op lives in the daemon crate),
//! and thread pools (callers split rows or columns, see [`PackedSpmm::run_parallel`]
//! and the `run_column_parts` of both kernels). The benchmarks (`benches/gemm.rs`,
//! `benches/spmm.rs`) compare both against tract's dense matmul.
//!
//! ```
//! use maskd_kernels::{NmMatrix, NmPattern, PackedSpmm};
//! let (k, n) = (8, 3);
//! let w: Vec<f32> = (0..k * n).map(|i| i as f32 - 10.0).collect(); // W[K,N], row-major
//! let sparse = NmMatrix::from_dense_pruned(&w, k, n, NmPattern::TWO_FOUR).unwrap();
//! assert!(sparse.compressed_bytes() < sparse.dense_bytes());
//! let mm = PackedSpmm::new(&sparse, None).unwrap();
//! let x = vec![1.0f32; 2 * k]; // x[T=2, K]
//! let mut y = vec![0.0f32; 2 * n];
//! mm.run(&x, 2, &mut y);
//! let dense = sparse.to_dense();
//! let want: f32 = (0..k).map(|i| dense[i * n]).sum();
//! assert!((y[0] - want).abs() < 1e-4);
//! ```

pub mod dense;
mod error;
mod format;
mod kernels;

pub use dense::{DenseError, DenseKind, PackedGemm};
pub use error::SparseError;
pub use format::{NmMatrix, NmPattern};
pub use kernels::{
    best, generic, kernel_name, selected, skipped_kernels, KernelKind, PackedSpmm, KERNEL_ENV,
};
