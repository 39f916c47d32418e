//! `maskd eval`: the Rust pipeline's accuracy on a labelled set.
//!
//! Runs the daemon's engine ([`Engine::load`] and [`Engine::infer_sized`]: tokenizer,
//! text encoder thread, preprocessing, segmenter plan with `[engine]`'s options,
//! postprocessing with the thresholds `[prompts]` or the manifest give) on each image of
//! the set, all of an image's prompts in one run, with masks made at the image's full
//! size. `--config` takes `[engine]` and the thresholds from a daemon config (its prompt
//! list is ignored); `--manifest`, `--threads`, `--sparse-kernel` and the pruning flags
//! (`--pruning`, `--scorer`, `--merge`, repeatable: one command sweeps every schedule with
//! every scorer, one engine each) override it. It compares
//! them with the ground truth: IoU per present prompt; an absent prompt (no mask in the
//! index) is right when its predicted mask covers at most 1% of the image. Images not at
//! the model's input size are stretched to it (no letterbox).
//!
//! Set index (TOML, paths relative to it):
//! ```toml
//! [[sample]]
//! image = "images/0000.jpg"
//! [[sample.prompt]]
//! text = "a crimson disc"
//! concept = "red circle"
//! mask = "masks/0000_00.png"   # omitted => the concept is absent, the mask must be empty
//! kind = "generated"           # or "real"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::commands::pruning::{self, PruningArgs};
use crate::config::{
    self as cfg, Device, EngineConfig, PromptsConfig, PruningConfig, SparseKernel,
};
use crate::contracts::{FrameView, MaskSet, PromptDirectory, PromptId};
use crate::engine::{Engine, Manifest};

/// An absent prompt's mask may cover at most this fraction of the image.
pub const ABSENT_MAX_COVERAGE: f32 = 0.01;

#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// Daemon config whose `[engine]` and `[prompts]` thresholds to evaluate with (its
    /// `prompts.text` is ignored: the set names the prompts).
    #[arg(long, value_name = "TOML")]
    pub config: Option<PathBuf>,
    /// Model manifest [default: the config's engine.manifest, else models/default.toml].
    #[arg(long, value_name = "TOML")]
    pub manifest: Option<PathBuf>,
    /// Eval set index (TOML).
    #[arg(long, default_value = "models/eval/index.toml")]
    pub set: PathBuf,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
    /// Threads for tract's matmuls [default: the config's engine.threads, else 1].
    #[arg(long)]
    pub threads: Option<usize>,
    /// How N:M layers run [default: the config's engine.sparse_kernel, else auto].
    #[arg(long, value_enum, value_name = "MODE")]
    pub sparse_kernel: Option<SparseKernel>,
    /// Where the graphs run [default: the config's engine.device, else auto].
    #[arg(long, value_enum)]
    pub device: Option<Device>,
    /// Only the first N images (quick checks).
    #[arg(long)]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub pruning: PruningArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Generated,
    Real,
}

#[derive(Debug, Deserialize)]
struct RawSet {
    #[serde(default)]
    sample: Vec<RawSample>,
}

#[derive(Debug, Deserialize)]
struct RawSample {
    image: PathBuf,
    #[serde(default)]
    prompt: Vec<RawPrompt>,
}

#[derive(Debug, Deserialize)]
struct RawPrompt {
    text: String,
    concept: Option<String>,
    mask: Option<PathBuf>,
    kind: Option<Kind>,
}

/// One labelled image, paths resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub image: PathBuf,
    pub prompts: Vec<Prompt>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub text: String,
    /// Grouping key for the per-concept table (the text when the index gives none).
    pub concept: String,
    /// `None`: the concept is absent from the image.
    pub mask: Option<PathBuf>,
    pub kind: Kind,
}

/// Reads the set index at `path`.
pub fn load_set(path: &Path) -> anyhow::Result<Vec<Sample>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let raw: RawSet = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new(""));
    Ok(raw
        .sample
        .into_iter()
        .map(|s| Sample {
            image: dir.join(s.image),
            prompts: s
                .prompt
                .into_iter()
                .map(|p| Prompt {
                    concept: p.concept.unwrap_or_else(|| p.text.clone()),
                    text: p.text,
                    mask: p.mask.map(|m| dir.join(m)),
                    kind: p.kind.unwrap_or(Kind::Generated),
                })
                .collect(),
        })
        .collect())
}

/// How long one image's prompts may take to encode before eval gives up on them.
const ENCODE_TIMEOUT: Duration = Duration::from_secs(120);

/// The daemon's engine ([`Engine::load`], the same constructor, options and per-frame
/// code), driven one image at a time: each image's prompts are interned as a client's
/// would be, run together on that image, and released.
pub struct Evaluator {
    engine: Engine,
    masks: MaskSet,
    /// The prompt ids of the image in hand, in the set's order.
    ids: Vec<PromptId>,
    /// The image's masks in the set's order (`masks` is in id order).
    ordered: MaskSet,
    /// Seconds spent in [`Engine::infer_sized`] (all prompts of an image per frame).
    pub infer_s: f64,
    /// Of those, with a pruning schedule: before the decoder, and in the pruner.
    pub encoder_s: f64,
    pub select_s: f64,
    pub runs: usize,
}

impl Evaluator {
    /// An engine for `engine` with `prompts`' thresholds; `prompts.text` must be empty
    /// (the set names the prompts), `prompts.max_prompts` bounds one image's prompts.
    pub fn new(engine: &EngineConfig, prompts: &PromptsConfig) -> anyhow::Result<Evaluator> {
        anyhow::ensure!(
            prompts.text.is_empty(),
            "eval runs the set's prompts, not prompts.text"
        );
        Ok(Evaluator {
            engine: Engine::load(engine, prompts)?,
            masks: MaskSet::default(),
            ids: Vec::new(),
            ordered: MaskSet::default(),
            infer_s: 0.0,
            encoder_s: 0.0,
            select_s: 0.0,
            runs: 0,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        self.engine.manifest()
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Masks for `prompts` on `image`, at the image's size, in prompt order.
    pub fn predict(
        &mut self,
        image: &image::RgbImage,
        prompts: &[&str],
    ) -> anyhow::Result<&MaskSet> {
        let result = self.predict_interned(image, prompts);
        for id in self.ids.drain(..) {
            self.engine.prompts().release(id);
        }
        result?;
        Ok(&self.ordered)
    }

    fn predict_interned(
        &mut self,
        image: &image::RgbImage,
        prompts: &[&str],
    ) -> anyhow::Result<()> {
        for p in prompts {
            let id = self
                .engine
                .prompts()
                .intern(p)
                .map_err(|e| anyhow::anyhow!("prompt {p:?}: {e}"))?;
            self.ids.push(id);
        }
        self.engine
            .prompts()
            .wait_for(&self.ids, ENCODE_TIMEOUT)
            .context("encoding the prompts")?;
        let (w, h) = self.engine.input_size();
        let scaled;
        let model_image = if image.dimensions() == (w, h) {
            image
        } else {
            scaled = image::imageops::resize(image, w, h, image::imageops::FilterType::Triangle);
            &scaled
        };
        let frame = FrameView::still(
            self.runs as u64,
            model_image.as_raw(),
            w,
            h,
            image.dimensions(),
        );
        let start = Instant::now();
        self.engine
            .infer_sized(&frame, image.dimensions(), &mut self.masks)?;
        self.infer_s += start.elapsed().as_secs_f64();
        let times = self.engine.stage_times();
        self.encoder_s += times.encoder_ns as f64 / 1e9;
        self.select_s += times.select_ns as f64 / 1e9;
        self.runs += 1;
        // The engine gives masks in id order; the set wants its own (and may repeat a text).
        // Same frame and sizes; the mask slots are reused, refilled below.
        let (src, out) = (&self.masks, &mut self.ordered);
        *out = MaskSet {
            masks: std::mem::take(&mut out.masks),
            len: 0,
            seq: src.seq,
            capture_ns: src.capture_ns,
            frame_width: src.frame_width,
            frame_height: src.frame_height,
            width: src.width,
            height: src.height,
        };
        for id in &self.ids {
            let m = self
                .masks
                .masks()
                .iter()
                .find(|m| m.prompt_id == *id)
                .with_context(|| format!("prompt {id} was not run"))?;
            match out.masks.get_mut(out.len) {
                Some(slot) => slot.clone_from(m),
                None => out.masks.push(m.clone()),
            }
            out.len += 1;
        }
        Ok(())
    }
}

/// Intersection over union of two 0/1 masks; two empty masks agree perfectly.
pub fn iou(a: &[u8], b: &[u8]) -> f32 {
    let (mut inter, mut union) = (0u64, 0u64);
    for (x, y) in a.iter().zip(b) {
        inter += (*x & *y) as u64;
        union += (*x | *y) as u64;
    }
    if union == 0 {
        1.0
    } else {
        inter as f32 / union as f32
    }
}

/// Figures for one group of prompts.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Score {
    /// Prompts whose concept is in the image.
    pub present: usize,
    /// Mean IoU over them (0 if none).
    pub miou: f64,
    /// Prompts whose concept is not in the image.
    pub absent: usize,
    /// Fraction of those whose mask covers at most 1% of the image (0 if none).
    pub absent_ok_rate: f64,
    #[serde(skip)]
    iou_sum: f64,
    #[serde(skip)]
    absent_ok: usize,
}

impl Score {
    fn add_present(&mut self, iou: f32) {
        self.present += 1;
        self.iou_sum += iou as f64;
        self.miou = self.iou_sum / self.present as f64;
    }

    fn add_absent(&mut self, ok: bool) {
        self.absent += 1;
        self.absent_ok += ok as usize;
        self.absent_ok_rate = self.absent_ok as f64 / self.absent as f64;
    }
}

/// Everything `maskd eval` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub model: String,
    pub manifest: String,
    pub set: String,
    pub images: usize,
    /// Mean IoU over the present prompts of the generated images (the headline figure).
    pub miou: f64,
    /// Absent-prompt rate over every absent prompt.
    pub absent_ok_rate: f64,
    pub generated: Score,
    pub real: Score,
    pub concepts: BTreeMap<String, Score>,
    pub threads: usize,
    /// Mean engine time per image (preprocessing, segmenter and postprocessing, all its
    /// prompts in one run), milliseconds.
    pub infer_ms_per_image: f64,
    /// The pruning setting (`none`: the full graph).
    pub pruning: String,
    /// With a schedule: tokens entering each block.
    pub block_tokens: Option<Vec<usize>>,
    /// With a schedule: of `infer_ms_per_image`, the embed and blocks (the pruner's
    /// work included) and the pruner's work alone.
    pub encoder_ms_per_image: Option<f64>,
    pub select_ms_per_image: Option<f64>,
    pub total_s: f64,
}

pub fn run(args: &EvalArgs) -> anyhow::Result<()> {
    let reports = sweep(args)?;
    match reports.as_slice() {
        [one] if args.json => println!("{}", serde_json::to_string_pretty(one)?),
        [one] => print!("{}", render(one)),
        many if args.json => println!("{}", serde_json::to_string_pretty(many)?),
        many => {
            for r in many {
                print!("{}", render(r));
            }
            print!("{}", render_sweep(many));
        }
    }
    Ok(())
}

/// Every pruning setting the flags name (the config's alone without them), each with
/// an engine of its own, in the order given.
pub fn sweep(args: &EvalArgs) -> anyhow::Result<Vec<Report>> {
    let (engine, _) = engine_config(args, 1)?;
    let variants = args.pruning.variants(&engine.pruning);
    let mut out = Vec::with_capacity(variants.len());
    for (i, v) in variants.iter().enumerate() {
        if variants.len() > 1 {
            eprintln!(
                "eval: pruning {} ({}/{})",
                pruning::label(v),
                i + 1,
                variants.len()
            );
        }
        out.push(evaluate_with(args, Some(v))?);
    }
    Ok(out)
}

/// One line per pruning setting, its figures against the first line's.
pub fn render_sweep(reports: &[Report]) -> String {
    let Some(base) = reports.first() else {
        return String::new();
    };
    let width = reports
        .iter()
        .map(|r| r.pruning.len())
        .max()
        .unwrap_or(7)
        .max(7);
    let mut s = format!(
        "\nsweep, against the first row ({} images, {} thread(s)):\n{:width$}  {:>6}  {:>7}  {:>9}  {:>7}  {:>10}  {:>9}  {:>8}\n",
        base.images,
        base.threads,
        "pruning",
        "mIoU",
        "% mIoU",
        "absent-ok",
        "ms/img",
        "encoder ms",
        "select ms",
        "x faster"
    );
    let opt =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    for r in reports {
        s += &format!(
            "{:width$}  {:>6.4}  {:>7.1}  {:>9.4}  {:>7.1}  {:>10}  {:>9}  {:>8.2}\n",
            r.pruning,
            r.miou,
            100.0 * r.miou / base.miou.max(1e-9),
            r.absent_ok_rate,
            r.infer_ms_per_image,
            opt(r.encoder_ms_per_image, 1),
            opt(r.select_ms_per_image, 3),
            base.infer_ms_per_image / r.infer_ms_per_image.max(1e-9)
        );
    }
    s
}

/// The `[engine]` and `[prompts]` eval runs with: the config's (or the defaults), the
/// flags over them, no pinned prompts, room for `max_prompts` prompts per image.
pub fn engine_config(
    args: &EvalArgs,
    max_prompts: usize,
) -> anyhow::Result<(EngineConfig, PromptsConfig)> {
    let (mut engine, mut prompts) = match &args.config {
        Some(path) => {
            let c = cfg::load(path)?;
            (c.engine, c.prompts)
        }
        None => (
            EngineConfig::with_defaults(PathBuf::from("models/default.toml")),
            PromptsConfig {
                text: Vec::new(),
                mask_threshold: None,
                score_threshold: None,
                max_prompts: cfg::DEFAULT_MAX_PROMPTS,
            },
        ),
    };
    if let Some(m) = &args.manifest {
        engine.manifest = m.clone();
    }
    if let Some(t) = args.threads {
        engine.threads = t;
    }
    if let Some(k) = args.sparse_kernel {
        engine.sparse_kernel = k;
    }
    if let Some(d) = args.device {
        engine.device = d;
    }
    prompts.text.clear();
    prompts.max_prompts = max_prompts.max(1);
    Ok((engine, prompts))
}

/// Runs the whole set with the config's pruning (or the one `--pruning` etc. give).
pub fn evaluate(args: &EvalArgs) -> anyhow::Result<Report> {
    evaluate_with(args, None)
}

/// Runs the whole set, with `pruning` over what the config and flags give.
fn evaluate_with(args: &EvalArgs, pruning: Option<&PruningConfig>) -> anyhow::Result<Report> {
    let start = Instant::now();
    let mut samples = load_set(&args.set)?;
    if let Some(n) = args.limit {
        samples.truncate(n);
    }
    let per_image = samples.iter().map(|s| s.prompts.len()).max().unwrap_or(1);
    let (mut engine, prompts) = engine_config(args, per_image)?;
    if let Some(p) = pruning {
        engine.pruning = p.clone();
    }
    let mut ev = Evaluator::new(&engine, &prompts)?;
    let model = ev.manifest().name.clone();
    let (mut generated, mut real, mut all_absent) =
        (Score::default(), Score::default(), Score::default());
    let mut concepts: BTreeMap<String, Score> = BTreeMap::new();
    for sample in &samples {
        let image = image::open(&sample.image)
            .with_context(|| format!("{}: {}", args.set.display(), sample.image.display()))?
            .to_rgb8();
        let texts: Vec<&str> = sample.prompts.iter().map(|p| p.text.as_str()).collect();
        let masks = ev
            .predict(&image, &texts)
            .with_context(|| format!("{}", sample.image.display()))?;
        for (p, m) in sample.prompts.iter().zip(masks.masks()) {
            let by_kind = if p.kind == Kind::Real {
                &mut real
            } else {
                &mut generated
            };
            let concept = concepts.entry(p.concept.clone()).or_default();
            match &p.mask {
                Some(path) => {
                    let truth = load_mask(path, image.dimensions())?;
                    let v = iou(&m.bits, &truth);
                    by_kind.add_present(v);
                    concept.add_present(v);
                }
                None => {
                    let ok = m.coverage <= ABSENT_MAX_COVERAGE;
                    by_kind.add_absent(ok);
                    concept.add_absent(ok);
                    all_absent.add_absent(ok);
                }
            }
        }
    }
    let ms_per_image = |s: f64| 1e3 * s / ev.runs.max(1) as f64;
    Ok(Report {
        model,
        manifest: engine.manifest.display().to_string(),
        set: args.set.display().to_string(),
        images: samples.len(),
        miou: generated.miou,
        absent_ok_rate: all_absent.absent_ok_rate,
        generated,
        real,
        concepts,
        threads: engine.threads.max(1),
        infer_ms_per_image: ms_per_image(ev.infer_s),
        pruning: pruning::label(&engine.pruning),
        block_tokens: ev.engine().pruning().map(|p| p.block_tokens()),
        encoder_ms_per_image: ev.engine().pruning().map(|_| ms_per_image(ev.encoder_s)),
        select_ms_per_image: ev.engine().pruning().map(|_| ms_per_image(ev.select_s)),
        total_s: start.elapsed().as_secs_f64(),
    })
}

/// A ground-truth mask: any image, pixels > 127 (as grey) are the object.
pub fn load_mask(path: &Path, size: (u32, u32)) -> anyhow::Result<Vec<u8>> {
    let img = image::open(path)
        .with_context(|| format!("{}", path.display()))?
        .to_luma8();
    anyhow::ensure!(
        img.dimensions() == size,
        "{}: mask is {}x{} but its image is {}x{}",
        path.display(),
        img.width(),
        img.height(),
        size.0,
        size.1
    );
    Ok(img.as_raw().iter().map(|v| (*v > 127) as u8).collect())
}

/// The text form of a report.
pub fn render(r: &Report) -> String {
    let mut s = format!(
        "maskd eval: model {} ({}), set {} ({} images), {} thread(s)\n\n",
        r.model, r.manifest, r.set, r.images, r.threads
    );
    let width = r
        .concepts
        .keys()
        .map(|k| k.chars().count())
        .max()
        .unwrap_or(7)
        .max(7);
    s += &format!(
        "{:width$}  {:>7}  {:>6}  {:>6}  {:>9}\n",
        "concept", "present", "mIoU", "absent", "absent-ok"
    );
    for (name, c) in &r.concepts {
        s += &format!(
            "{name:width$}  {:>7}  {:>6}  {:>6}  {:>9}\n",
            c.present,
            fmt_rate(c.present, c.miou),
            c.absent,
            fmt_rate(c.absent, c.absent_ok_rate)
        );
    }
    for (name, k) in [("generated", &r.generated), ("real", &r.real)] {
        s += &format!(
            "\n{name:9}: mIoU {} over {} present prompts; absent-ok {} over {} absent prompts",
            fmt_rate(k.present, k.miou),
            k.present,
            fmt_rate(k.absent, k.absent_ok_rate),
            k.absent
        );
    }
    s += &format!(
        "\n\nmIoU (generated) {:.4}, absent-prompt rate {:.4}; engine {:.1} ms/image, total {:.1} s\n",
        r.miou, r.absent_ok_rate, r.infer_ms_per_image, r.total_s
    );
    s
}

fn fmt_rate(n: usize, v: f64) -> String {
    if n == 0 {
        "-".to_owned()
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/fixture/fixture.toml")
    }

    fn args(set: PathBuf) -> EvalArgs {
        EvalArgs {
            config: None,
            manifest: Some(fixture()),
            set,
            json: true,
            threads: Some(1),
            sparse_kernel: None,
            device: None,
            limit: None,
            pruning: PruningArgs::default(),
        }
    }

    fn evaluator() -> Evaluator {
        let (engine, prompts) = engine_config(&args(PathBuf::new()), 8).unwrap();
        Evaluator::new(&engine, &prompts).unwrap()
    }

    /// The daemon's engine (a config parsed as `maskd run` parses it, `Engine::load` as
    /// `daemon::run` calls it) and eval's, on the same frame with the same config, give
    /// the same masks bit for bit: eval's accuracy figures are the served masks'.
    #[test]
    fn eval_masks_are_the_daemons_masks() {
        let dir = std::env::temp_dir().join(format!("maskd-evalsame-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("maskd.toml");
        let text = format!(
            "[source]\npipeline = \"videotestsrc\"\n\
             [engine]\nmanifest = \"{}\"\nthreads = 2\nsparse_kernel = \"dense\"\nfused_ops = false\n\
             [prompts]\ntext = [\"red circle\", \"blue\", \"green star\"]\nscore_threshold = 0.3\n",
            fixture().display()
        );
        std::fs::write(&path, text).unwrap();
        let config = cfg::load(&path).unwrap();
        let mut daemon = Engine::load(&config.engine, &config.prompts).unwrap();
        daemon.wait_for_prompts(Duration::from_secs(30)).unwrap();
        let (w, h) = daemon.input_size();
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 3) as u8, ((x * y) % 251) as u8])
        });
        let mut served = MaskSet::default();
        let frame = FrameView::still(0, img.as_raw(), w, h, (w, h));
        daemon.infer_sized(&frame, (w, h), &mut served).unwrap();
        assert!(
            served
                .masks()
                .iter()
                .any(|m| m.bits.contains(&0) && m.bits.contains(&1)),
            "a frame whose masks are all empty or all full would prove nothing"
        );

        let eval_args = EvalArgs {
            config: Some(path.clone()),
            manifest: None,
            threads: None,
            ..args(PathBuf::new())
        };
        let (engine, prompts) = engine_config(&eval_args, 3).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(engine, config.engine);
        assert_eq!(prompts.score_threshold, Some(0.3));
        let mut ev = Evaluator::new(&engine, &prompts).unwrap();
        let got = ev
            .predict(&img, &["red circle", "blue", "green star"])
            .unwrap();
        assert_eq!((got.len, served.len), (3, 3));
        for (a, b) in got.masks().iter().zip(served.masks()) {
            assert_eq!(a.bits, b.bits);
            assert_eq!(a.score.to_bits(), b.score.to_bits());
            assert_eq!(a.coverage.to_bits(), b.coverage.to_bits());
        }
    }

    #[test]
    fn iou_counts() {
        assert_eq!(iou(&[1, 1, 0, 0], &[1, 0, 1, 0]), 1.0 / 3.0);
        assert_eq!(iou(&[0, 0], &[0, 0]), 1.0);
        assert_eq!(iou(&[1, 0], &[0, 1]), 0.0);
    }

    /// Ground truth made from the pipeline's own predictions must score IoU 1 and the
    /// absent prompt must be judged by coverage: checks the whole eval path end to end.
    #[test]
    fn own_predictions_score_perfectly() {
        let dir = std::env::temp_dir().join(format!("maskd-eval-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ev = evaluator();
        // 80x48: not the model size, so the stretch path and full-size masks are exercised
        let img = image::RgbImage::from_fn(80, 48, |x, y| {
            image::Rgb([(x * 3) as u8, (y * 5) as u8, ((x + y) * 2) as u8])
        });
        img.save(dir.join("a.png")).unwrap();
        let prompts = ["red circle", "blue", "green star"];
        let masks = ev.predict(&img, &prompts).unwrap().clone();
        assert_eq!((masks.len, masks.width, masks.height), (3, 80, 48));
        let mut index = String::from("[[sample]]\nimage = \"a.png\"\n");
        for (i, (p, mask)) in prompts.iter().zip(masks.masks()).enumerate().take(2) {
            let png = image::GrayImage::from_fn(80, 48, |x, y| {
                image::Luma([mask.bits[(y * 80 + x) as usize] * 255])
            });
            png.save(dir.join(format!("m{i}.png"))).unwrap();
            index += &format!("[[sample.prompt]]\ntext = \"{p}\"\nconcept = \"c{i}\"\nmask = \"m{i}.png\"\nkind = \"generated\"\n");
        }
        index += "[[sample.prompt]]\ntext = \"green star\"\nconcept = \"c2\"\nkind = \"real\"\n";
        std::fs::write(dir.join("index.toml"), index).unwrap();
        let r = evaluate(&args(dir.join("index.toml"))).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(r.images, 1);
        assert_eq!((r.generated.present, r.miou), (2, 1.0));
        assert_eq!(
            (r.real.absent, r.absent_ok_rate),
            (
                1,
                if masks.masks()[2].coverage <= 0.01 {
                    1.0
                } else {
                    0.0
                }
            )
        );
        assert_eq!(r.concepts.len(), 3);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["miou"], 1.0);
        assert!(json["concepts"]["c0"]["present"] == 1);
        assert!(render(&r).contains("mIoU (generated) 1.0000"));
    }

    #[test]
    fn index_paths_and_defaults() {
        let dir = std::env::temp_dir().join(format!("maskd-evalset-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("index.toml");
        std::fs::write(
            &path,
            "[[sample]]\nimage = \"i.jpg\"\n[[sample.prompt]]\ntext = \"x\"\n",
        )
        .unwrap();
        let s = load_set(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(s[0].image, dir.join("i.jpg"));
        assert_eq!(
            s[0].prompts[0],
            Prompt {
                text: "x".into(),
                concept: "x".into(),
                mask: None,
                kind: Kind::Generated
            }
        );
    }

    #[test]
    fn mask_size_mismatch_is_named() {
        let dir = std::env::temp_dir().join(format!("maskd-evalmask-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("m.png");
        image::GrayImage::new(4, 4).save(&p).unwrap();
        let err = load_mask(&p, (5, 4)).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            err.ends_with("m.png: mask is 4x4 but its image is 5x4"),
            "{err}"
        );
    }
}
