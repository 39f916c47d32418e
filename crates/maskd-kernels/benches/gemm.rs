//! Dense kernels vs tract's dense matmul on the default model's GEMMs, one thread.
//!
//! `cargo bench -p maskd-kernels --bench gemm [-- --seconds S] [--tokens 196,49]`
//!
//! For every distinct GEMM of the default model (QKV 192->576, proj 192->192, fc1
//! 192->768, fc2 768->192, the decoder's FiLM 256->384 and text 384->256) at the token
//! counts given: tract's plan of one MatMul with the weight as a constant
//! (`into_optimized`, one spawned state, input allocated once) against every dense
//! kernel this CPU runs, each packed once. Outputs are checked against tract first.
//! Calls are interleaved (order alternating) and the speedup taken per repetition, so
//! drift on a shared machine hits both alike; medians are printed, with GFLOP/s.

use std::hint::black_box;
use std::time::Instant;

use maskd_kernels::{dense, DenseKind, PackedGemm};
use tract_core::{ops::einsum::EinSum, prelude::*};

const SHAPES: [(&str, usize, usize); 6] = [
    ("qkv", 192, 576),
    ("proj", 192, 192),
    ("fc1", 192, 768),
    ("fc2", 768, 192),
    ("film", 256, 384),
    ("text", 384, 256),
];

fn noise(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> TractResult<()> {
    let mut seconds = 0.5;
    let mut tokens = vec![196, 588, 49, 3];
    let mut it = std::env::args().skip(1);
    while let Some(s) = it.next() {
        match s.as_str() {
            "--seconds" => seconds = it.next().and_then(|v| v.parse().ok()).unwrap_or(seconds),
            "--tokens" => {
                if let Some(v) = it.next() {
                    tokens = v.split(',').filter_map(|t| t.parse().ok()).collect();
                }
            }
            _ => {}
        }
    }
    let kinds: Vec<DenseKind> = [DenseKind::Avx512, DenseKind::Avx2, DenseKind::Neon]
        .into_iter()
        .filter(|k| k.check_available().is_ok())
        .collect();
    println!(
        "maskd-kernels gemm bench: best `{}`, 1 thread, ~{seconds} s per GEMM",
        dense::best().name()
    );
    print!("\n| GEMM | T | K | N | tract ms | tract GFLOP/s |");
    for k in &kinds {
        print!(" {0} ms | {0} GFLOP/s | tract/{0} |", k.name());
    }
    println!();
    print!("|---|---|---|---|---|---|");
    for _ in &kinds {
        print!("---|---|---|");
    }
    println!();
    for &t in &tokens {
        for (si, &(name, k, n)) in SHAPES.iter().enumerate() {
            let w = noise(k * n, 1 + si as u64);
            let x = noise(t * k, 100 + t as u64);
            let mut model = TypedModel::default();
            let src = model.add_source("x", f32::fact([t, k]))?;
            let wt = model.add_const("w", Tensor::from_shape(&[k, n], &w)?)?;
            let y = model.wire_node(
                "matmul",
                EinSum::new("mk,kn->mn".parse()?, f32::datum_type()),
                &[src, wt],
            )?;
            model.select_output_outlets(&y)?;
            let plan = TypedSimplePlan::new(model.into_optimized()?)?;
            let mut state = plan.spawn()?;
            let input = Tensor::from_shape(&[t, k], &x)?.into_tvalue();
            let want: Vec<f32> = state.run(tvec![input.clone()])?[0]
                .to_plain_array_view::<f32>()?
                .iter()
                .copied()
                .collect();
            let gemms: Vec<PackedGemm> = kinds
                .iter()
                .map(|&kind| PackedGemm::with_kernel(&w, k, n, None, kind))
                .collect::<Result<_, _>>()
                .map_err(|e| TractError::msg(e.to_string()))?;
            let mut ys: Vec<Vec<f32>> = gemms.iter().map(|_| vec![0f32; t * n]).collect();
            for (g, y) in gemms.iter().zip(ys.iter_mut()) {
                g.run(&x, t, y);
                let err = y
                    .iter()
                    .zip(&want)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(err < 1e-3, "{name} T={t} {}: off by {err}", g.kernel_name());
            }
            let flops = 2.0 * (t * k * n) as f64;
            let reps = ((seconds * 50e9 / flops) as usize).clamp(30, 20_000);
            let mut td = vec![];
            let mut tk: Vec<Vec<f64>> = vec![vec![]; gemms.len()];
            let mut ratios: Vec<Vec<f64>> = vec![vec![]; gemms.len()];
            for rep in 0..reps + reps / 10 {
                let tract = |state: &mut TypedSimpleState| -> TractResult<f64> {
                    let start = Instant::now();
                    black_box(state.run(tvec![input.clone()])?);
                    Ok(start.elapsed().as_secs_f64())
                };
                let forward = rep % 2 == 0;
                let mut d = 0.0;
                if forward {
                    d = tract(&mut state)?;
                }
                let mut ts = vec![0.0; gemms.len()];
                for (i, (g, y)) in gemms.iter().zip(ys.iter_mut()).enumerate() {
                    let start = Instant::now();
                    g.run(black_box(&x), t, black_box(y));
                    ts[i] = start.elapsed().as_secs_f64();
                }
                if !forward {
                    d = tract(&mut state)?;
                }
                if rep < reps / 10 {
                    continue;
                }
                td.push(d);
                for i in 0..gemms.len() {
                    tk[i].push(ts[i]);
                    ratios[i].push(d / ts[i]);
                }
            }
            let d = median(&mut td);
            print!(
                "| {name} | {t} | {k} | {n} | {:.4} | {:.0} |",
                d * 1e3,
                flops / d / 1e9
            );
            for i in 0..gemms.len() {
                let m = median(&mut tk[i]);
                print!(
                    " {:.4} | {:.0} | **{:.2}x** |",
                    m * 1e3,
                    flops / m / 1e9,
                    median(&mut ratios[i])
                );
            }
            println!();
        }
    }
    Ok(())
}
