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

use super::{model_bytes, percentile, BenchArgs, KernelArg, Loaded};

/// One variant's figures from an interleaved run.
#[derive(Debug, Clone, Serialize)]
pub struct InterleavedSummary {
    pub manifest: std::path::PathBuf,
    pub sparse_kernel: KernelArg,
    pub model_bytes: u64,
    pub median_ms: f64,
    pub fps: f64,
    /// Median over steps of (first variant's frame time / this variant's).
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
        // Alternate which variant goes first, so neither always follows the other.
        let mut order: Vec<usize> = (0..loaded.len()).collect();
        if step % 2 == 1 {
            order.reverse();
        }
        for i in order {
            times[i].push(loaded[i].frame(10 + step as u64)?);
        }
    }
    let base = times.first().cloned().unwrap_or_default();
    let base_bytes = args.manifests.first().map(|m| model_bytes(m)).transpose()?;
    let mut out = Vec::with_capacity(loaded.len());
    for ((manifest, &kernel), t) in args.manifests.iter().zip(kernels).zip(times) {
        let mut ratios: Vec<f64> = base.iter().zip(&t).map(|(b, v)| b / v.max(1e-9)).collect();
        let mut sorted = t.clone();
        let median_ms = percentile(&mut sorted, 0.5);
        let bytes = model_bytes(manifest)?;
        out.push(InterleavedSummary {
            manifest: manifest.clone(),
            sparse_kernel: kernel,
            model_bytes: bytes,
            median_ms,
            fps: 1e3 / median_ms.max(1e-9),
            fps_ratio: percentile(&mut ratios, 0.5),
            model_bytes_ratio: bytes as f64 / base_bytes.unwrap_or(bytes).max(1) as f64,
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
    println!(
        "{:<40} {:>7} {:>9} {:>7} {:>7} {:>10} {:>7}",
        "manifest", "kernel", "ms/frame", "fps", "x fps", "model MB", "x size"
    );
    for r in rows {
        println!(
            "{:<40} {:>7} {:>9.1} {:>7.2} {:>7.2} {:>10.2} {:>7.2}",
            r.manifest.display().to_string(),
            format!("{:?}", r.sparse_kernel).to_lowercase(),
            r.median_ms,
            r.fps,
            r.fps_ratio,
            r.model_bytes as f64 / 1e6,
            r.model_bytes_ratio
        );
    }
}
