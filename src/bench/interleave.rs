//! `maskd bench --interleave`: every variant loaded in one process, frames alternating
//! between them.
//!
//! On this project's shared build machine the speed of a whole process shifts by
//! ±30 % from one run to the next (round medians are bimodal, the slow mode adding
//! ~20 ms to every model alike), which per-process rounds can only average away.
//! Here each frame of one variant has a frame of every other within ~0.1 s, and the
//! speed ratio is the median of those neighbours' ratios. What it cannot give is each
//! variant's own memory, which the default mode measures in separate processes.

use serde::Serialize;

use super::{
    model_bytes, paired_ratio, percentile, speed_cells, speed_header, turn_order, BenchArgs,
    KernelArg, Loaded,
};

/// One variant's figures from an interleaved run.
#[derive(Debug, Clone, Serialize)]
pub struct InterleavedSummary {
    pub manifest: std::path::PathBuf,
    pub sparse_kernel: KernelArg,
    pub model_bytes: u64,
    pub median_ms: f64,
    pub fps: f64,
    /// Median over steps of (first variant's frame time / this variant's): [`paired_ratio`].
    pub fps_ratio: f64,
    pub model_bytes_ratio: f64,
    pub frames: usize,
}

pub fn run(args: &BenchArgs, kernels: &[KernelArg]) -> anyhow::Result<Vec<InterleavedSummary>> {
    let mut loaded = Vec::with_capacity(args.manifests.len());
    for (manifest, &kernel) in args.manifests.iter().zip(kernels) {
        eprintln!("bench: loading {} ({kernel:?})", manifest.display());
        loaded.push(Loaded::new(args, manifest, kernel)?);
    }
    let steps = args.frames.max(1) * args.rounds.max(1);
    let mut times = vec![Vec::with_capacity(steps); loaded.len()];
    for step in 0..steps {
        for i in turn_order(loaded.len(), step) {
            times[i].push(loaded[i].frame(10 + step as u64)?);
        }
    }
    let base = times.first().cloned().unwrap_or_default();
    let mut out: Vec<InterleavedSummary> = Vec::with_capacity(loaded.len());
    for ((manifest, &kernel), t) in args.manifests.iter().zip(kernels).zip(times) {
        let median_ms = percentile(&mut t.clone(), 0.5);
        let bytes = model_bytes(manifest)?;
        let base_bytes = out.first().map_or(bytes, |b| b.model_bytes);
        out.push(InterleavedSummary {
            manifest: manifest.clone(),
            sparse_kernel: kernel,
            model_bytes: bytes,
            median_ms,
            fps: 1e3 / median_ms.max(1e-9),
            fps_ratio: paired_ratio(&base, &t),
            model_bytes_ratio: bytes as f64 / base_bytes.max(1) as f64,
            frames: t.len(),
        });
    }
    Ok(out)
}

pub fn print(args: &BenchArgs, rows: &[InterleavedSummary]) {
    println!(
        "{} frames per variant, interleaved, {} thread(s), {} prompt(s); medians; x fps: median of neighbouring frames' ratios vs the first row",
        args.frames.max(1) * args.rounds.max(1),
        args.threads.max(1),
        args.prompts.len()
    );
    println!("{}", speed_header());
    for r in rows {
        println!(
            "{}",
            speed_cells(
                &r.manifest,
                r.sparse_kernel,
                r.median_ms,
                r.fps,
                r.fps_ratio,
                r.model_bytes,
                r.model_bytes_ratio
            )
        );
    }
}
