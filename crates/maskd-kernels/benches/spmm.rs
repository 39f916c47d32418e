//! 2:4 sparse kernels vs tract's dense matmul on the default model's GEMMs.
//!
//! `cargo bench -p maskd-kernels [-- --seconds S] [--threads 2] [--generic] [--share 2]
//! [--only fc2] [--tokens 49,32]`
//!
//! For every distinct GEMM of the default model (width 192, MLP 768, 3 heads:
//! QKV 192->576, proj 192->192, fc1 192->768, fc2 768->192) at T = 196, 98, 49:
//!
//! * dense baseline: a tract plan of one MatMul (EinSum `mk,kn->mn`) with the
//!   pruned weight as a constant, `into_optimized()` + `into_runnable()`, one
//!   spawned state, the input tensor allocated once;
//! * every sparse kernel this CPU can run, on the same pruned weight, each packed
//!   once. Outputs are checked against tract before timing.
//!
//! The weights are random, magnitude-pruned to 2:4; with `--share S` each run of
//! `S` output columns keeps one pattern per group (as the default 2:4 model's
//! learned masks do with S = 2), which the token kernel runs with one input load
//! per two FMAs.
//!
//! With `--threads N` (N > 1) both sides run on one rayon pool of N threads, the
//! daemon's arrangement: tract's plan with that pool as its executor, each kernel
//! split as maskd's `NmMatMul` splits it: the token kernels into N parts by columns
//! (`run_column_parts`, when each part gets at least 4 octets), the others by rows
//! into N chunks of whole 8-row vectors; the `Nt/1t` column is the kernel's own
//! scaling.
//!
//! The machine is shared and noisy, so timings are interleaved: each repetition
//! times one call of every variant back to back (order alternating), and the
//! speedup is taken per repetition (tract / sparse of the same repetition). The
//! table prints medians over repetitions, with the 25th-75th percentile of the
//! per-repetition speedup. Trust ratios, not ms.

use std::hint::black_box;
use std::time::Instant;

use maskd_kernels::{best, KernelKind, NmMatrix, NmPattern, PackedSpmm};

#[cfg(not(maskd_no_tract))]
use tract_core::{ops::einsum::EinSum, prelude::*};

const SHAPES: [(&str, usize, usize); 4] = [
    ("qkv", 192, 576),
    ("proj", 192, 192),
    ("fc1", 192, 768),
    ("fc2", 768, 192),
];
const TOKENS: [usize; 3] = [196, 98, 49];

/// Deterministic pseudo-random floats in [-1, 1) (xorshift), no extra dependency.
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

struct Args {
    /// Rough time budget per GEMM (at ~20 GFLOP/s).
    seconds: f64,
    threads: usize,
    generic: bool,
    /// Output columns per shared pattern (1: plain magnitude 2:4).
    share: usize,
    /// Only the GEMMs of this name (to study one shape).
    only: Option<String>,
    /// Token counts (default `TOKENS`).
    tokens: Vec<usize>,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 1.0,
        threads: 1,
        generic: false,
        share: 1,
        only: None,
        tokens: TOKENS.to_vec(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(s) = it.next() {
        match s.as_str() {
            "--seconds" => a.seconds = it.next().and_then(|v| v.parse().ok()).expect("--seconds S"),
            "--threads" => a.threads = it.next().and_then(|v| v.parse().ok()).expect("--threads N"),
            "--generic" => a.generic = true,
            "--share" => a.share = it.next().and_then(|v| v.parse().ok()).expect("--share N"),
            "--only" => a.only = it.next(),
            "--tokens" => {
                a.tokens = it
                    .next()
                    .and_then(|v| v.split(',').map(|t| t.parse().ok()).collect())
                    .expect("--tokens T1,T2,...")
            }
            _ => {} // cargo passes --bench
        }
    }
    a
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let a = args();
    let mut kinds: Vec<KernelKind> = [
        KernelKind::Avx512,
        KernelKind::Avx2,
        KernelKind::Avx2Tok,
        KernelKind::Neon,
        KernelKind::NeonTok,
    ]
    .into_iter()
    .filter(|k| k.check_available().is_ok())
    .collect();
    if a.generic || kinds.is_empty() {
        kinds.push(KernelKind::Generic);
    }
    println!(
        "maskd-kernels spmm bench: pattern 2:4 ({}), best kernel `{}`, {} thread(s), ~{} s per GEMM, cpu: {}",
        if a.share > 1 {
            format!("one pattern per {} output columns", a.share)
        } else {
            "magnitude, every column its own pattern".to_string()
        },
        best().name(),
        a.threads,
        a.seconds,
        cpu_name()
    );
    let pool = Pool::new(a.threads);
    if a.threads > 1 {
        println!("{}", pool.describe());
    }
    print!("\n| GEMM | T | K | N | dense KiB | 2:4 KiB (%) | tract ms |");
    for k in &kinds {
        print!(" {} ms | tract/{} [p25-p75] |", k.name(), k.name());
        if a.threads > 1 {
            print!(" {} {}t/1t |", k.name(), a.threads);
        }
    }
    println!(" max rel err |");
    print!("|---|---|---|---|---|---|---|");
    for _ in &kinds {
        print!("---|---|{}", if a.threads > 1 { "---|" } else { "" });
    }
    println!("---|");

    let mut all_ratios: Vec<Vec<f64>> = vec![vec![]; kinds.len()];
    for &t in &a.tokens {
        for (si, &(name, k, n)) in SHAPES.iter().enumerate() {
            if a.only.as_deref().is_some_and(|o| o != name) {
                continue;
            }
            let w = noise(k * n, 1 + si as u64);
            let x = noise(t * k, 100 + t as u64);
            let sparse =
                NmMatrix::from_dense_pruned_shared(&w, k, n, NmPattern::TWO_FOUR, a.share).unwrap();
            let dense = sparse.to_dense();
            let kernels: Vec<PackedSpmm> = kinds
                .iter()
                .map(|&kind| PackedSpmm::with_kernel(&sparse, None, kind).unwrap())
                .collect();
            let mut ys: Vec<Vec<f32>> = kernels.iter().map(|_| vec![0f32; t * n]).collect();
            let mut dense_run = dense_baseline(&dense, &x, t, k, n, &pool);

            // Check every kernel against the dense result first.
            let want = dense_run.output();
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
            let mut err = 0f32;
            for (mm, y) in kernels.iter().zip(ys.iter_mut()) {
                pool.run(mm, &x, t, n, y);
                for (a, b) in y.iter().zip(&want) {
                    err = err.max((a - b).abs() / scale);
                }
            }
            assert!(
                err < 1e-4,
                "{name} T={t}: kernels disagree with tract (rel err {err:e})"
            );

            // Single calls, interleaved: each repetition times tract and every
            // kernel back to back (order alternating), and the speedup is taken
            // per repetition. A call preempted by another process spoils one
            // repetition, which the median ignores.
            let flops = 2.0 * t as f64 * k as f64 * n as f64;
            let reps = ((a.seconds * 20e9 / flops) as usize).clamp(50, 20_000);
            let mut t_dense = vec![];
            let mut t_sparse: Vec<Vec<f64>> = vec![vec![]; kernels.len()];
            let mut ratios: Vec<Vec<f64>> = vec![vec![]; kernels.len()];
            // With --threads > 1: the same kernel on one thread, for its scaling.
            let mut scaling: Vec<Vec<f64>> = vec![vec![]; kernels.len()];
            for rep in 0..reps + reps / 10 {
                let time = |f: &mut dyn FnMut()| {
                    let start = Instant::now();
                    f();
                    start.elapsed().as_secs_f64()
                };
                let sparse = |i: usize, y: &mut Vec<f32>, threads: usize| {
                    if threads > 1 {
                        time(&mut || pool.run(&kernels[i], black_box(&x), t, n, black_box(y)))
                    } else {
                        time(&mut || kernels[i].run(black_box(&x), t, black_box(y)))
                    }
                };
                let mut ts = vec![0.0; kernels.len()];
                let mut ts1 = vec![0.0; kernels.len()];
                let mut td = 0.0;
                // Alternate the order so neither side always runs first.
                let forward = rep % 2 == 0;
                if forward {
                    td = time(&mut || dense_run.run());
                }
                for j in 0..kernels.len() {
                    let i = if forward { j } else { kernels.len() - 1 - j };
                    ts[i] = sparse(i, &mut ys[i], a.threads);
                    if a.threads > 1 {
                        ts1[i] = sparse(i, &mut ys[i], 1);
                    }
                }
                if !forward {
                    td = time(&mut || dense_run.run());
                }
                if rep < reps / 10 {
                    continue; // warm-up
                }
                t_dense.push(td);
                for i in 0..kernels.len() {
                    t_sparse[i].push(ts[i]);
                    ratios[i].push(td / ts[i]);
                    scaling[i].push(ts1[i] / ts[i]);
                }
            }
            print!(
                "| {name} | {t} | {k} | {n} | {:.0} | {:.0} ({:.1}%) | {:.4} |",
                sparse.dense_bytes() as f64 / 1024.0,
                sparse.compressed_bytes() as f64 / 1024.0,
                100.0 * sparse.compressed_bytes() as f64 / sparse.dense_bytes() as f64,
                median(&mut t_dense) * 1e3
            );
            for i in 0..kernels.len() {
                let r = median(&mut ratios[i]);
                all_ratios[i].push(r);
                print!(
                    " {:.4} | **{:.2}x** [{:.2}-{:.2}] |",
                    median(&mut t_sparse[i]) * 1e3,
                    r,
                    quantile(&mut ratios[i], 0.25),
                    quantile(&mut ratios[i], 0.75)
                );
                if a.threads > 1 {
                    print!(" {:.2}x |", median(&mut scaling[i]));
                }
            }
            println!(" {err:.1e} |");
        }
    }
    println!();
    for (i, k) in kinds.iter().enumerate() {
        let r = &mut all_ratios[i];
        let (min, max) = (quantile(r, 0.0), quantile(r, 1.0));
        let name = kernels_name(*k);
        println!(
            "{name}: tract/sparse speedup over the 12 GEMMs: min {min:.2}x, median {:.2}x, max {max:.2}x",
            median(r)
        );
    }
}

fn kernels_name(k: KernelKind) -> String {
    let m = NmMatrix::from_dense_pruned(&[1.0; 16], 4, 4, NmPattern::TWO_FOUR).unwrap();
    PackedSpmm::with_kernel(&m, None, k)
        .map_or(k.name().to_string(), |p| p.kernel_name().to_string())
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// tract's dense matmul, ready to run repeatedly.
#[cfg(not(maskd_no_tract))]
struct DenseRun {
    state: TypedSimpleState,
    input: TValue,
}

#[cfg(not(maskd_no_tract))]
fn dense_baseline(w: &[f32], x: &[f32], t: usize, k: usize, n: usize, pool: &Pool) -> DenseRun {
    let build = || -> TractResult<DenseRun> {
        let mut model = TypedModel::default();
        let src = model.add_source("x", f32::fact([t, k]))?;
        let wt = model.add_const("w", Tensor::from_shape(&[k, n], w)?)?;
        let y = model.wire_node(
            "matmul",
            EinSum::new("mk,kn->mn".parse()?, f32::datum_type()),
            &[src, wt],
        )?;
        model.select_output_outlets(&y)?;
        let options = RunOptions {
            executor: pool.executor(),
            ..RunOptions::default()
        };
        let plan = TypedSimplePlan::new_with_options(model.into_optimized()?, &options)?;
        let state = plan.spawn()?;
        let input = Tensor::from_shape(&[t, k], x)?.into_tvalue();
        Ok(DenseRun { state, input })
    };
    build().expect("tract dense matmul plan")
}

#[cfg(not(maskd_no_tract))]
impl DenseRun {
    fn run(&mut self) {
        let out = self
            .state
            .run(tvec![self.input.clone()])
            .expect("tract run");
        black_box(out);
    }

    fn output(&mut self) -> Vec<f32> {
        let out = self
            .state
            .run(tvec![self.input.clone()])
            .expect("tract run");
        out[0]
            .to_plain_array_view::<f32>()
            .expect("f32 output")
            .iter()
            .copied()
            .collect()
    }
}

/// Without tract (`--cfg maskd_no_tract`), fall back to the generic kernel as the
/// dense stand-in so the binary still builds; its ratios are not the benchmark.
#[cfg(maskd_no_tract)]
struct DenseRun(PackedSpmm, Vec<f32>, Vec<f32>, usize);

#[cfg(maskd_no_tract)]
fn dense_baseline(w: &[f32], x: &[f32], t: usize, k: usize, n: usize, _: &Pool) -> DenseRun {
    let m = NmMatrix::from_dense_pruned(w, k, n, NmPattern::TWO_FOUR).unwrap();
    let p = PackedSpmm::with_kernel(&m, None, KernelKind::Generic).unwrap();
    DenseRun(p, x.to_vec(), vec![0.0; t * n], t)
}

#[cfg(maskd_no_tract)]
impl DenseRun {
    fn run(&mut self) {
        self.0.run(&self.1, self.3, &mut self.2);
    }

    fn output(&mut self) -> Vec<f32> {
        self.run();
        self.2.clone()
    }
}

/// The threads both sides share with `--threads N`.
#[cfg(not(maskd_no_tract))]
struct Pool(Option<tract_linalg::multithread::Executor>);

#[cfg(not(maskd_no_tract))]
impl Pool {
    fn new(threads: usize) -> Pool {
        Pool((threads > 1).then(|| tract_linalg::multithread::Executor::multithread(threads)))
    }

    fn describe(&self) -> &'static str {
        "note: tract and every kernel run on the same rayon pool (tract as the plan's \
         executor; the token kernels split by columns, one part per thread, the others by \
         rows, one chunk of whole 8-row vectors per thread, as maskd's NmMatMul); `Nt/1t` \
         is the kernel's own scaling"
    }

    fn executor(&self) -> Option<tract_linalg::multithread::Executor> {
        self.0.clone()
    }

    /// `y = x · W` for `t` rows, split over the pool.
    fn run(&self, mm: &PackedSpmm, x: &[f32], t: usize, n: usize, y: &mut [f32]) {
        use tract_linalg::multithread::Executor;
        let Some(Executor::MultiThread(pool)) = &self.0 else {
            mm.run(x, t, y);
            return;
        };
        let threads = pool.current_num_threads();
        if mm.column_unit().is_some_and(|u| n / u >= 4 * threads) {
            mm.run_column_parts(x, t, y, threads, |parts, each| {
                pool.scope(|s| {
                    for i in 0..parts {
                        s.spawn(move |_| each(i));
                    }
                })
            });
            return;
        }
        let k = x.len() / t.max(1);
        let rows = t.div_ceil(threads).next_multiple_of(8);
        pool.scope(|s| {
            for (xc, yc) in x.chunks(rows * k).zip(y.chunks_mut(rows * n)) {
                s.spawn(move |_| mm.run(xc, yc.len() / n, yc));
            }
        });
    }
}

/// Without tract: the kernels' own `run_parallel`.
#[cfg(maskd_no_tract)]
struct Pool(usize);

#[cfg(maskd_no_tract)]
impl Pool {
    fn new(threads: usize) -> Pool {
        Pool(threads)
    }

    fn describe(&self) -> &'static str {
        "note: built without tract: kernels split rows with `run_parallel`"
    }

    fn run(&self, mm: &PackedSpmm, x: &[f32], t: usize, _n: usize, y: &mut [f32]) {
        mm.run_parallel(x, t, y, self.0);
    }
}
