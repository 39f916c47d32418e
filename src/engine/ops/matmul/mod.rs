//! N:M-sparse matmuls inside tract plans (format and kernels: `crates/maskd-kernels`,
//! spec: `docs/SPARSE.md`).
//!
//! * `op.rs`: the tract ops `maskd.NmMatMul` (N:M-sparse weights) and
//!   `maskd.DenseMatMul` (dense weights, `maskd_kernels::PackedGemm`): one generic op,
//!   weights packed once, run per frame;
//! * `onnx.rs`: reading `NmMatMul` nodes (domain `maskd`) from ONNX;
//! * `bias.rs`: folding the bias `Add` after an `NmMatMul` into it;
//! * `act.rs`: fusing the GELU after an `NmMatMul` into it;
//! * `residual.rs`: fusing the residual `Add` after an `NmMatMul` into it;
//! * `rewrite.rs`: applying `engine.sparse_kernel` to a loaded graph (decompress, keep,
//!   or turn dense matmuls whose weights obey 2:4 into `NmMatMul`) and the report of
//!   which layers run sparse; with maskd's ops on, every other constant-weight matmul
//!   becomes `DenseMatMul`.
//!
//! Leaves out: pruning and writing sparse models (`maskd sparsify`).

mod act;
mod bias;
mod onnx;
mod op;
mod residual;
mod rewrite;

#[cfg(test)]
mod dense_tests;
#[cfg(test)]
mod tests;

pub use onnx::{register, DOMAIN};
pub use op::{DenseMatMul, MatMul, NmMatMul, SparseWeights, Weights};
pub use rewrite::{apply, SparseLayer, SparseReport};
