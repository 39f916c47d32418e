//! The segmenter run as separate stage graphs: `embed -> block0 .. blockN -> decoder`,
//! each its own plan and state, so that tokens can be dropped between blocks (token
//! pruning, `pruning/`). The blocks keep the token count `T` symbolic, so one plan
//! runs any number of kept tokens at a cost near-proportional to `T`.
//!
//! Graph interfaces (names fixed by convention, see `docs/MANIFEST.md`):
//! - embed: `<image_input>` `[1,3,H,W]` -> `tokens` `[1,N,C]`, `skip` `[1,S,mh,mw]`
//! - block: `tokens` `[1,T,C]` -> `tokens_out` `[1,T,C]`, `attn_received` `[1,T]`
//! - decoder: `tokens` `[1,N,C]`, `skip`, `<text_input>` `[P,D]` -> `<mask_output>`, `<score_output>`
//!
//! The seam is [`TokenPolicy`]: it sees each block's output tokens and the attention each
//! token received, and chooses the tokens entering the next block; before the decoder it
//! must restore the full `N` tokens. [`KeepAll`] reproduces the full graph;
//! [`crate::engine::pruning::Pruner`] drops tokens by a schedule.

use anyhow::Context;
use tract_onnx::prelude::*;

use crate::engine::manifest::Manifest;
use crate::engine::ops::matmul::SparseReport;
use crate::engine::plan::{output_f32, Dim, IoSpec, Plan, PlanOptions};

/// What happens to the tokens between blocks.
pub trait TokenPolicy {
    /// Called once per frame, before the first block.
    fn begin(&mut self) {}
    /// Called after block `block` with its output tokens `[1, T, C]` and the attention each
    /// received (`T` values); returns the tokens for the next block (or the decoder).
    fn after_block(
        &mut self,
        block: usize,
        tokens: TValue,
        attn_received: &[f32],
    ) -> anyhow::Result<TValue>;
    /// Brings the tokens back to the decoder's `[1, N, C]` (identity when none were dropped).
    fn before_decoder(&mut self, tokens: TValue) -> anyhow::Result<TValue>;
}

/// Drops nothing: the stages compute exactly what the full graph computes.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeepAll;

impl TokenPolicy for KeepAll {
    fn after_block(
        &mut self,
        _block: usize,
        tokens: TValue,
        _attn: &[f32],
    ) -> anyhow::Result<TValue> {
        Ok(tokens)
    }
    fn before_decoder(&mut self, tokens: TValue) -> anyhow::Result<TValue> {
        Ok(tokens)
    }
}

#[derive(Debug)]
struct Stage {
    plan: Plan,
    state: TypedSimpleState,
}

impl Stage {
    fn new(plan: Plan) -> anyhow::Result<Stage> {
        let state = plan.spawn()?;
        Ok(Stage { plan, state })
    }

    fn run(&mut self, inputs: TVec<TValue>) -> anyhow::Result<TVec<TValue>> {
        self.plan
            .run(&mut self.state, inputs)
            .with_context(|| format!("{}: running", self.plan.shown.display()))
    }
}

#[derive(Debug)]
pub struct StageRunner {
    embed: Stage,
    blocks: Vec<Stage>,
    decoder: Stage,
    /// `attn_received` of each block in the last run.
    attention: Vec<Vec<f32>>,
    mask_cells: usize,
    prompts: usize,
    /// The decoder's outputs of the last run.
    outputs: TVec<TValue>,
    /// Every stage's N:M layers, in stage order.
    sparse: SparseReport,
    /// The last run's embed and blocks, the policy's work between them included.
    encoder_ns: u64,
}

impl StageRunner {
    /// Loads every stage graph of `[stages]`; an error if the manifest has none.
    pub fn load(manifest: &Manifest, options: &PlanOptions) -> anyhow::Result<StageRunner> {
        let st = manifest
            .stages
            .as_ref()
            .with_context(|| format!("{}: has no [stages] section", manifest.path.display()))?;
        let seg = &manifest.segmenter;
        let ctx = |key: String| format!("{}: {key}", manifest.path.display());
        let f = f32::datum_type();
        let (w, h) = (
            manifest.image.width as usize,
            manifest.image.height as usize,
        );
        let [mh, mw] = seg.mask_size;
        let (n, c) = (Dim::Fixed(st.tokens), Dim::Fixed(st.width));

        let embed = Plan::load(
            &st.embed,
            manifest.relative(&st.embed),
            &[IoSpec::new(
                &seg.image_input,
                f,
                &[Dim::Fixed(1), Dim::Fixed(3), Dim::Fixed(h), Dim::Fixed(w)],
            )],
            &[
                IoSpec::new("tokens", f, &[Dim::Fixed(1), n, c]),
                IoSpec::new(
                    "skip",
                    f,
                    &[Dim::Fixed(1), Dim::Any, Dim::Fixed(mh), Dim::Fixed(mw)],
                ),
            ],
            options,
        )
        .with_context(|| ctx("stages.embed".into()))?;
        let skip_channels = embed
            .output_shape(1)?
            .get(1)
            .and_then(|d| d.as_i64())
            .with_context(|| {
                format!(
                    "{}: output \"skip\" has no fixed channel count",
                    embed.shown.display()
                )
            })?;

        let t = Dim::Sym("T");
        let mut blocks = Vec::with_capacity(st.blocks.len());
        for (i, file) in st.blocks.iter().enumerate() {
            let plan = Plan::load(
                file,
                manifest.relative(file),
                &[IoSpec::new("tokens", f, &[Dim::Fixed(1), t, c])],
                &[
                    IoSpec::new("tokens_out", f, &[Dim::Fixed(1), t, c]),
                    IoSpec::new("attn_received", f, &[Dim::Fixed(1), t]),
                ],
                options,
            )
            .with_context(|| ctx(format!("stages.blocks[{i}]")))?;
            blocks.push(Stage::new(plan)?);
        }

        let decoder = Plan::load(
            &st.decoder,
            manifest.relative(&st.decoder),
            &[
                IoSpec::new("tokens", f, &[Dim::Fixed(1), n, c]),
                IoSpec::new(
                    "skip",
                    f,
                    &[
                        Dim::Fixed(1),
                        Dim::Fixed(skip_channels as usize),
                        Dim::Fixed(mh),
                        Dim::Fixed(mw),
                    ],
                ),
                IoSpec::new(
                    &seg.text_input,
                    f,
                    &[Dim::Sym("P"), Dim::Fixed(manifest.text.dim)],
                ),
            ],
            &[
                IoSpec::new(
                    &seg.mask_output,
                    f,
                    &[Dim::Sym("P"), Dim::Fixed(mh), Dim::Fixed(mw)],
                ),
                IoSpec::new(&seg.score_output, f, &[Dim::Sym("P")]),
            ],
            options,
        )
        .with_context(|| ctx("stages.decoder".into()))?;

        let attention = vec![Vec::with_capacity(st.tokens); blocks.len()];
        let mut sparse = SparseReport::default();
        for plan in std::iter::once(&embed)
            .chain(blocks.iter().map(|b| &b.plan))
            .chain(std::iter::once(&decoder))
        {
            sparse.sparse.extend(plan.sparse().sparse.iter().cloned());
            sparse.dense.extend(plan.sparse().dense.iter().cloned());
        }
        Ok(StageRunner {
            sparse,
            encoder_ns: 0,
            embed: Stage::new(embed)?,
            blocks,
            decoder: Stage::new(decoder)?,
            attention,
            mask_cells: mh * mw,
            prompts: 0,
            outputs: tvec!(),
        })
    }

    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Nanoseconds the last run spent before the decoder (embed, blocks, the policy).
    pub fn encoder_ns(&self) -> u64 {
        self.encoder_ns
    }

    /// Which N:M layers of all the stage graphs run sparse.
    pub fn sparse(&self) -> &SparseReport {
        &self.sparse
    }

    /// Runs every stage on `image` `[1,3,H,W]` and `text` `[P,D]`; read the decoder's
    /// results with [`StageRunner::outputs`].
    pub fn run(
        &mut self,
        image: TValue,
        text: TValue,
        policy: &mut dyn TokenPolicy,
    ) -> anyhow::Result<()> {
        self.outputs.clear();
        self.prompts = text.shape().first().copied().unwrap_or(0);
        let start = std::time::Instant::now();
        policy.begin();
        let mut out = self.embed.run(tvec!(image))?.into_iter();
        let (mut tokens, skip) = match (out.next(), out.next()) {
            (Some(t), Some(s)) => (t, s),
            _ => anyhow::bail!("{}: expected 2 outputs", self.embed.plan.shown.display()),
        };
        for (i, block) in self.blocks.iter_mut().enumerate() {
            let outputs = block.run(tvec!(tokens))?;
            let attn = output_f32(&outputs, 1, "attn_received")?;
            self.attention[i].clear();
            self.attention[i].extend_from_slice(attn);
            let next = outputs.into_iter().next().context("block gave no tokens")?;
            tokens = policy.after_block(i, next, &self.attention[i])?;
        }
        let tokens = policy.before_decoder(tokens)?;
        self.encoder_ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.outputs = self.decoder.run(tvec!(tokens, skip, text))?;
        Ok(())
    }

    /// `(mask_logits [P * mask_h * mask_w], presence_logits [P])` of the last run.
    pub fn outputs(&self) -> anyhow::Result<(&[f32], &[f32])> {
        let masks = output_f32(&self.outputs, 0, "mask_logits")?;
        let scores = output_f32(&self.outputs, 1, "presence_logits")?;
        anyhow::ensure!(
            masks.len() == self.prompts * self.mask_cells && scores.len() == self.prompts,
            "{}: {} mask and {} presence values for {} prompts",
            self.decoder.plan.shown.display(),
            masks.len(),
            scores.len(),
            self.prompts
        );
        Ok((masks, scores))
    }

    /// The attention each token received in block `block` during the last run.
    pub fn attention(&self, block: usize) -> Option<&[f32]> {
        self.attention.get(block).map(Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ops::Fusions;
    use crate::engine::preprocess::Preprocessor;
    use crate::engine::segmenter::tests::{fixture_manifest, fixture_rgb, frame};
    use crate::engine::segmenter::Segmenter;
    use crate::engine::test_util::max_abs_diff;
    use std::path::Path;

    /// Pseudo-random unit vectors, deterministic.
    fn text_rows(p: usize, dim: usize) -> Vec<Vec<f32>> {
        let mut s = 0x2545_f491_u32;
        (0..p)
            .map(|_| {
                let v: Vec<f32> = (0..dim)
                    .map(|_| {
                        s ^= s << 13;
                        s ^= s >> 17;
                        s ^= s << 5;
                        (s as f32 / u32::MAX as f32) * 2.0 - 1.0
                    })
                    .collect();
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.into_iter().map(|x| x / n).collect()
            })
            .collect()
    }

    /// Max abs difference between the chained stages and the full graph.
    fn stages_vs_full(m: &Manifest) -> (f32, f32) {
        let options = PlanOptions::default();
        let mut seg = Segmenter::load(m, &options).unwrap();
        let mut stages = StageRunner::load(m, &options).unwrap();
        let (w, h) = (m.image.width, m.image.height);
        let rgb = fixture_rgb(w as usize, h as usize);
        let pre = Preprocessor::new(&m.image);
        seg.write_image(|buf| pre.run(&frame(&rgb, w, h), buf))
            .unwrap()
            .unwrap();
        let rows = text_rows(3, m.text.dim);
        seg.set_text(rows.iter().map(Vec::as_slice)).unwrap();
        seg.run().unwrap();
        let (full_masks, full_scores) = seg.outputs().unwrap();
        let image = TValue::from_const(seg.image().clone());
        let text = TValue::from_const(seg.text().clone());
        stages.run(image, text, &mut KeepAll).unwrap();
        let (masks, scores) = stages.outputs().unwrap();
        let st = m.stages.as_ref().unwrap();
        for b in 0..stages.blocks() {
            let attn = stages.attention(b).unwrap();
            assert_eq!(attn.len(), st.tokens);
            assert!(
                attn.iter().all(|a| a.is_finite() && *a >= 0.0),
                "block {b}: {attn:?}"
            );
        }
        (
            max_abs_diff(masks, full_masks),
            max_abs_diff(scores, full_scores),
        )
    }

    #[test]
    fn fixture_stages_reproduce_the_full_graph() {
        let (m, s) = stages_vs_full(&fixture_manifest());
        assert!(m <= 1e-4 && s <= 1e-4, "mask diff {m}, presence diff {s}");
    }

    /// The same on the trained model when `models/default.toml` exists (and says so).
    #[test]
    fn real_model_stages_reproduce_the_full_graph() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default.toml");
        if !path.exists() {
            eprintln!(
                "SKIPPED: {} is absent (trained model not there yet)",
                path.display()
            );
            return;
        }
        let m = Manifest::load(&path).unwrap();
        if m.stages.is_none() {
            eprintln!("SKIPPED: {} has no [stages]", path.display());
            return;
        }
        let (md, sd) = stages_vs_full(&m);
        eprintln!(
            "real model {}: stages vs full graph, max diff mask {md:e}, presence {sd:e}",
            m.name
        );
        assert!(
            md <= 1e-4 && sd <= 1e-4,
            "mask diff {md}, presence diff {sd}"
        );
    }

    /// A policy that drops the least-attended half of the tokens after block 0 and puts
    /// them back (unchanged) before the decoder: the seam works with fewer tokens.
    struct DropHalf {
        kept: Vec<usize>,
        full: Option<Tensor>,
    }

    impl TokenPolicy for DropHalf {
        fn after_block(
            &mut self,
            block: usize,
            tokens: TValue,
            attn: &[f32],
        ) -> anyhow::Result<TValue> {
            if block != 0 {
                return Ok(tokens);
            }
            let mut order: Vec<usize> = (0..attn.len()).collect();
            order.sort_by(|a, b| attn[*b].total_cmp(&attn[*a]));
            self.kept = order[..attn.len() / 2].to_vec();
            self.kept.sort_unstable();
            let view = tokens.to_plain_array_view::<f32>()?;
            let c = view.shape()[2];
            let kept =
                tract_ndarray::Array3::from_shape_fn((1, self.kept.len(), c), |(_, t, ch)| {
                    view[[0, self.kept[t], ch]]
                });
            self.full = Some(tokens.into_tensor());
            Ok(kept.into_tvalue())
        }

        fn before_decoder(&mut self, tokens: TValue) -> anyhow::Result<TValue> {
            let mut full = self.full.take().context("no tokens kept")?;
            let src = tokens.to_plain_array_view::<f32>()?;
            let mut dst = full.to_plain_array_view_mut::<f32>()?;
            for (t, &orig) in self.kept.iter().enumerate() {
                for ch in 0..src.shape()[2] {
                    dst[[0, orig, ch]] = src[[0, t, ch]];
                }
            }
            Ok(full.into_tvalue())
        }
    }

    #[test]
    fn blocks_run_on_fewer_tokens_through_the_policy() {
        let m = fixture_manifest();
        let mut stages = StageRunner::load(&m, &PlanOptions::default()).unwrap();
        let image = Tensor::zero::<f32>(&[1, 3, 64, 64]).unwrap().into_tvalue();
        let text = Tensor::zero::<f32>(&[2, 16]).unwrap().into_tvalue();
        let mut policy = DropHalf {
            kept: vec![],
            full: None,
        };
        stages.run(image, text, &mut policy).unwrap();
        let (masks, scores) = stages.outputs().unwrap();
        assert_eq!((masks.len(), scores.len()), (2 * 256, 2));
        assert_eq!(stages.attention(0).unwrap().len(), 16);
        assert_eq!(
            stages.attention(1).unwrap().len(),
            8,
            "block 1 saw the kept half"
        );
    }

    /// On the trained model the block graphs get the fused `Attention` with its second
    /// output (what each token received): with half the tokens dropped after block 0,
    /// every block's received attention and the decoder's outputs match tract's nodes.
    #[test]
    fn real_model_fused_blocks_match_tract_with_pruned_tokens() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default.toml");
        let Ok(m) = Manifest::load(&path) else {
            eprintln!("SKIPPED: {} is absent", path.display());
            return;
        };
        if m.stages.is_none() {
            eprintln!("SKIPPED: {} has no [stages]", path.display());
            return;
        }
        let run = |options: &PlanOptions| {
            let mut stages = StageRunner::load(&m, options).unwrap();
            let fused = stages
                .blocks
                .iter()
                .map(|b| {
                    b.plan
                        .plan
                        .model()
                        .nodes()
                        .iter()
                        .filter(|n| n.op().name() == "Attention" && n.outputs.len() == 2)
                        .count()
                })
                .sum::<usize>();
            let (w, h) = (m.image.width as usize, m.image.height as usize);
            let image: Vec<f32> = fixture_rgb(w, h)
                .iter()
                .map(|&v| v as f32 / 255.0 - 0.5)
                .collect();
            let image = Tensor::from_shape(&[1, 3, h, w], &image).unwrap();
            let rows = text_rows(2, m.text.dim);
            let flat: Vec<f32> = rows.concat();
            let text = Tensor::from_shape(&[2, m.text.dim], &flat).unwrap();
            let mut policy = DropHalf {
                kept: vec![],
                full: None,
            };
            stages
                .run(image.into_tvalue(), text.into_tvalue(), &mut policy)
                .unwrap();
            let attn: Vec<Vec<f32>> = (0..stages.blocks())
                .map(|b| stages.attention(b).unwrap().to_vec())
                .collect();
            let (masks, scores) = stages.outputs().unwrap();
            (fused, attn, masks.to_vec(), scores.to_vec())
        };
        let fast = run(&PlanOptions::default());
        let tract = run(&PlanOptions {
            fusions: Fusions {
                fused_ops: false,
                ..PlanOptions::default().fusions
            },
            ..PlanOptions::default()
        });
        let expect = if crate::engine::ops::attention::kernel::Kind::best().is_some() {
            8
        } else {
            0
        };
        assert_eq!(fast.0, expect, "blocks with fused attention");
        assert_eq!(tract.0, 0);
        let tokens = m.stages.as_ref().unwrap().tokens;
        assert_eq!(fast.1[0].len(), tokens);
        assert_eq!(fast.1[1].len(), tokens / 2, "block 1 saw the kept half");
        for (b, (f, t)) in fast.1.iter().zip(&tract.1).enumerate() {
            let d = max_abs_diff(f, t);
            assert!(d <= 1e-5, "block {b}: received attention differs by {d}");
        }
        let (md, sd) = (
            max_abs_diff(&fast.2, &tract.2),
            max_abs_diff(&fast.3, &tract.3),
        );
        assert!(
            md <= 1e-4 && sd <= 1e-4,
            "mask diff {md}, presence diff {sd}"
        );
    }

    #[test]
    fn no_stages_section_is_an_error() {
        let mut m = fixture_manifest();
        m.stages = None;
        let err = format!(
            "{:#}",
            StageRunner::load(&m, &PlanOptions::default()).unwrap_err()
        );
        assert!(
            err.ends_with("fixture.toml: has no [stages] section"),
            "{err}"
        );
    }
}
