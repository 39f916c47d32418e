//! The shape of one fused attention call, shared by the dispatch and every kernel
//! (so the per-architecture kernels depend on it, not on the dispatch).

/// Shape of one fused attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub batch: usize,
    pub tokens: usize,
    pub heads: usize,
    pub dim: usize,
}

impl Geometry {
    /// Floats in one token's `qkv` row.
    pub fn qkv_row(&self) -> usize {
        3 * self.heads * self.dim
    }

    /// Floats in one token's output row.
    pub fn out_row(&self) -> usize {
        self.heads * self.dim
    }

    /// Output rows, one per (batch, token).
    pub fn rows(&self) -> usize {
        self.batch * self.tokens
    }

    /// Multiply-adds of the two products, for threading decisions.
    pub fn work(&self) -> usize {
        2 * self.rows() * self.tokens * self.out_row()
    }
}
