//! Engine: model manifest, tract plans (built once), preprocessing into a reused tensor,
//! the prompt registry with its text encoder on a worker thread, postprocessing into the
//! reused `MaskSet`.
//!
//! [`Engine::infer`] is the per-frame path: collect newly encoded prompts, normalise the
//! frame into the image tensor, run the segmenter over every runnable prompt at once,
//! threshold into masks. In steady state (same prompts, same geometry) the engine's own
//! code allocates nothing per frame; tract allocates its intermediate tensors.
//!
//! Leaves out: sockets, pipelines, encoding masks for the wire.

pub mod device;
mod external;
pub mod manifest;
pub mod ops;
pub mod plan;
pub mod postprocess;
pub mod preprocess;
pub mod profile;
pub mod prompts;
pub mod pruning;
pub mod segmenter;
pub mod stages;
#[cfg(test)]
pub(crate) mod test_util;
pub mod text;
pub mod timing;

use std::time::Duration;

use anyhow::Context;

use crate::config::{EngineConfig, MaskConfig, PromptsConfig};
use crate::contracts::{FrameView, MaskSet, PromptId};

pub use manifest::Manifest;
pub use postprocess::Thresholds;
pub use prompts::{PromptRegistry, WaitError};

use plan::PlanOptions;
use postprocess::Postprocessor;
use preprocess::Preprocessor;
use segmenter::Segmenter;
use text::{EncoderWorker, TextEncoder, Tokenizer};
use timing::{AllocCounter, StageTimes, Stopwatch};

/// A loaded model, ready to segment frames.
#[derive(Debug)]
pub struct Engine {
    manifest: Manifest,
    pre: Preprocessor,
    seg: Segmenter,
    post: Postprocessor,
    prompts: PromptRegistry,
    /// Prompt ids in the order of the segmenter's text rows.
    active: Vec<PromptId>,
    /// Registry generation `active` was built from (`None`: never built).
    generation: Option<u64>,
    /// The last frame's stages (`maskd bench`).
    stage_times: StageTimes,
    alloc_counter: Option<AllocCounter>,
}

/// A model loaded and planned but not yet serving: what [`Engine::swap_model`] takes.
/// Built off the frame loop (it is `Send`), so a reload never stalls frames.
#[derive(Debug)]
pub struct Model {
    manifest: Manifest,
    pre: Preprocessor,
    seg: Segmenter,
    post: Postprocessor,
    tokenizer: Tokenizer,
    worker: EncoderWorker,
    /// Embeddings by the new encoder of the prompts live when the load began.
    encoded: Vec<text::Response>,
}

impl Model {
    /// Loads the manifest and every graph, checks them, and embeds `live` (id, text)
    /// with the new text encoder before its worker starts. Errors name the manifest or
    /// graph file, the key and the reason.
    pub fn load(
        cfg: &EngineConfig,
        prompts: &PromptsConfig,
        live: &[(PromptId, String)],
    ) -> anyhow::Result<Model> {
        let manifest = Manifest::load(&cfg.manifest)?;
        let target = device::resolve(cfg.device)?;
        let options = PlanOptions::for_engine(cfg, target);
        if target == device::Target::Cuda {
            log::info!(
                "on the GPU the graphs keep tract's nodes: N:M layers are decompressed to dense \
                 and engine.fused_ops does not apply (maskd's fused ops are CPU code); the text \
                 encoder runs on the CPU"
            );
        }
        let threads = cfg.threads;
        let thresholds = thresholds(&manifest, prompts)?;

        let tokenizer = Tokenizer::load(&manifest.text).with_context(|| {
            format!(
                "{}: {}",
                manifest.path.display(),
                manifest.text.tokenizer.key()
            )
        })?;
        let mut encoder = TextEncoder::load(&manifest, &tokenizer)?;
        encoder
            .self_test(&tokenizer)
            .with_context(|| format!("{}: text.model", manifest.path.display()))?;
        let seg = Segmenter::load_pruned(&manifest, &options, &cfg.pruning)?;
        let mut encoded = Vec::with_capacity(live.len());
        for (id, text) in live {
            // Too long for this tokenizer (or not tokenizable): the swap marks it failed
            // with the reason.
            if let Ok(tokens) = tokenizer.encode(text) {
                if tokens.dropped == 0 {
                    let result = encoder.encode(&tokens).map_err(|e| format!("{e:#}"));
                    encoded.push(text::Response { id: *id, result });
                }
            }
        }
        let worker = EncoderWorker::spawn(encoder).context("starting the text encoder thread")?;
        let pre = Preprocessor::new(&manifest.image);
        let post = Postprocessor::new(
            manifest.segmenter.mask_size,
            (manifest.image.width, manifest.image.height),
            thresholds,
        );
        log::info!(
            "model {} ({}): input {}x{}, {} threads, on the {}",
            manifest.name,
            manifest.path.display(),
            manifest.image.width,
            manifest.image.height,
            threads.max(1),
            target.name()
        );
        log::info!(
            "{}: {} (engine.sparse_kernel = \"{}\")",
            manifest.relative(&manifest.segmenter.model).display(),
            seg.sparse().summary(),
            options.sparse_kernel.as_str()
        );
        if let Some(pruner) = seg.pruner() {
            let plan = pruner.plan();
            log::info!(
                "pruning {}: the stage graphs run, tokens per block {:?}, scorer {}, merge {}",
                crate::config::show_schedule(&cfg.pruning.schedule),
                plan.block_tokens(),
                plan.scorer.as_str(),
                plan.merge
            );
        }
        Ok(Model {
            manifest,
            pre,
            seg,
            post,
            tokenizer,
            worker,
            encoded,
        })
    }

    /// The frame size this model takes, `(width, height)`.
    pub fn input_size(&self) -> (u32, u32) {
        (self.manifest.image.width, self.manifest.image.height)
    }
}

/// The decision thresholds: the config's overrides over the manifest's, checked.
fn thresholds(manifest: &Manifest, prompts: &PromptsConfig) -> anyhow::Result<Thresholds> {
    let thresholds = Thresholds {
        mask: prompts
            .mask_threshold
            .unwrap_or(manifest.segmenter.mask_threshold),
        score: prompts
            .score_threshold
            .unwrap_or(manifest.segmenter.score_threshold),
    };
    manifest::check_threshold(thresholds.mask)
        .map_err(|r| anyhow::anyhow!("prompts.mask_threshold: {r}"))?;
    manifest::check_threshold(thresholds.score)
        .map_err(|r| anyhow::anyhow!("prompts.score_threshold: {r}"))?;
    Ok(thresholds)
}

impl Engine {
    /// Loads the manifest and every graph, checks them, registers and starts encoding the
    /// config's prompts. Errors name the manifest or graph file, the key and the reason.
    ///
    /// The one constructor: the daemon, `maskd eval` and `maskd bench` all build their
    /// engine here from an `[engine]` and a `[prompts]` section, so a figure measured by
    /// a tool comes from the code that serves masks.
    pub fn load(cfg: &EngineConfig, prompts: &PromptsConfig) -> anyhow::Result<Engine> {
        let model = Model::load(cfg, prompts, &[])?;
        let registry = PromptRegistry::new(
            model.tokenizer,
            model.worker,
            &prompts.text,
            prompts.max_prompts,
        )
        .map_err(|e| anyhow::anyhow!("prompts.text: {e}"))?;
        Ok(Engine {
            manifest: model.manifest,
            pre: model.pre,
            seg: model.seg,
            post: model.post,
            prompts: registry,
            active: Vec::new(),
            generation: None,
            stage_times: StageTimes::default(),
            alloc_counter: None,
        })
    }

    /// Takes `model` (built by [`Model::load`], typically on another thread while this
    /// engine kept serving) in place of the running one, between two frames. The prompt
    /// registry stays: every live prompt keeps its id, and the new model's embeddings of
    /// them, made before the swap, run from the next frame on.
    pub fn swap_model(&mut self, model: Model) {
        self.manifest = model.manifest;
        self.pre = model.pre;
        self.seg = model.seg;
        if let (Some(counter), Some(pruner)) = (self.alloc_counter, self.seg.pruner_mut()) {
            pruner.set_alloc_counter(counter);
        }
        self.post = model.post;
        self.prompts
            .replace_encoder(model.tokenizer, model.worker, model.encoded);
        // The new segmenter has no text rows yet.
        self.generation = None;
    }

    /// Reload of `[prompts]`: the pinned prompts, thresholds and prompt limit, checked in
    /// full before anything changes (on an error the running ones stay).
    pub fn set_prompts(&mut self, prompts: &PromptsConfig) -> anyhow::Result<()> {
        let thresholds = thresholds(&self.manifest, prompts)?;
        self.prompts
            .set_pinned(&prompts.text, prompts.max_prompts)
            .map_err(|e| anyhow::anyhow!("prompts.text: {e}"))?;
        self.post = Postprocessor::new(
            self.manifest.segmenter.mask_size,
            (self.manifest.image.width, self.manifest.image.height),
            thresholds,
        );
        Ok(())
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The frame size the model takes, `(width, height)`; the source scales to it.
    pub fn input_size(&self) -> (u32, u32) {
        (self.manifest.image.width, self.manifest.image.height)
    }

    /// The prompt registry (implements [`crate::contracts::PromptDirectory`]).
    pub fn prompts(&mut self) -> &mut PromptRegistry {
        &mut self.prompts
    }

    /// Waits until the config's prompts are encoded (start-up), at most `timeout`; a
    /// failure carries the text encoder's own error.
    pub fn wait_for_prompts(&mut self, timeout: Duration) -> Result<(), WaitError> {
        self.prompts.wait_for_pinned(timeout)
    }

    /// Segments `frame` for every prompt that has its embedding, masks sized as `masks`
    /// says and covering the frame's `content` rectangle. No runnable prompt: `out.len = 0`
    /// and no inference is run.
    pub fn infer(
        &mut self,
        frame: &FrameView<'_>,
        masks: &MaskConfig,
        out: &mut MaskSet,
    ) -> anyhow::Result<()> {
        self.infer_sized(frame, (masks.width, masks.height), out)
    }

    /// [`Engine::infer`] with an explicit mask size `(width, height)`.
    pub fn infer_sized(
        &mut self,
        frame: &FrameView<'_>,
        size: (u32, u32),
        out: &mut MaskSet,
    ) -> anyhow::Result<()> {
        let mut watch = Stopwatch::start();
        self.stage_times = StageTimes::default();
        self.prompts.poll();
        if self.generation != Some(self.prompts.generation()) {
            self.rebuild_text()?;
        }
        out.seq = frame.seq;
        out.capture_ns = frame.capture_ns;
        out.frame_width = frame.source_width;
        out.frame_height = frame.source_height;
        out.width = size.0;
        out.height = size.1;
        if self.active.is_empty() {
            out.len = 0;
            return Ok(());
        }
        let pre = &self.pre;
        self.seg
            .write_image(|buf| pre.run(frame, buf))?
            .with_context(|| format!("frame {}", frame.seq))?;
        self.stage_times.preprocess_ns = watch.lap();
        let allocs_before = self.alloc_counter.and_then(|count| count());
        self.seg
            .run()
            .with_context(|| format!("frame {}", frame.seq))?;
        let allocs =
            timing::allocs_between(allocs_before, self.alloc_counter.and_then(|count| count()));
        self.stage_times.model_ns = watch.lap();
        self.stage_times.encoder_ns = self.seg.encoder_ns().unwrap_or(0);
        if let Some(pruner) = self.seg.pruner() {
            self.stage_times.select_ns = pruner.select_ns;
            self.stage_times.select_allocs = pruner.select_allocs;
        }
        // The pruner's allocations are maskd's, not tract's.
        self.stage_times.model_allocs =
            allocs.map(|n| n.saturating_sub(self.stage_times.select_allocs.unwrap_or(0)));
        let (mask_logits, presence) = self.seg.outputs()?;
        self.post
            .run(
                mask_logits,
                presence,
                &self.active,
                frame.content,
                size,
                out,
            )
            .with_context(|| format!("frame {}", frame.seq))?;
        self.stage_times.postprocess_ns = watch.lap();
        Ok(())
    }

    /// Where the last [`Engine::infer_sized`] spent its time (all zero when it ran no
    /// inference or failed).
    pub fn stage_times(&self) -> StageTimes {
        self.stage_times
    }

    /// Counts the segmenter plan's allocations from the next frame on (`maskd bench`,
    /// whose binary has a counting allocator that the engine may not import).
    pub fn set_alloc_counter(&mut self, counter: AllocCounter) {
        self.alloc_counter = Some(counter);
        if let Some(pruner) = self.seg.pruner_mut() {
            pruner.set_alloc_counter(counter);
        }
    }

    /// The segmenter, whose input tensors and outputs of the last frame `maskd bench
    /// --dump-inputs` writes out for other runtimes to be fed the same bytes.
    pub fn segmenter(&self) -> &Segmenter {
        &self.seg
    }

    /// Times every node of the segmenter plan from now on (`maskd bench --profile`),
    /// per operator kind or, `per_node`, per node.
    pub fn enable_profile(&mut self, per_node: bool) {
        self.seg.enable_profile(per_node);
    }

    /// The per-operator profile, when [`Engine::enable_profile`] was called.
    pub fn profile(&self) -> Option<&profile::OpProfile> {
        self.seg.profile()
    }

    /// The pruning schedule running, checked against the model; `None`: the full graph.
    pub fn pruning(&self) -> Option<&pruning::Plan> {
        self.seg.pruner().map(|p| p.plan())
    }

    /// Prompts currently run on each frame, in mask order.
    pub fn active_prompts(&self) -> &[PromptId] {
        &self.active
    }

    fn rebuild_text(&mut self) -> anyhow::Result<()> {
        self.active.clear();
        self.active
            .extend(self.prompts.runnable().map(|(id, _)| id));
        let rows: Vec<&[f32]> = self.prompts.runnable().map(|(_, v)| v).collect();
        self.seg.set_text(rows.into_iter())?;
        self.generation = Some(self.prompts.generation());
        log::debug!("running {} prompts: {:?}", self.active.len(), self.active);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MaskEncoding, SparseKernel};
    use crate::contracts::PromptDirectory;
    use segmenter::tests::{fixture_rgb, frame};
    use std::path::PathBuf;

    fn configs(prompts: &[&str]) -> (EngineConfig, PromptsConfig) {
        let manifest =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/fixture/fixture.toml");
        (
            EngineConfig {
                sparse_kernel: SparseKernel::Auto,
                ..EngineConfig::with_defaults(manifest)
            },
            PromptsConfig {
                text: prompts.iter().map(|s| s.to_string()).collect(),
                mask_threshold: None,
                score_threshold: None,
                max_prompts: 8,
            },
        )
    }

    #[test]
    fn infers_config_and_client_prompts_on_the_fixture() {
        let (e, p) = configs(&["red circle", "blue square"]);
        let mut engine = Engine::load(&e, &p).unwrap();
        assert_eq!(engine.input_size(), (64, 64));
        engine.wait_for_prompts(Duration::from_secs(30)).unwrap();
        let rgb = fixture_rgb(64, 64);
        let masks = MaskConfig {
            width: 32,
            height: 24,
            encoding: MaskEncoding::Rle,
        };
        let mut out = MaskSet::default();
        engine
            .infer(&frame(&rgb, 64, 64), &masks, &mut out)
            .unwrap();
        assert_eq!(
            (out.seq, out.capture_ns, out.len, out.width, out.height),
            (1, 2, 2, 32, 24)
        );
        assert_eq!(out.masks()[1].prompt_id, 1);
        for m in out.masks() {
            assert_eq!(m.bits.len(), 32 * 24);
            let ones = m.bits.iter().filter(|b| **b == 1).count();
            assert!((m.coverage - ones as f32 / 768.0).abs() < 1e-6);
            assert!((0.0..=1.0).contains(&m.score));
        }

        let id = engine.prompts().intern("green star").unwrap();
        assert_eq!(id, 2);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while engine.active_prompts().len() < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "client prompt never ran"
            );
            engine
                .infer(&frame(&rgb, 64, 64), &masks, &mut out)
                .unwrap();
        }
        assert_eq!(out.len, 3);
        assert_eq!(out.masks()[2].prompt_id, 2);
        engine.prompts().release(id);
        engine
            .infer(&frame(&rgb, 64, 64), &masks, &mut out)
            .unwrap();
        assert_eq!(out.len, 2);
    }

    #[test]
    fn no_prompts_runs_nothing_and_bad_frames_are_errors() {
        let (e, p) = configs(&[]);
        let mut engine = Engine::load(&e, &p).unwrap();
        let rgb = fixture_rgb(64, 64);
        let masks = MaskConfig {
            width: 8,
            height: 8,
            encoding: MaskEncoding::Rle,
        };
        let mut out = MaskSet {
            len: 5,
            ..MaskSet::default()
        };
        engine
            .infer(&frame(&rgb, 64, 64), &masks, &mut out)
            .unwrap();
        assert_eq!(out.len, 0);

        let (e, p) = configs(&["red"]);
        let mut engine = Engine::load(&e, &p).unwrap();
        engine.wait_for_prompts(Duration::from_secs(30)).unwrap();
        let err = engine
            .infer(&frame(&rgb[..3 * 32 * 32], 32, 32), &masks, &mut out)
            .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "frame 1: frame is 32x32 but the model takes 64x64"
        );
    }

    #[test]
    fn stage_times_cover_the_frame_and_count_the_plans_allocations() {
        use std::sync::atomic::{AtomicU64, Ordering};
        static READS: AtomicU64 = AtomicU64::new(0);
        // Each reading is 7 more than the last: the plan's run sees exactly one step.
        fn counter() -> Option<u64> {
            Some(READS.fetch_add(7, Ordering::Relaxed) + 7)
        }
        let (e, p) = configs(&["red circle"]);
        let mut engine = Engine::load(&e, &p).unwrap();
        engine.wait_for_prompts(Duration::from_secs(30)).unwrap();
        let rgb = fixture_rgb(64, 64);
        let masks = MaskConfig {
            width: 32,
            height: 24,
            encoding: MaskEncoding::Rle,
        };
        let mut out = MaskSet::default();
        engine
            .infer(&frame(&rgb, 64, 64), &masks, &mut out)
            .unwrap();
        assert_eq!(engine.stage_times().model_allocs, None);
        assert!(engine.stage_times().model_ns > 0);
        engine.set_alloc_counter(counter);
        engine
            .infer(&frame(&rgb, 64, 64), &masks, &mut out)
            .unwrap();
        assert_eq!(engine.stage_times().model_allocs, Some(7));
        // The image input the plan ran on is the frame, normalised: what a peer runtime
        // is fed by `maskd bench --dump-inputs`.
        assert_eq!(engine.segmenter().image().shape(), &[1, 3, 64, 64]);
        assert_eq!(engine.segmenter().text().shape(), &[1, 16]);

        // A frame that fails before the model leaves no stale figures behind.
        assert!(engine
            .infer(&frame(&rgb[..3 * 32 * 32], 32, 32), &masks, &mut out)
            .is_err());
        assert_eq!(engine.stage_times(), timing::StageTimes::default());
    }

    #[test]
    fn a_swapped_model_serves_the_same_prompt_ids_from_the_next_frame() {
        let (e, p) = configs(&["red circle"]);
        let mut engine = Engine::load(&e, &p).unwrap();
        let client = engine.prompts().intern("blue square").unwrap();
        engine
            .prompts()
            .wait_for(&[0, client], Duration::from_secs(30))
            .unwrap();
        let rgb = fixture_rgb(64, 64);
        let masks = MaskConfig {
            width: 32,
            height: 24,
            encoding: MaskEncoding::Rle,
        };
        let mut before = MaskSet::default();
        engine
            .infer(&frame(&rgb, 64, 64), &masks, &mut before)
            .unwrap();
        assert_eq!(before.len, 2);

        // Another plan of the same graphs (tract's nodes, dense), loaded as reload does.
        let other = EngineConfig {
            fused_ops: false,
            sparse_kernel: SparseKernel::Dense,
            ..e.clone()
        };
        let model = Model::load(&other, &p, &engine.prompts().snapshot()).unwrap();
        assert_eq!(model.input_size(), (64, 64));
        engine.swap_model(model);
        let mut after = MaskSet::default();
        engine
            .infer(&frame(&rgb, 64, 64), &masks, &mut after)
            .unwrap();
        // Pre-encoded before the swap: no frame runs without the prompts.
        assert_eq!(after.len, 2);
        for (a, b) in before.masks().iter().zip(after.masks()) {
            assert_eq!(a.prompt_id, b.prompt_id);
            let differ = a.bits.iter().zip(&b.bits).filter(|(x, y)| x != y).count();
            assert!(differ <= 2, "{differ} of {} pixels moved", a.bits.len());
        }
    }

    #[test]
    fn reloaded_prompts_and_thresholds_apply_or_leave_everything_as_it_was() {
        let (e, p) = configs(&["red circle"]);
        let mut engine = Engine::load(&e, &p).unwrap();
        let mut bad = p.clone();
        bad.text = vec!["blue square".into()];
        bad.mask_threshold = Some(0.0);
        let err = format!("{:#}", engine.set_prompts(&bad).unwrap_err());
        assert_eq!(
            err,
            "prompts.mask_threshold: 0 is not strictly between 0 and 1"
        );
        assert_eq!(engine.prompts().text(0), Some("red circle"));

        let rgb = fixture_rgb(64, 64);
        let masks = MaskConfig {
            width: 32,
            height: 24,
            encoding: MaskEncoding::Rle,
        };
        let mut out = MaskSet::default();
        let mut good = p.clone();
        good.text = vec!["blue square".into()];
        // No presence gate, so the pixel threshold alone decides.
        good.score_threshold = Some(1e-6);
        // A threshold almost every pixel passes, then one none passes: each reload must
        // show in the masks of the next frame.
        for (threshold, covered) in [(1e-6, true), (0.999_999, false)] {
            good.mask_threshold = Some(threshold);
            engine.set_prompts(&good).unwrap();
            assert_eq!(engine.prompts().text(0), None);
            engine.wait_for_prompts(Duration::from_secs(30)).unwrap();
            engine
                .infer(&frame(&rgb, 64, 64), &masks, &mut out)
                .unwrap();
            assert_eq!(out.len, 1);
            assert_eq!(out.masks()[0].prompt_id, 1);
            assert_eq!(out.masks()[0].coverage > 0.0, covered, "{threshold}");
        }
    }

    #[test]
    fn threshold_overrides_are_checked() {
        let (e, mut p) = configs(&[]);
        p.score_threshold = Some(1.5);
        let err = Engine::load(&e, &p).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "prompts.score_threshold: 1.5 is not strictly between 0 and 1"
        );
    }

    #[test]
    fn load_errors_name_the_manifest() {
        let (mut e, p) = configs(&[]);
        e.manifest = PathBuf::from("no/such/manifest.toml");
        let err = format!("{:#}", Engine::load(&e, &p).unwrap_err());
        assert!(
            err.starts_with("no/such/manifest.toml: No such file"),
            "{err}"
        );
    }
}
