//! `maskd bench`: end-to-end speed and memory of one or more models, side by side.
//!
//! Each variant (a manifest, optionally with a `sparse_kernel` mode) runs in its own
//! child process so its RSS is its own, and the variants take turns round after round
//! so that drift on a shared machine hits them alike; the ratios are of medians over
//! rounds. A frame is the daemon's per-frame work after the source (`frame.rs`):
//! `Engine::infer_sized` (preprocessing, the segmenter plan, postprocessing into the
//! reused `MaskSet`) and `Publisher::publish` (encoding, FRAME, send) to one subscribed
//! client, on a still image with the prompts already encoded. Each stage is timed, and
//! the heap allocations of the segmenter plan's runs are counted apart from the rest of
//! the frame's. `--dump-inputs` writes the segmenter's inputs and outputs of one frame
//! for other runtimes (`dump.rs`, `bench/peer/`).
//!
//! `--pruning`/`--scorer` (repeatable) make every manifest one variant per pruning
//! setting, so one command sweeps schedules; a pruned variant also reports the part of
//! the model stage before the decoder (`encoder`) and the pruner's own (`select`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::alloc;
use crate::commands::pruning::{self, PruningArgs};
use crate::config::{Device, PruningConfig, SparseKernel};
use crate::engine::profile::OpRow;

pub mod dump;
mod frame;
pub mod interleave;

use frame::{FrameSample, Loaded};

/// Arguments of `maskd bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Model manifest; repeat to compare (ratios are against the first).
    #[arg(
        long = "manifest",
        value_name = "TOML",
        default_value = "models/default.toml"
    )]
    pub manifests: Vec<PathBuf>,
    /// How N:M layers run, per variant: one value for all, or one per --manifest.
    #[arg(long = "sparse-kernel", value_enum, value_name = "MODE")]
    pub sparse_kernels: Vec<SparseKernel>,
    /// Threads for tract's matmuls.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Where the graphs run (engine.device), for every variant.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: Device,
    /// Prompts run on every frame.
    #[arg(long = "prompt", value_name = "TEXT", default_values_t = ["red circle".to_string(), "blue square".to_string(), "yellow star".to_string()])]
    pub prompts: Vec<String>,
    /// Image fed as every frame (stretched to the model's input size).
    #[arg(long, default_value = "models/eval/images/0000.jpg")]
    pub image: PathBuf,
    /// Timed frames per round (after 3 warm-up frames).
    #[arg(long, default_value_t = 20)]
    pub frames: usize,
    /// Rounds; each variant runs once per round, in turn.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
    /// After the timed frames, time every operator of the segmenter plan over as many
    /// frames again and print where each variant's frame goes (the timed figures are
    /// taken without it).
    #[arg(long)]
    pub profile: bool,
    /// With --profile: a row per graph node instead of per operator kind.
    #[arg(long, requires = "profile")]
    pub per_node: bool,
    /// Load every variant in this process and alternate frames between them: tighter
    /// speed ratios on a machine whose speed drifts, no per-variant memory figures.
    #[arg(long, conflicts_with = "profile")]
    pub interleave: bool,
    /// Write the first variant's segmenter inputs and outputs of one frame into DIR
    /// (`.npy` files and `inputs.json`), for feeding another runtime the same bytes;
    /// nothing is timed.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["profile", "interleave"])]
    pub dump_inputs: Option<PathBuf>,
    /// Internal: run one variant in this process and print its JSON line.
    #[arg(long, hide = true)]
    pub child: bool,
    #[command(flatten)]
    pub pruning: PruningArgs,
}

/// One row of a bench: a manifest, how its N:M layers run, and its token pruning.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub manifest: PathBuf,
    pub kernel: SparseKernel,
    pub pruning: PruningConfig,
}

/// Every manifest (with its `--sparse-kernel`) under every pruning setting, in that
/// order: a manifest's settings side by side.
fn variants(args: &BenchArgs) -> anyhow::Result<Vec<Variant>> {
    let kernels = kernels_per_variant(args)?;
    let settings = args.pruning.variants(&PruningConfig::default());
    let mut out = Vec::with_capacity(kernels.len() * settings.len());
    for (manifest, kernel) in args.manifests.iter().zip(kernels) {
        for pruning in &settings {
            out.push(Variant {
                manifest: manifest.clone(),
                kernel,
                pruning: pruning.clone(),
            });
        }
    }
    Ok(out)
}

/// One variant's result in one round (what a child prints).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundResult {
    pub frames: usize,
    /// Frame time percentiles (nearest rank); `median_ms` is the p50.
    pub median_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    /// 1000 / `median_ms`.
    pub fps: f64,
    /// Heap allocations per frame in steady state (the daemon's hot path), every
    /// thread; `None` when the counting allocator is not installed (library use).
    pub allocs_per_frame: Option<f64>,
    /// Of those, the ones made inside the segmenter plan's runs (tract, and maskd's
    /// ops that tract calls) ...
    pub tract_allocs_per_frame: Option<f64>,
    /// ... and all the others (maskd's pre- and postprocessing, publishing, the client).
    pub maskd_allocs_per_frame: Option<f64>,
    pub stages: Stages,
    /// FRAME messages the publisher sent to the client, and dropped (queue full).
    pub published: u64,
    pub publish_dropped: u64,
    /// Resident set after the timed frames, and its peak, in bytes.
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
    pub load_s: f64,
    /// `--profile`: median frame time while profiling and the plan's operators.
    #[serde(default)]
    pub profile: Option<ProfileResult>,
    /// With a pruning schedule: heap allocations per frame in the pruner (scoring,
    /// top-k, gather, scatter), part of `maskd_allocs_per_frame`; meant to be 0.
    #[serde(default)]
    pub select_allocs_per_frame: Option<f64>,
}

/// Each stage of the frame over the timed frames. Means add up to the frame's mean
/// (less the few clock reads between stages); medians do not add up.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Stages {
    pub preprocess: StageStat,
    pub model: StageStat,
    pub postprocess: StageStat,
    /// `Publisher::publish`: RLE-encoding the masks, building the FRAME, sending it.
    pub encode_and_publish: StageStat,
    /// Parts of `model` with a pruning schedule (0 without): the embed and blocks with
    /// the pruner between them, and the pruner alone.
    #[serde(default)]
    pub encoder: StageStat,
    #[serde(default)]
    pub select: StageStat,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct StageStat {
    pub p50_ms: f64,
    pub mean_ms: f64,
}

impl StageStat {
    fn of(mut ms: Vec<f64>) -> StageStat {
        let mean_ms = ms.iter().sum::<f64>() / ms.len().max(1) as f64;
        StageStat {
            p50_ms: percentile(&mut ms, 0.5),
            mean_ms,
        }
    }

    /// The median over rounds of each figure.
    fn median(rounds: impl Iterator<Item = StageStat> + Clone) -> StageStat {
        StageStat {
            p50_ms: percentile(
                &mut rounds.clone().map(|s| s.p50_ms).collect::<Vec<_>>(),
                0.5,
            ),
            mean_ms: percentile(&mut rounds.map(|s| s.mean_ms).collect::<Vec<_>>(), 0.5),
        }
    }
}

impl Stages {
    fn of(samples: &[FrameSample]) -> Stages {
        let stage = |f: fn(&FrameSample) -> f64| StageStat::of(samples.iter().map(f).collect());
        Stages {
            preprocess: stage(|s| s.preprocess_ms),
            model: stage(|s| s.model_ms),
            postprocess: stage(|s| s.postprocess_ms),
            encode_and_publish: stage(|s| s.publish_ms),
            encoder: stage(|s| s.encoder_ms),
            select: stage(|s| s.select_ms),
        }
    }

    fn median(rounds: &[RoundResult]) -> Stages {
        let stage = |f: fn(&Stages) -> StageStat| {
            StageStat::median(rounds.iter().map(move |r| f(&r.stages)))
        };
        Stages {
            preprocess: stage(|s| s.preprocess),
            model: stage(|s| s.model),
            postprocess: stage(|s| s.postprocess),
            encode_and_publish: stage(|s| s.encode_and_publish),
            encoder: stage(|s| s.encoder),
            select: stage(|s| s.select),
        }
    }
}

/// Where one variant's frame goes (`--profile`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProfileResult {
    /// Mean over the profiled frames, like the operators' times (a median here would
    /// not add up with them on a machine whose speed drifts).
    pub frame_ms: f64,
    pub ops: Vec<OpRow>,
}

/// The speed and size figures every bench table starts with (both modes).
#[derive(Debug, Clone, Serialize)]
pub struct Speed {
    pub manifest: PathBuf,
    pub sparse_kernel: SparseKernel,
    /// The token pruning setting (`none`: the full graph).
    pub pruning: String,
    /// Bytes of the segmenter's files on disk (its graph and external weights).
    pub model_bytes: u64,
    pub median_ms: f64,
    pub fps: f64,
    /// Against the first variant: [`paired_ratio`] of their frame times.
    pub fps_ratio: f64,
    pub model_bytes_ratio: f64,
}

impl Speed {
    /// The figures of one variant; ratios are 1 until [`Speed::against`] sets them.
    fn new(variant: &Variant, median_ms: f64) -> anyhow::Result<Speed> {
        Ok(Speed {
            manifest: variant.manifest.clone(),
            sparse_kernel: variant.kernel,
            pruning: pruning::label(&variant.pruning),
            model_bytes: model_bytes(&variant.manifest)?,
            median_ms,
            fps: 1e3 / median_ms.max(1e-9),
            fps_ratio: 1.0,
            model_bytes_ratio: 1.0,
        })
    }

    /// Sets the ratios against the first variant, `base_bytes` being its model size.
    fn against(&mut self, base_bytes: u64, fps_ratio: f64) {
        self.fps_ratio = fps_ratio;
        self.model_bytes_ratio = self.model_bytes as f64 / base_bytes.max(1) as f64;
    }

    /// The cells under [`speed_header`].
    fn cells(&self) -> String {
        format!(
            "{:<40} {:>7} {:<24} {:>9.1} {:>7.2} {:>7.2} {:>10.2} {:>7.2}",
            self.manifest.display().to_string(),
            format!("{:?}", self.sparse_kernel).to_lowercase(),
            self.pruning,
            self.median_ms,
            self.fps,
            self.fps_ratio,
            self.model_bytes as f64 / 1e6,
            self.model_bytes_ratio
        )
    }
}

/// A variant's summary over rounds: each figure is the median of the rounds' (RSS:
/// the largest).
#[derive(Debug, Clone, Serialize)]
pub struct VariantSummary {
    #[serde(flatten)]
    pub speed: Speed,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub allocs_per_frame: Option<f64>,
    pub tract_allocs_per_frame: Option<f64>,
    pub maskd_allocs_per_frame: Option<f64>,
    pub select_allocs_per_frame: Option<f64>,
    pub stages: Stages,
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
    pub rounds: Vec<RoundResult>,
}

/// What `maskd bench --json` prints (the default, per-process mode).
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub maskd_version: &'static str,
    pub threads: usize,
    pub frames: usize,
    pub rounds: usize,
    pub prompts: Vec<String>,
    pub image: PathBuf,
    pub mask_width: u32,
    pub mask_height: u32,
    pub variants: Vec<VariantSummary>,
}

/// Runs `maskd bench`.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if args.child {
        let manifest = args
            .manifests
            .first()
            .context("bench --child needs one --manifest")?;
        let variant = Variant {
            manifest: manifest.clone(),
            kernel: args
                .sparse_kernels
                .first()
                .copied()
                .unwrap_or(SparseKernel::Auto),
            pruning: args
                .pruning
                .variants(&PruningConfig::default())
                .into_iter()
                .next()
                .unwrap_or_default(),
        };
        let result = run_variant(args, &variant)?;
        println!("{}", serde_json::to_string(&result)?);
        return Ok(());
    }
    let variants = variants(args)?;
    if let Some(dir) = &args.dump_inputs {
        let variant = variants
            .first()
            .context("--dump-inputs needs a --manifest")?;
        let header = dump::run(args, variant, dir)?;
        let files: Vec<&str> = header
            .inputs
            .iter()
            .chain(&header.outputs)
            .map(|t| t.file.as_str())
            .collect();
        eprintln!(
            "bench: wrote {} and inputs.json into {}",
            files.join(", "),
            dir.display()
        );
        return Ok(());
    }
    if args.interleave {
        let rows = interleave::run(args, &variants)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            interleave::print(args, &rows);
        }
        return Ok(());
    }
    let exe = std::env::current_exe().context("finding the maskd executable")?;
    let mut rounds: Vec<Vec<RoundResult>> = vec![Vec::new(); variants.len()];
    for round in 0..args.rounds.max(1) {
        for i in turn_order(variants.len(), round) {
            let v = &variants[i];
            eprintln!(
                "bench: round {}/{} {} ({:?}, pruning {})",
                round + 1,
                args.rounds.max(1),
                v.manifest.display(),
                v.kernel,
                pruning::label(&v.pruning)
            );
            rounds[i].push(run_child(&exe, args, v)?);
        }
    }
    let summaries = summarise(&variants, rounds)?;
    if args.json {
        let report = BenchReport {
            maskd_version: env!("CARGO_PKG_VERSION"),
            threads: args.threads.max(1),
            frames: args.frames.max(1),
            rounds: args.rounds.max(1),
            prompts: args.prompts.clone(),
            image: args.image.clone(),
            mask_width: frame::MASK_SIZE.0,
            mask_height: frame::MASK_SIZE.1,
            variants: summaries,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(args, &summaries);
        if args.profile {
            print_profiles(&summaries);
        }
    }
    Ok(())
}

fn kernels_per_variant(args: &BenchArgs) -> anyhow::Result<Vec<SparseKernel>> {
    let n = args.manifests.len();
    match args.sparse_kernels.len() {
        0 => Ok(vec![SparseKernel::Auto; n]),
        1 => Ok(vec![args.sparse_kernels[0]; n]),
        k if k == n => Ok(args.sparse_kernels.clone()),
        k => bail!(
            "--sparse-kernel given {k} times for {n} --manifest: give one, or one per manifest"
        ),
    }
}

fn run_child(exe: &Path, args: &BenchArgs, variant: &Variant) -> anyhow::Result<RoundResult> {
    let manifest = &variant.manifest;
    let mut cmd = Command::new(exe);
    cmd.arg("bench")
        .arg("--child")
        .arg("--manifest")
        .arg(manifest)
        .arg("--sparse-kernel")
        .arg(variant.kernel.as_str())
        .args(pruning::flags(&variant.pruning))
        .arg("--device")
        .arg(args.device.as_str())
        .arg("--threads")
        .arg(args.threads.to_string())
        .arg("--image")
        .arg(&args.image)
        .arg("--frames")
        .arg(args.frames.to_string());
    if args.profile {
        cmd.arg("--profile");
    }
    if args.per_node {
        cmd.arg("--per-node");
    }
    for p in &args.prompts {
        cmd.arg("--prompt").arg(p);
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The child's own error line already names the manifest and the reason; its
        // log lines before it are noise here.
        let reason = stderr
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("maskd: error: "))
            .unwrap_or_else(|| stderr.trim());
        let shown = manifest.display().to_string();
        if reason.starts_with(&shown) {
            bail!("{reason}");
        }
        bail!("{shown}: {reason}");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("bench child printed {line:?}"))
}

/// One variant in this process: load, encode prompts, warm up, time `frames` frames.
fn run_variant(args: &BenchArgs, variant: &Variant) -> anyhow::Result<RoundResult> {
    let mut v = Loaded::new(args, variant)?;
    let frames = args.frames.max(1);
    let mut samples = Vec::with_capacity(frames);
    let published_before = v.published();
    let allocs_before = alloc::count();
    for seq in 0..frames as u64 {
        samples.push(v.frame(3 + seq)?);
    }
    let allocs_after = alloc::count();
    let published_after = v.published();
    let per_frame = |n: u64| n as f64 / frames as f64;
    let allocs = allocs_after
        .zip(allocs_before)
        .map(|(after, before)| after.saturating_sub(before));
    let tract_allocs: Option<u64> = samples.iter().map(|s| s.model_allocs).sum();
    let select_allocs: Option<u64> = match v.engine.pruning() {
        Some(_) => samples.iter().map(|s| s.select_allocs).sum(),
        None => None,
    };
    let (rss_bytes, peak_rss_bytes) = rss();
    let profile = if args.profile {
        v.engine.enable_profile(args.per_node);
        let mut frame_times = Vec::with_capacity(args.frames);
        for seq in 0..args.frames.max(1) as u64 {
            frame_times.push(v.frame(1000 + seq)?.total_ms);
        }
        Some(ProfileResult {
            frame_ms: frame_times.iter().sum::<f64>() / frame_times.len().max(1) as f64,
            ops: v.engine.profile().map(|p| p.rows()).unwrap_or_default(),
        })
    } else {
        None
    };
    let mut times: Vec<f64> = samples.iter().map(|s| s.total_ms).collect();
    let median_ms = percentile(&mut times, 0.5);
    Ok(RoundResult {
        frames,
        median_ms,
        p90_ms: percentile(&mut times, 0.9),
        p99_ms: percentile(&mut times, 0.99),
        mean_ms: times.iter().sum::<f64>() / frames as f64,
        fps: 1e3 / median_ms.max(1e-9),
        allocs_per_frame: allocs.map(per_frame),
        tract_allocs_per_frame: tract_allocs.map(per_frame),
        maskd_allocs_per_frame: allocs
            .zip(tract_allocs)
            .map(|(all, tract)| per_frame(all.saturating_sub(tract))),
        stages: Stages::of(&samples),
        published: published_after.0.saturating_sub(published_before.0),
        publish_dropped: published_after.1.saturating_sub(published_before.1),
        rss_bytes,
        peak_rss_bytes,
        load_s: v.load_s,
        profile,
        select_allocs_per_frame: select_allocs.map(per_frame),
    })
}

fn summarise(
    variants: &[Variant],
    rounds: Vec<Vec<RoundResult>>,
) -> anyhow::Result<Vec<VariantSummary>> {
    let mut out: Vec<VariantSummary> = Vec::new();
    for (variant, rounds) in variants.iter().zip(rounds) {
        let median = |f: fn(&RoundResult) -> f64| {
            percentile(&mut rounds.iter().map(f).collect::<Vec<_>>(), 0.5)
        };
        let median_some = |f: fn(&RoundResult) -> Option<f64>| {
            let mut v: Vec<f64> = rounds.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| percentile(&mut v, 0.5))
        };
        out.push(VariantSummary {
            speed: Speed::new(variant, median(|r| r.median_ms))?,
            p50_ms: median(|r| r.median_ms),
            p90_ms: median(|r| r.p90_ms),
            p99_ms: median(|r| r.p99_ms),
            allocs_per_frame: median_some(|r| r.allocs_per_frame),
            tract_allocs_per_frame: median_some(|r| r.tract_allocs_per_frame),
            maskd_allocs_per_frame: median_some(|r| r.maskd_allocs_per_frame),
            select_allocs_per_frame: median_some(|r| r.select_allocs_per_frame),
            stages: Stages::median(&rounds),
            rss_bytes: rounds.iter().map(|r| r.rss_bytes).max().unwrap_or(0),
            peak_rss_bytes: rounds.iter().map(|r| r.peak_rss_bytes).max().unwrap_or(0),
            rounds,
        });
    }
    if let Some((base_ms, base_bytes)) = out.first().map(|b| (round_ms(b), b.speed.model_bytes)) {
        for v in &mut out {
            let ratio = paired_ratio(&base_ms, &round_ms(v));
            v.speed.against(base_bytes, ratio);
        }
    }
    Ok(out)
}

/// The order variants take their turn `n`: reversed on odd turns, so that none always
/// goes first.
fn turn_order(variants: usize, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..variants).collect();
    if n % 2 == 1 {
        order.reverse();
    }
    order
}

fn round_ms(v: &VariantSummary) -> Vec<f64> {
    v.rounds.iter().map(|r| r.median_ms).collect()
}

/// Speed of `variant` relative to `base`: the median over rounds (or interleaved
/// frames) of the two variants' ratio in that round. Rounds run the variants back to back, so a shift of the shared
/// machine's speed between rounds (seen here as bimodal round medians, ±30 %) cancels
/// within each pair instead of landing on whichever variant it happened to hit.
fn paired_ratio(base: &[f64], variant: &[f64]) -> f64 {
    let mut ratios: Vec<f64> = base
        .iter()
        .zip(variant)
        .map(|(b, v)| b / v.max(1e-9))
        .collect();
    if ratios.is_empty() {
        return 1.0;
    }
    percentile(&mut ratios, 0.5)
}

/// `--profile`: for each variant, its operators' time per frame (last round), largest
/// first, and what the frame spends outside the plan (pre- and postprocessing, encoding).
fn print_profiles(rows: &[VariantSummary]) {
    for r in rows {
        let Some(p) = r.rounds.last().and_then(|round| round.profile.as_ref()) else {
            continue;
        };
        println!(
            "\nprofile: {} ({}), {:.1} ms/frame while profiled (means)",
            r.speed.manifest.display(),
            format!("{:?}", r.speed.sparse_kernel).to_lowercase(),
            p.frame_ms
        );
        // Rows under 0.5 % of the frame are summed into the plan total only.
        let shown = |ms: f64| ms >= 0.005 * p.frame_ms;
        let w = p
            .ops
            .iter()
            .filter(|op| shown(op.ms_per_run))
            .map(|op| op.op.len())
            .max()
            .unwrap_or(0)
            .max(28);
        println!(
            "  {:<w$} {:>9} {:>8} {:>8}",
            "operator", "ms/frame", "% frame", "nodes"
        );
        let mut in_plan = 0.0;
        for op in &p.ops {
            in_plan += op.ms_per_run;
            if shown(op.ms_per_run) {
                println!(
                    "  {:<w$} {:>9.2} {:>8.1} {:>8.0}",
                    op.op,
                    op.ms_per_run,
                    100.0 * op.ms_per_run / p.frame_ms.max(1e-9),
                    op.nodes_per_run
                );
            }
        }
        let outside = (p.frame_ms - in_plan).max(0.0);
        println!(
            "  {:<w$} {:>9.2} {:>8.1}",
            "(outside the plan)",
            outside,
            100.0 * outside / p.frame_ms.max(1e-9)
        );
    }
}

fn print_table(args: &BenchArgs, rows: &[VariantSummary]) {
    println!(
        "{} frames x {} rounds, {} thread(s), {} prompt(s); medians; x fps: median of per-round ratios vs the first row",
        args.frames,
        args.rounds.max(1),
        args.threads.max(1),
        args.prompts.len()
    );
    println!(
        "{} {:>7} {:>10} {:>10} {:>8} {:>8} {:>8}",
        speed_header(),
        "p99 ms",
        "RSS MB",
        "peak MB",
        "allocs/f",
        "maskd",
        "tract"
    );
    let allocs = |a: Option<f64>| a.map_or_else(|| "n/a".to_string(), |a| format!("{a:.1}"));
    for r in rows {
        println!(
            "{} {:>7.1} {:>10.1} {:>10.1} {:>8} {:>8} {:>8}",
            r.speed.cells(),
            r.p99_ms,
            r.rss_bytes as f64 / 1e6,
            r.peak_rss_bytes as f64 / 1e6,
            allocs(r.allocs_per_frame),
            allocs(r.maskd_allocs_per_frame),
            allocs(r.tract_allocs_per_frame)
        );
    }
    println!(
        "\nper stage, ms per frame (mean; model = the segmenter plan, publish includes the RLE encoding)"
    );
    println!(
        "{:<40} {:<24} {:>10} {:>8} {:>11} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "manifest",
        "pruning",
        "preprocess",
        "model",
        "postprocess",
        "publish",
        "outside",
        "encoder",
        "select",
        "select %"
    );
    for r in rows {
        let s = &r.stages;
        let outside = s.preprocess.mean_ms + s.postprocess.mean_ms + s.encode_and_publish.mean_ms;
        let whole = outside + s.model.mean_ms;
        println!(
            "{:<40} {:<24} {:>10.3} {:>8.2} {:>11.3} {:>8.3} {:>7.1}% {:>8.2} {:>8.3} {:>8.2}%",
            r.speed.manifest.display().to_string(),
            r.speed.pruning,
            s.preprocess.mean_ms,
            s.model.mean_ms,
            s.postprocess.mean_ms,
            s.encode_and_publish.mean_ms,
            100.0 * outside / whole.max(1e-9),
            s.encoder.mean_ms,
            s.select.mean_ms,
            100.0 * s.select.mean_ms / whole.max(1e-9)
        );
    }
}

/// The columns every bench table starts with (see [`Speed::cells`]).
fn speed_header() -> String {
    format!(
        "{:<40} {:>7} {:<24} {:>9} {:>7} {:>7} {:>10} {:>7}",
        "manifest", "kernel", "pruning", "ms/frame", "fps", "x fps", "model MB", "x size"
    )
}

/// Bytes on disk of the segmenter graph and of the external-data files beside it
/// (`*.bin`, `*.data`), which is where exported weights live.
fn model_bytes(manifest: &Path) -> anyhow::Result<u64> {
    let m = crate::engine::Manifest::load(manifest)?;
    let graph = &m.segmenter.model;
    let mut total = std::fs::metadata(graph)
        .with_context(|| format!("{}", graph.display()))?
        .len();
    if let Some(dir) = graph.parent() {
        let entries = std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if ext == "bin" || ext == "data" {
                total += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    Ok(total)
}

/// Nearest-rank percentile; sorts `v`.
fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let ix = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v[ix]
}

/// (VmRSS, VmHWM) of this process in bytes, 0 where /proc is unavailable.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_pairs_rounds() {
        // A slow machine state in rounds 2 and 3 hits both variants: the paired ratio
        // stays 2, the ratio of the two medians would not.
        let base = [100.0, 200.0, 200.0, 100.0, 100.0];
        let fast = [50.0, 100.0, 100.0, 50.0, 100.0];
        assert_eq!(paired_ratio(&base, &fast), 2.0);
        assert_eq!(paired_ratio(&[], &[]), 1.0);
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&mut v, 0.5), 3.0);
        assert_eq!(percentile(&mut v, 0.9), 5.0);
        assert!(percentile(&mut [], 0.5).is_nan());
    }

    #[test]
    fn rss_reads_proc() {
        let (rss, peak) = rss();
        assert!(rss > 0, "VmRSS not read");
        assert!(peak >= rss, "peak {peak} below current {rss}");
    }

    #[test]
    fn kernels_are_one_or_one_per_manifest() {
        let mut args = BenchArgs {
            manifests: vec!["a.toml".into(), "b.toml".into()],
            sparse_kernels: vec![],
            threads: 1,
            device: Device::Auto,
            prompts: vec![],
            image: "x.jpg".into(),
            frames: 1,
            rounds: 1,
            json: false,
            profile: false,
            per_node: false,
            interleave: false,
            dump_inputs: None,
            child: false,
            pruning: PruningArgs::default(),
        };
        assert_eq!(
            kernels_per_variant(&args).ok(),
            Some(vec![SparseKernel::Auto; 2])
        );
        args.sparse_kernels = vec![SparseKernel::Dense, SparseKernel::Sparse];
        assert_eq!(
            kernels_per_variant(&args).ok(),
            Some(vec![SparseKernel::Dense, SparseKernel::Sparse])
        );
        args.sparse_kernels = vec![SparseKernel::Dense; 3];
        assert!(kernels_per_variant(&args).is_err());
    }
}
