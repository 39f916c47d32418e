//! The full segmentation graph: one plan, one state, reused input tensors.
//!
//! The image tensor `[1, 3, H, W]` is allocated once and written in place every frame
//! (it is shared with tract as an `Arc`, and tract drops its handle at the end of each
//! run, so the next frame can write it again). The text tensor `[P, D]` is rebuilt only
//! when the set of runnable prompts changes.
//!
//! The prompt count `P` stays symbolic in the optimised plan, so adding or dropping a
//! prompt never re-plans (re-optimising costs far more than one frame); `P = 0` is never
//! run. Leaves out: what the outputs mean (`postprocess.rs`).
//!
//! With a `[pruning]` schedule the same inputs run through the model's stage graphs
//! instead, one block at a time, tokens dropped between them (`stages.rs`,
//! `pruning/`); what the segmenter hands on is the same either way.

use std::sync::Arc;

use anyhow::Context;
use tract_onnx::prelude::*;

use crate::config::PruningConfig;
use crate::engine::manifest::Manifest;
use crate::engine::plan::{output_f32, Dim, IoSpec, Plan, PlanOptions};
use crate::engine::profile::OpProfile;
use crate::engine::pruning::{self, Pruner};
use crate::engine::stages::StageRunner;

/// What runs the model. One per engine, built once and never moved per frame, so the
/// variants' different sizes cost nothing; the stage runner is boxed all the same.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Graph {
    /// `[segmenter] model`, one plan.
    Full { plan: Plan, state: TypedSimpleState },
    /// `[stages]`, with tokens pruned between the blocks.
    Pruned {
        stages: Box<StageRunner>,
        pruner: Box<Pruner>,
    },
}

#[derive(Debug)]
pub struct Segmenter {
    graph: Graph,
    image: Arc<Tensor>,
    text: Arc<Tensor>,
    dim: usize,
    mask_cells: usize,
    /// Prompts in `text` (rows).
    prompts: usize,
    outputs: TVec<TValue>,
    /// Per-node timing, only under `maskd bench --profile`.
    profile: Option<OpProfile>,
}

impl Segmenter {
    /// Loads `[segmenter] model`, checked against the manifest.
    pub fn load(manifest: &Manifest, options: &PlanOptions) -> anyhow::Result<Segmenter> {
        Segmenter::load_pruned(manifest, options, &PruningConfig::default())
    }

    /// Loads what `pruning` asks for: without a schedule the full graph, with one the
    /// stage graphs and a [`Pruner`] (the schedule checked against the model first, so
    /// a schedule the model cannot take fails before any graph is loaded).
    pub fn load_pruned(
        manifest: &Manifest,
        options: &PlanOptions,
        pruning: &PruningConfig,
    ) -> anyhow::Result<Segmenter> {
        let graph = match pruning::Plan::resolve(pruning, manifest)? {
            Some(plan) => Graph::Pruned {
                stages: Box::new(StageRunner::load(manifest, options)?),
                pruner: Box::new(Pruner::new(plan)?),
            },
            None => {
                let plan = Segmenter::load_full(manifest, options)?;
                let state = plan.spawn()?;
                Graph::Full { plan, state }
            }
        };
        let (w, h) = (
            manifest.image.width as usize,
            manifest.image.height as usize,
        );
        let dim = manifest.text.dim;
        let [mh, mw] = manifest.segmenter.mask_size;
        Ok(Segmenter {
            graph,
            image: Arc::new(Tensor::zero::<f32>(&[1, 3, h, w])?),
            text: Arc::new(Tensor::zero::<f32>(&[0, dim])?),
            dim,
            mask_cells: mh * mw,
            prompts: 0,
            outputs: tvec!(),
            profile: None,
        })
    }

    fn load_full(manifest: &Manifest, options: &PlanOptions) -> anyhow::Result<Plan> {
        let s = &manifest.segmenter;
        let (w, h) = (
            manifest.image.width as usize,
            manifest.image.height as usize,
        );
        let dim = manifest.text.dim;
        let f = f32::datum_type();
        let inputs = [
            IoSpec::new(
                &s.image_input,
                f,
                &[Dim::Fixed(1), Dim::Fixed(3), Dim::Fixed(h), Dim::Fixed(w)],
            ),
            IoSpec::new(&s.text_input, f, &[Dim::Sym("P"), Dim::Fixed(dim)]),
        ];
        let [mh, mw] = s.mask_size;
        let outputs = [
            IoSpec::new(
                &s.mask_output,
                f,
                &[Dim::Sym("P"), Dim::Fixed(mh), Dim::Fixed(mw)],
            ),
            IoSpec::new(&s.score_output, f, &[Dim::Sym("P")]),
        ];
        Plan::load(
            &s.model,
            manifest.relative(&s.model),
            &inputs,
            &outputs,
            options,
        )
        .with_context(|| format!("{}: segmenter.model", manifest.path.display()))
    }

    /// Lets `write` fill the image input (`3 * H * W` floats, NCHW) in place.
    pub fn write_image<R>(&mut self, write: impl FnOnce(&mut [f32]) -> R) -> anyhow::Result<R> {
        if Arc::get_mut(&mut self.image).is_none() {
            // tract kept a handle past the run (not seen with tract 0.23); take a fresh buffer.
            log::debug!("image input still shared after a run; reallocating it");
            self.image = Arc::new(Tensor::zero::<f32>(self.image.shape())?);
        }
        let tensor = Arc::get_mut(&mut self.image).context("image input is shared")?;
        let view = tensor.to_plain_array_view_mut::<f32>()?;
        let slice = view.into_slice().context("image input is not contiguous")?;
        Ok(write(slice))
    }

    /// Replaces the prompt embeddings (`rows` of `dim` floats each).
    pub fn set_text<'a>(
        &mut self,
        rows: impl ExactSizeIterator<Item = &'a [f32]>,
    ) -> anyhow::Result<()> {
        let p = rows.len();
        let mut t = Tensor::zero::<f32>(&[p, self.dim])?;
        {
            let view = t.to_plain_array_view_mut::<f32>()?;
            let dst = view.into_slice().context("text input is not contiguous")?;
            for (i, row) in rows.enumerate() {
                anyhow::ensure!(
                    row.len() == self.dim,
                    "embedding has {} values, {} expected",
                    row.len(),
                    self.dim
                );
                dst[i * self.dim..(i + 1) * self.dim].copy_from_slice(row);
            }
        }
        self.text = Arc::new(t);
        self.prompts = p;
        Ok(())
    }

    pub fn prompts(&self) -> usize {
        self.prompts
    }

    /// Runs the graph on the current inputs; read the results with [`Segmenter::outputs`].
    pub fn run(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.prompts > 0, "no prompt to run");
        // Drop the previous outputs first so their buffers are freed before the run.
        self.outputs.clear();
        let (image, text) = (
            TValue::from_const(self.image.clone()),
            TValue::from_const(self.text.clone()),
        );
        match &mut self.graph {
            Graph::Full { plan, state } => {
                let inputs = tvec!(image, text);
                let run = match &mut self.profile {
                    None => plan.run(state, inputs),
                    Some(profile) => profile.run(state, inputs),
                };
                self.outputs = run.with_context(|| format!("{}: running", plan.shown.display()))?;
            }
            Graph::Pruned { stages, pruner } => stages.run(image, text, pruner.as_mut())?,
        }
        Ok(())
    }

    /// Times every node of the full graph from the next run on. The pruned stages run
    /// as many plans, which the profile does not cover: they stay untimed (logged).
    pub fn enable_profile(&mut self, per_node: bool) {
        if let Graph::Pruned { .. } = self.graph {
            log::warn!("the per-operator profile covers the full graph only; the pruned stage graphs run untimed");
            return;
        }
        self.profile.get_or_insert_with(|| OpProfile::new(per_node));
    }

    /// The full graph's plan (tests look inside it); `None` when the stages run.
    #[cfg(test)]
    pub(crate) fn full_plan(&self) -> Option<&Plan> {
        match &self.graph {
            Graph::Full { plan, .. } => Some(plan),
            Graph::Pruned { .. } => None,
        }
    }

    /// The last run's time before the decoder, when the stage graphs run.
    pub fn encoder_ns(&self) -> Option<u64> {
        match &self.graph {
            Graph::Full { .. } => None,
            Graph::Pruned { stages, .. } => Some(stages.encoder_ns()),
        }
    }

    /// The pruner, when a schedule is running.
    pub fn pruner(&self) -> Option<&Pruner> {
        match &self.graph {
            Graph::Full { .. } => None,
            Graph::Pruned { pruner, .. } => Some(&**pruner),
        }
    }

    pub(crate) fn pruner_mut(&mut self) -> Option<&mut Pruner> {
        match &mut self.graph {
            Graph::Full { .. } => None,
            Graph::Pruned { pruner, .. } => Some(&mut **pruner),
        }
    }

    pub fn profile(&self) -> Option<&OpProfile> {
        self.profile.as_ref()
    }

    /// `(mask_logits [P * mask_h * mask_w], presence_logits [P])` of the last run.
    pub fn outputs(&self) -> anyhow::Result<(&[f32], &[f32])> {
        let plan = match &self.graph {
            Graph::Full { plan, .. } => plan,
            Graph::Pruned { stages, .. } => return stages.outputs(),
        };
        let masks = output_f32(&self.outputs, 0, "mask_logits")?;
        let scores = output_f32(&self.outputs, 1, "presence_logits")?;
        anyhow::ensure!(
            masks.len() == self.prompts * self.mask_cells && scores.len() == self.prompts,
            "{}: outputs have {} mask and {} presence values for {} prompts",
            plan.shown.display(),
            masks.len(),
            scores.len(),
            self.prompts
        );
        Ok((masks, scores))
    }

    /// Which N:M layers of the graph run sparse.
    pub fn sparse(&self) -> &crate::engine::ops::matmul::SparseReport {
        match &self.graph {
            Graph::Full { plan, .. } => plan.sparse(),
            Graph::Pruned { stages, .. } => stages.sparse(),
        }
    }

    /// The image input of the last run (for the stage runner and tests).
    pub fn image(&self) -> &Arc<Tensor> {
        &self.image
    }

    pub fn text(&self) -> &Arc<Tensor> {
        &self.text
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::contracts::FrameView;
    use crate::engine::ops::Fusions;
    use crate::engine::preprocess::Preprocessor;
    use crate::engine::test_util::{count_ops, max_abs_diff};
    use std::path::{Path, PathBuf};

    pub(crate) fn fixture_manifest() -> Manifest {
        Manifest::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fixture/fixture.toml"),
        )
        .unwrap()
    }

    /// The deterministic fixture image (`fixture_pixel` in `tests/fixtures/make_fixture.py`).
    pub(crate) fn fixture_rgb(w: usize, h: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    v.push(((x * 7 + y * 13 + c * 71 + (x * y) % 17) % 256) as u8);
                }
            }
        }
        v
    }

    pub(crate) fn frame(data: &[u8], w: u32, h: u32) -> FrameView<'_> {
        FrameView {
            capture_ns: 2,
            ..FrameView::still(1, data, w, h, (w, h))
        }
    }

    /// Rows of `reference.tsv`: (text vector, presence logit, mask logits).
    pub(crate) fn reference() -> Vec<(Vec<f32>, f32, Vec<f32>)> {
        let path =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/fixture/reference.tsv");
        let text = std::fs::read_to_string(path).unwrap();
        let floats = |s: &str| {
            s.split(' ')
                .map(|v| v.parse::<f32>().unwrap())
                .collect::<Vec<_>>()
        };
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let c: Vec<&str> = l.split('\t').collect();
                (floats(c[0]), c[1].parse().unwrap(), floats(c[2]))
            })
            .collect()
    }

    #[test]
    fn matches_onnxruntime_on_the_fixture() {
        let m = fixture_manifest();
        let mut seg = Segmenter::load(&m, &PlanOptions::default()).unwrap();
        let pre = Preprocessor::new(&m.image);
        let rgb = fixture_rgb(64, 64);
        seg.write_image(|buf| pre.run(&frame(&rgb, 64, 64), buf))
            .unwrap()
            .unwrap();
        let refs = reference();
        seg.set_text(refs.iter().map(|r| r.0.as_slice())).unwrap();
        for _ in 0..2 {
            // twice: the reused image tensor must be writable again and give the same result
            seg.write_image(|buf| pre.run(&frame(&rgb, 64, 64), buf))
                .unwrap()
                .unwrap();
            seg.run().unwrap();
            let (masks, scores) = seg.outputs().unwrap();
            for (p, (_, score, mask)) in refs.iter().enumerate() {
                assert!(
                    (scores[p] - score).abs() < 1e-4,
                    "presence {p}: {} vs {score}",
                    scores[p]
                );
                let got = &masks[p * 256..(p + 1) * 256];
                let worst = got
                    .iter()
                    .zip(mask)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(worst < 1e-4, "mask {p}: max diff {worst}");
            }
        }
        assert_eq!(
            Arc::strong_count(seg.image()),
            1,
            "tract must not keep the input"
        );
    }

    /// `(mask logits, presence logits)` of a shipped model on the fixture image and three
    /// fixed embeddings; `check` sees the loaded segmenter first.
    fn run_shipped(
        manifest: &str,
        options: &PlanOptions,
        check: impl FnOnce(&Segmenter),
    ) -> (Vec<f32>, Vec<f32>) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(manifest);
        let m = Manifest::load(&path).unwrap();
        let pre = Preprocessor::new(&m.image);
        let (w, h) = (m.image.width, m.image.height);
        let rgb = fixture_rgb(w as usize, h as usize);
        let text: Vec<Vec<f32>> = (0..3)
            .map(|p| {
                (0..384)
                    .map(|i| ((i * 7 + p * 13) % 17) as f32 / 40.0 - 0.2)
                    .collect()
            })
            .collect();
        let mut seg = Segmenter::load(&m, options).unwrap();
        check(&seg);
        seg.write_image(|buf| pre.run(&frame(&rgb, w, h), buf))
            .unwrap()
            .unwrap();
        seg.set_text(text.iter().map(Vec::as_slice)).unwrap();
        seg.run().unwrap();
        let (masks, scores) = seg.outputs().unwrap();
        (masks.to_vec(), scores.to_vec())
    }

    /// Nodes of the segmenter's plan whose op is `name`.
    fn ops(seg: &Segmenter, name: &str) -> usize {
        count_ops(seg.full_plan().unwrap().plan.model(), name)
    }

    /// Largest difference over both outputs (masks, presence).
    fn max_diff(a: &(Vec<f32>, Vec<f32>), b: &(Vec<f32>, Vec<f32>)) -> f32 {
        max_abs_diff(&a.0, &b.0).max(max_abs_diff(&a.1, &b.1))
    }

    /// The shipped 2:4 model: all 40 compressed layers run on the sparse kernel, and the
    /// result equals the same graph decompressed to dense (the `sparse_kernel` fallback).
    #[test]
    fn shipped_two_four_model_runs_sparse_and_matches_its_dense_fallback() {
        use crate::config::SparseKernel;
        let mut results = Vec::new();
        for mode in [SparseKernel::Sparse, SparseKernel::Dense] {
            let options = PlanOptions::default().with_sparse_kernel(mode);
            let expected = if mode == SparseKernel::Sparse { 40 } else { 0 };
            results.push(run_shipped("models/sparse24.toml", &options, |seg| {
                assert_eq!(seg.sparse().sparse.len(), expected, "{mode:?}");
            }));
        }
        let worst = max_diff(&results[0], &results[1]);
        assert!(worst < 1e-3, "sparse vs dense max |diff| {worst}");
        assert_eq!(results[0].0.len(), 3 * 56 * 56);
    }

    /// The default model's three decoder upsamples run as `Upsample2d` and give what
    /// tract's general `Resize` gives.
    #[test]
    fn default_model_upsample_matches_tract_resize() {
        let fast = run_shipped("models/default.toml", &PlanOptions::default(), |seg| {
            assert_eq!(ops(seg, "Upsample2d"), 3);
            assert_eq!(ops(seg, "Resize"), 0);
        });
        let options = PlanOptions {
            fusions: Fusions {
                upsample: false,
                ..PlanOptions::default().fusions
            },
            ..PlanOptions::default()
        };
        let slow = run_shipped("models/default.toml", &options, |seg| {
            assert_eq!(ops(seg, "Upsample2d"), 0);
        });
        let worst = max_diff(&fast, &slow);
        assert!(worst < 1e-4, "Upsample2d vs Resize max |diff| {worst}");
    }

    /// The default model's ten attentions (8 encoder blocks, 2 decoder blocks over every
    /// prompt) run fused on CPUs with a kernel, its 22 LayerNorms as one op each, the
    /// mask head's product and sum as one, its 48 constant-weight matmuls of the
    /// transformer blocks (qkv, proj, fc1, fc2 of 8 + 2 blocks, the text and FiLM
    /// projections, the presence head) on maskd's dense kernel with their biases,
    /// GELUs and residuals folded in, and the result is what tract's own nodes give.
    #[test]
    fn default_model_fused_ops_match_tract() {
        let expect = if crate::engine::ops::attention::kernel::Kind::best().is_some() {
            10
        } else {
            0
        };
        let dense = if maskd_kernels::dense::best() != maskd_kernels::DenseKind::Generic {
            48
        } else {
            0
        };
        let fused = run_shipped("models/default.toml", &PlanOptions::default(), |seg| {
            assert_eq!(ops(seg, "DenseMatMul"), dense);
            if dense > 0 {
                // Every block's fc1 carries its GELU, proj and fc2 their residual.
                let plan = seg.full_plan().unwrap().plan.model();
                let fused = |f: fn(&crate::engine::ops::matmul::DenseMatMul) -> bool| {
                    plan.nodes()
                        .iter()
                        .filter_map(|n| n.op_as::<crate::engine::ops::matmul::DenseMatMul>())
                        .filter(|op| f(op))
                        .count()
                };
                // Every fc1 (and the presence head's first layer) carries its GELU, every proj
                // and fc2 its residual; 34 of the 48 have a bias.
                let counts = (
                    fused(|op| op.gelu()),
                    fused(|op| op.residual()),
                    fused(|op| op.bias().is_some()),
                );
                assert_eq!(counts, (12, 20, 34), "(GELU, residual, bias) fused");
            }
            assert_eq!(ops(seg, "Attention"), expect);
            assert_eq!(ops(seg, "LayerNorm"), 22);
            assert_eq!(ops(seg, "MulSum"), 1);
            assert_eq!(ops(seg, "RmsNorm"), 0);
        });
        let options = PlanOptions {
            fusions: Fusions {
                fused_ops: false,
                ..PlanOptions::default().fusions
            },
            ..PlanOptions::default()
        };
        let tract = run_shipped("models/default.toml", &options, |seg| {
            assert_eq!(ops(seg, "DenseMatMul"), 0);
            assert_eq!(ops(seg, "Attention"), 0);
            assert_eq!(ops(seg, "LayerNorm"), 0);
        });
        let worst = max_diff(&fused, &tract);
        assert!(worst < 1e-4, "fused ops vs tract max |diff| {worst}");
    }

    #[test]
    fn zero_prompts_is_refused() {
        let m = fixture_manifest();
        let mut seg = Segmenter::load(&m, &PlanOptions::default()).unwrap();
        assert!(seg.run().is_err());
        assert!(
            seg.set_text([&[0.0f32; 3][..]].into_iter()).is_err(),
            "wrong width"
        );
    }
}
