//! Per-shape timing of the fused op with each kernel this CPU has against tract's own
//! unfused graph, on the default model's attention shapes, one thread. An ignored
//! test, so that it builds and runs with the crate's test profile:
//!
//! ```sh
//! cargo test --release --lib attention::bench -- --ignored --nocapture
//! ```
//!
//! Contenders alternate within each round, so a machine busy with other work slows
//! them alike; the table gives the median and the fastest tenth of all calls.
//! `MASKD_ATTENTION_BENCH_ROUNDS` sets the rounds (default 9).

use std::time::{Duration, Instant};

use tract_core::internal::*;

use super::kernel::Kind;
use super::test_graph::{attention_model, values};

/// Name, batch (None: rank-2 input), tokens, tract's einsum forms.
type Shape = (&'static str, Option<usize>, usize, [&'static str; 2]);

const ENCODER: [&str; 2] = ["abmk,abnk->bmn", "bmk,abkn->mbn"];
const DECODER: [&str; 2] = ["abmk,abnk->abmn", "abmk,abkn->ambn"];
const SHAPES: [Shape; 4] = [
    ("encoder B=1 T=196", Some(1), 196, ENCODER),
    ("encoder B=1 T=98", Some(1), 98, ENCODER),
    ("encoder B=1 T=49", Some(1), 49, ENCODER),
    ("decoder B=3 T=196", Some(3), 196, DECODER),
];
const HEADS: usize = 3;
const DIM: usize = 64;
/// Wall time each contender gets per round.
const SLICE: Duration = Duration::from_millis(60);

#[test]
#[ignore = "a benchmark: run with --release --ignored --nocapture"]
fn attention_shapes() {
    let rounds: usize = std::env::var("MASKD_ATTENTION_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(9);
    let kinds: Vec<Kind> = Kind::CANDIDATES
        .iter()
        .copied()
        .filter(|k| k.available())
        .collect();
    println!("attention, {HEADS} heads x {DIM}, 1 thread, {rounds} alternating rounds");
    println!(
        "{:<20} {:<8} {:>9} {:>9} {:>8} {:>9}",
        "shape", "path", "median ms", "p10 ms", "GFLOP/s", "vs tract"
    );
    for (name, batch, tokens, exprs) in SHAPES {
        let model = attention_model(batch, tokens, HEADS, DIM, exprs);
        let b = batch.unwrap_or(1);
        let shape: Vec<usize> = match batch {
            Some(b) => vec![b, tokens, 3 * HEADS * DIM],
            None => vec![tokens, 3 * HEADS * DIM],
        };
        let x = Tensor::from_shape(&shape, &values(shape.iter().product(), 11, 1.0))
            .expect("input")
            .into_tvalue();
        let mut plans = vec![("tract".to_string(), plan(model.clone()))];
        for &kind in &kinds {
            let mut fused = model.clone();
            let n = super::apply_with(&mut fused, kind).expect("rewrite");
            assert_eq!(n, 1, "{name}: the rewrite did not fire");
            plans.push((kind.name().to_string(), plan(fused)));
        }
        let mut times: Vec<Vec<f64>> = vec![vec![]; plans.len()];
        for _ in 0..rounds {
            for (p, (_, plan)) in plans.iter().enumerate() {
                let mut state = plan.spawn().expect("state");
                let start = Instant::now();
                while start.elapsed() < SLICE {
                    let t = Instant::now();
                    let out = state.run(tvec![x.clone()]).expect("run");
                    times[p].push(t.elapsed().as_secs_f64() * 1e3);
                    drop(out);
                }
            }
        }
        let flops = 4.0 * (b * tokens * tokens * HEADS * DIM) as f64;
        let tract_ms = median(&mut times[0].clone());
        for ((path, _), t) in plans.iter().zip(&mut times) {
            let ms = median(t);
            let p10 = t[t.len() / 10];
            println!(
                "{name:<20} {path:<8} {ms:>9.4} {p10:>9.4} {:>8.1} {:>8.2}x",
                flops / ms / 1e6,
                tract_ms / ms
            );
        }
    }
}

fn plan(model: TypedModel) -> Arc<TypedRunnableModel> {
    model
        .into_optimized()
        .expect("optimize")
        .into_runnable()
        .expect("plan")
}

/// Sorts `t` and returns its middle value.
fn median(t: &mut [f64]) -> f64 {
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}
