//! maskd's own tract ops and the graph rewrites that put them in place of tract's nodes.
//!
//! One op (or op family) per folder: the op, the pattern that proves a subgraph
//! equivalent to it, its per-architecture kernel files and its tests. Every rewrite is
//! applied from one place, [`fuse`], in one order, after tract has decluttered a graph;
//! a rewrite that cannot prove its pattern leaves tract's nodes. Kernels the ops share
//! with other crates (the N:M matmuls) live in `crates/maskd-kernels`.
//!
//! Leaves out: which graphs are loaded and how they are run (the pipeline, `super`).

pub mod attention;
pub mod gelu;
pub mod graph;
pub mod layernorm;
pub mod matmul;
pub mod mulsum;
pub mod parallel;
pub mod upsample;

use tract_core::internal::*;

/// Which of the fusing rewrites run (the N:M rewrite is chosen apart, by
/// `engine.sparse_kernel`, because it changes which weights are kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fusions {
    /// [`upsample::Upsample2d`] for whole-factor bilinear `Resize`.
    pub upsample: bool,
    /// [`attention::Attention`], [`gelu::FastGelu`], [`layernorm::LayerNorm`] and
    /// [`mulsum::MulSum`] (`engine.fused_ops`).
    pub fused_ops: bool,
}

/// Applies the rewrites `fusions` selects to `model`, in order; `shown` names the
/// graph in messages. Each rewrite reports how many of its ops it placed (logged).
pub fn fuse(model: &mut TypedModel, fusions: Fusions, shown: &str) -> TractResult<()> {
    type Rewrite = fn(&mut TypedModel) -> TractResult<usize>;
    let mut rewrites: Vec<(Rewrite, &str)> = vec![];
    if fusions.upsample {
        rewrites.push((upsample::apply, "Upsample2d"));
    }
    if fusions.fused_ops {
        rewrites.extend([
            (attention::apply as Rewrite, "Attention"),
            (gelu::apply, "FastGelu"),
            (layernorm::apply, "LayerNorm"),
            (mulsum::apply, "MulSum"),
        ]);
    }
    for (apply, op) in rewrites {
        let n = apply(model).with_context(|| format!("{shown}: rewriting to {op}"))?;
        log::debug!("{shown}: {n} {op} nodes");
    }
    Ok(())
}
