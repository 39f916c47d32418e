//! Token pruning between the segmenter's blocks: a `[pruning]` schedule checked against
//! the model ([`Plan::resolve`]) and the [`Pruner`], the [`TokenPolicy`] that drops
//! tokens where the schedule says and restores the full grid for the decoder.
//!
//! A token dropped after block `b` keeps its features from block `b` (DToP): the
//! decoder sees the full `N`-token grid, the kept tokens at their last block's
//! features and each dropped one as it was when dropped. With `merge`, each step's
//! dropped tokens are also folded into one context token (their features averaged,
//! weighted by the attention they received) that runs on through the remaining blocks
//! so the kept tokens can still attend to what was dropped; it is discarded before the
//! decoder, which has no slot for it.
//!
//! Every buffer is sized once when the pruner is built (the token counts of each step
//! follow from the schedule alone): a frame allocates nothing here. The kept tokens
//! go to tract as `Arc`s that tract drops after each run, so the next frame writes the
//! same memory again (as the segmenter's image input). Leaves out: running the graphs
//! (`stages.rs`), ranking tokens (`select.rs`).

mod select;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tract_onnx::prelude::*;

use crate::config::{check_schedule, PruningConfig, TokenScorer};
use crate::engine::manifest::Manifest;
use crate::engine::stages::TokenPolicy;
use crate::engine::timing::AllocCounter;

/// One step of a schedule, with its token counts worked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub after_block: usize,
    /// Image tokens entering the step (the context token not counted).
    pub tokens_in: usize,
    /// Image tokens kept.
    pub kept: usize,
    /// Tokens into the next block: `kept`, plus one with a context token.
    pub tokens_out: usize,
}

/// A `[pruning]` section checked against a model: what the blocks will see.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub scorer: TokenScorer,
    pub merge: bool,
    /// Image tokens out of `embed` and into the decoder.
    pub tokens: usize,
    pub width: usize,
    pub blocks: usize,
}

impl Plan {
    /// Checks `cfg` against `manifest`'s `[stages]`; `None` when there is no schedule.
    /// Errors name the manifest, the key and the reason.
    pub fn resolve(cfg: &PruningConfig, manifest: &Manifest) -> anyhow::Result<Option<Plan>> {
        if cfg.is_off() {
            return Ok(None);
        }
        let shown = manifest.path.display();
        let stages = manifest.stages.as_ref().with_context(|| {
            format!(
                "{shown}: pruning.schedule: the model has no [stages] section, so its \
                 tokens cannot be pruned (remove [pruning] or export the stage graphs, \
                 docs/MANIFEST.md)"
            )
        })?;
        check_schedule(&cfg.schedule)
            .map_err(|e| anyhow::anyhow!("{shown}: pruning.schedule{e}"))?;
        let blocks = stages.blocks.len();
        let mut steps = Vec::with_capacity(cfg.schedule.len());
        let mut tokens = stages.tokens;
        let mut context = false;
        for (i, step) in cfg.schedule.iter().enumerate() {
            // After the last block only the decoder remains, and it gets the full grid
            // back: a step there would cost a gather and change nothing.
            if step.after_block + 1 >= blocks {
                anyhow::bail!(
                    "{shown}: pruning.schedule[{i}].after_block: {} is beyond the model's \
                     depth: it has {blocks} blocks (0..={}), and tokens can be dropped \
                     only before a block that follows, so after block {} at the latest",
                    step.after_block,
                    blocks - 1,
                    blocks.saturating_sub(2)
                );
            }
            let kept = (step.keep as f64 * tokens as f64).round() as usize;
            if kept < 1 {
                anyhow::bail!(
                    "{shown}: pruning.schedule[{i}].keep: {} of the {tokens} tokens entering \
                     block {} is {kept} tokens; at least 1 must stay",
                    step.keep,
                    step.after_block + 1
                );
            }
            context |= cfg.merge && kept < tokens;
            steps.push(Step {
                after_block: step.after_block,
                tokens_in: tokens,
                kept,
                tokens_out: kept + usize::from(context),
            });
            tokens = kept;
        }
        Ok(Some(Plan {
            steps,
            scorer: cfg.scorer,
            merge: cfg.merge,
            tokens: stages.tokens,
            width: stages.width,
            blocks,
        }))
    }

    /// Tokens entering each block, in block order (what the encoder's cost follows).
    pub fn block_tokens(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.blocks);
        let mut tokens = self.tokens;
        let mut steps = self.steps.iter().peekable();
        for block in 0..self.blocks {
            out.push(tokens);
            if let Some(step) = steps.next_if(|s| s.after_block == block) {
                tokens = step.tokens_out;
            }
        }
        out
    }
}

/// The [`TokenPolicy`] of a [`Plan`], with every buffer it needs.
#[derive(Debug)]
pub struct Pruner {
    plan: Plan,
    /// The tokens into the block after each step, `[1, tokens_out, C]`.
    kept: Vec<Arc<Tensor>>,
    /// The decoder's grid `[1, N, C]`: dropped tokens land here as they are dropped.
    full: Arc<Tensor>,
    /// Grid position of each image token now in flight (capacity `N`).
    positions: Vec<usize>,
    /// `positions` of the next block, built beside it.
    next_positions: Vec<usize>,
    scores: Vec<f32>,
    order: Vec<u32>,
    /// The context token's features and the attention mass merged into it.
    context: Vec<f32>,
    context_weight: f32,
    has_context: bool,
    /// Next step of `plan.steps` this frame.
    step: usize,
    /// This frame's time in the pruner (scoring, top-k, gather, scatter).
    pub(crate) select_ns: u64,
    /// This frame's heap allocations in the pruner, with a counter installed.
    pub(crate) select_allocs: Option<u64>,
    alloc_counter: Option<AllocCounter>,
}

impl Pruner {
    pub fn new(plan: Plan) -> anyhow::Result<Pruner> {
        let (n, c) = (plan.tokens, plan.width);
        let kept = plan
            .steps
            .iter()
            .map(|s| Tensor::zero::<f32>(&[1, s.tokens_out, c]).map(Arc::new))
            .collect::<TractResult<Vec<_>>>()?;
        Ok(Pruner {
            kept,
            full: Arc::new(Tensor::zero::<f32>(&[1, n, c])?),
            positions: Vec::with_capacity(n),
            next_positions: Vec::with_capacity(n),
            scores: vec![0.0; n],
            order: vec![0; n],
            context: vec![0.0; c],
            context_weight: 0.0,
            has_context: false,
            step: 0,
            select_ns: 0,
            select_allocs: None,
            alloc_counter: None,
            plan,
        })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub(crate) fn set_alloc_counter(&mut self, counter: AllocCounter) {
        self.alloc_counter = Some(counter);
    }

    /// Times and counts `work` into this frame's figures.
    fn measured<R>(&mut self, work: impl FnOnce(&mut Pruner) -> R) -> R {
        let start = Instant::now();
        let before = self.alloc_counter.and_then(|count| count());
        let r = work(self);
        let after = self.alloc_counter.and_then(|count| count());
        if let Some(n) = crate::engine::timing::allocs_between(before, after) {
            *self.select_allocs.get_or_insert(0) += n;
        }
        self.select_ns += u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        r
    }

    /// Drops tokens after `block` as step `self.step` says.
    fn prune(&mut self, block: usize, tokens: &[f32], attention: &[f32]) -> anyhow::Result<()> {
        let step = self.plan.steps[self.step];
        let c = self.plan.width;
        let real = self.positions.len();
        anyhow::ensure!(
            real == step.tokens_in
                && tokens.len() == (real + usize::from(self.has_context)) * c
                && attention.len() * c == tokens.len(),
            "after block {block}: {} token values and {} attention values for {real} tokens \
             of width {c}",
            tokens.len(),
            attention.len()
        );
        select::score(
            self.plan.scorer,
            tokens,
            c,
            attention,
            block,
            &mut self.scores[..real],
        );
        select::top_k(&self.scores[..real], step.kept, &mut self.order[..real]);

        // DToP: each dropped token's features, as of this block, wait in the grid.
        let full = writable(&mut self.full)?;
        for &j in &self.order[step.kept..real] {
            let (j, at) = (j as usize, self.positions[j as usize]);
            full[at * c..(at + 1) * c].copy_from_slice(&tokens[j * c..(j + 1) * c]);
        }
        if self.plan.merge && step.kept < real {
            self.merge(tokens, attention, step.kept);
        } else if self.has_context {
            // Nothing dropped this step: the context token goes on as the block left it.
            self.context
                .copy_from_slice(&tokens[real * c..(real + 1) * c]);
        }

        let dst = writable(&mut self.kept[self.step])?;
        self.next_positions.clear();
        for (slot, &j) in self.order[..step.kept].iter().enumerate() {
            let j = j as usize;
            dst[slot * c..(slot + 1) * c].copy_from_slice(&tokens[j * c..(j + 1) * c]);
            self.next_positions.push(self.positions[j]);
        }
        if self.has_context {
            dst[step.kept * c..(step.kept + 1) * c].copy_from_slice(&self.context);
        }
        std::mem::swap(&mut self.positions, &mut self.next_positions);
        Ok(())
    }

    /// Folds the tokens dropped by this step (`order[kept..]`) into the context token,
    /// weighted by the attention each received; the context token of an earlier step
    /// (the last of `tokens`) weighs in with the attention mass already in it.
    fn merge(&mut self, tokens: &[f32], attention: &[f32], kept: usize) {
        let c = self.plan.width;
        let real = self.positions.len();
        let mut weight = 0.0f32;
        if self.has_context {
            // Its features after this block stand for everything merged so far.
            self.context
                .copy_from_slice(&tokens[real * c..(real + 1) * c]);
            weight = self.context_weight;
            for x in self.context.iter_mut() {
                *x *= weight;
            }
        } else {
            self.context.fill(0.0);
        }
        let dropped = &self.order[kept..real];
        let mass: f32 = dropped
            .iter()
            .map(|&j| attention[j as usize].max(0.0))
            .sum();
        for &j in dropped {
            let j = j as usize;
            // Attention sums to zero only in degenerate blocks: then a plain mean.
            let w = if mass > 0.0 {
                attention[j].max(0.0)
            } else {
                1.0
            };
            for (x, t) in self.context.iter_mut().zip(&tokens[j * c..(j + 1) * c]) {
                *x += w * t;
            }
            weight += w;
        }
        if weight > 0.0 {
            for x in self.context.iter_mut() {
                *x /= weight;
            }
        }
        self.context_weight = weight;
        self.has_context = true;
    }

    /// Writes the tokens in flight back to their grid positions.
    fn restore(&mut self, tokens: &[f32]) -> anyhow::Result<()> {
        let c = self.plan.width;
        let real = self.positions.len();
        anyhow::ensure!(
            tokens.len() == (real + usize::from(self.has_context)) * c,
            "before the decoder: {} token values for {real} tokens of width {c}",
            tokens.len()
        );
        let full = writable(&mut self.full)?;
        for (j, &at) in self.positions.iter().enumerate() {
            full[at * c..(at + 1) * c].copy_from_slice(&tokens[j * c..(j + 1) * c]);
        }
        Ok(())
    }
}

impl TokenPolicy for Pruner {
    fn begin(&mut self) {
        self.positions.clear();
        self.positions.extend(0..self.plan.tokens);
        self.has_context = false;
        self.context_weight = 0.0;
        self.step = 0;
        self.select_ns = 0;
        self.select_allocs = None;
    }

    fn after_block(
        &mut self,
        block: usize,
        tokens: TValue,
        attn_received: &[f32],
    ) -> anyhow::Result<TValue> {
        if self.plan.steps.get(self.step).map(|s| s.after_block) != Some(block) {
            return Ok(tokens);
        }
        self.measured(|p| p.prune(block, f32s(&tokens)?, attn_received))?;
        // Only after tract's output is dropped: the returned handle is the one tract
        // holds during the next block, and nothing else.
        drop(tokens);
        let out = TValue::from_const(self.kept[self.step].clone());
        self.step += 1;
        Ok(out)
    }

    fn before_decoder(&mut self, tokens: TValue) -> anyhow::Result<TValue> {
        self.measured(|p| p.restore(f32s(&tokens)?))?;
        drop(tokens);
        Ok(TValue::from_const(self.full.clone()))
    }
}

fn f32s(value: &TValue) -> anyhow::Result<&[f32]> {
    value
        .try_as_plain_ram()
        .context("tokens are not in memory")?
        .as_slice::<f32>()
        .context("tokens are not f32")
}

/// The buffer's floats to write. tract drops its handle to an input when the run ends;
/// should a future tract keep one, the buffer is replaced (an allocation, logged)
/// rather than written under a reader.
fn writable(buffer: &mut Arc<Tensor>) -> anyhow::Result<&mut [f32]> {
    if Arc::get_mut(buffer).is_none() {
        log::debug!("a pruning buffer is still shared after a run; reallocating it");
        *buffer = Arc::new(Tensor::zero::<f32>(buffer.shape())?);
    }
    let tensor = Arc::get_mut(buffer).context("pruning buffer is shared")?;
    tensor
        .to_plain_array_view_mut::<f32>()?
        .into_slice()
        .context("pruning buffer is not contiguous")
}
