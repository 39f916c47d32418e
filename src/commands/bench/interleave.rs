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
    paired_ratio, percentile, speed_header, turn_order, BenchArgs, Loaded, Speed, Variant,
};

/// One variant's figures from an interleaved run.
#[derive(Debug, Clone, Serialize)]
pub struct InterleavedSummary {
    /// `fps_ratio`: median over steps of (first variant's frame time / this variant's).
    #[serde(flatten)]
    pub speed: Speed,
    pub frames: usize,
}

pub fn run(args: &BenchArgs, variants: &[Variant]) -> anyhow::Result<Vec<InterleavedSummary>> {
    let mut loaded = Vec::with_capacity(variants.len());
    for v in variants {
        eprintln!("bench: loading {} ({:?})", v.manifest.display(), v.kernel);
        loaded.push(Loaded::new(args, v)?);
    }
    let steps = args.frames.max(1) * args.rounds.max(1);
    let mut times = vec![Vec::with_capacity(steps); loaded.len()];
    for step in 0..steps {
        for i in turn_order(loaded.len(), step) {
            times[i].push(loaded[i].frame(10 + step as u64)?.total_ms);
        }
    }
    let base = times.first().cloned().unwrap_or_default();
    let mut out: Vec<InterleavedSummary> = Vec::with_capacity(loaded.len());
    for (v, t) in variants.iter().zip(times) {
        let mut speed = Speed::new(v, percentile(&mut t.clone(), 0.5))?;
        let base_bytes = out
            .first()
            .map_or(speed.model_bytes, |b| b.speed.model_bytes);
        speed.against(base_bytes, paired_ratio(&base, &t));
        out.push(InterleavedSummary {
            speed,
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
        println!("{}", r.speed.cells());
    }
}
