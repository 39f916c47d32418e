//! One property suite, stamped on every kernel by [`kernel_suite!`]: random shapes
//! (including 1, odd sizes, K not a multiple of M, N not a multiple of the lane
//! count), random patterns the kernel covers, all-zero groups, optional bias,
//! compared with an f64 scalar reference on the decompressed matrix. A kernel the
//! CPU cannot run is skipped (the test passes and says so on stderr).

use super::*;
use proptest::prelude::*;

/// `y = x · W + b` in f64, plus `sum |x w| + |b|` per output to scale the tolerance.
fn reference(
    w: &[f32],
    k: usize,
    n: usize,
    bias: Option<&[f32]>,
    x: &[f32],
    t: usize,
) -> (Vec<f64>, Vec<f64>) {
    let mut y = vec![0f64; t * n];
    let mut mag = vec![0f64; t * n];
    for r in 0..t {
        for c in 0..n {
            let b = bias.map_or(0.0, |b| b[c] as f64);
            let (mut s, mut a) = (b, b.abs());
            for i in 0..k {
                let p = x[r * k + i] as f64 * w[i * n + c] as f64;
                s += p;
                a += p.abs();
            }
            y[r * n + c] = s;
            mag[r * n + c] = a;
        }
    }
    (y, mag)
}

/// Runs `mm` and compares with the reference: `|y - ref| <= (K + 4) eps sum|x w|`.
fn check(
    mm: &PackedSpmm,
    m: &NmMatrix,
    bias: Option<&[f32]>,
    x: &[f32],
    t: usize,
) -> Result<(), TestCaseError> {
    let (k, n) = (m.k(), m.n());
    let (want, mag) = reference(&m.to_dense(), k, n, bias, x, t);
    // Poison y: the kernel must overwrite every element.
    let mut y = vec![f32::NAN; t * n];
    mm.run(x, t, &mut y);
    for (i, ((&got, &want), &mag)) in y.iter().zip(&want).zip(&mag).enumerate() {
        let tol = (k as f64 + 4.0) * f32::EPSILON as f64 * mag + 1e-30;
        prop_assert!(
            (got as f64 - want).abs() <= tol,
            "{}: t={t} k={k} n={n} {}: y[{}, {}] = {got}, want {want} (tol {tol:e})",
            mm.kernel_name(),
            m.pattern(),
            i / n,
            i % n
        );
    }
    // Splitting rows over threads gives the same bits.
    let mut y2 = vec![f32::NAN; t * n];
    mm.run_parallel(x, t, &mut y2, 2);
    prop_assert!(
        y.iter().zip(&y2).all(|(a, b)| a.to_bits() == b.to_bits()),
        "run_parallel differs"
    );
    Ok(())
}

/// Weights with plenty of exact zeros so whole groups are often empty.
fn values(len: usize) -> impl Strategy<Value = Vec<f32>> {
    proptest::collection::vec(prop_oneof![2 => Just(0.0f32), 3 => -2.0f32..2.0], len)
}

#[derive(Debug, Clone)]
struct Case {
    pattern: NmPattern,
    t: usize,
    k: usize,
    n: usize,
    w: Vec<f32>,
    x: Vec<f32>,
    bias: Option<Vec<f32>>,
}

/// Shapes are biased towards small and boundary values; `ms` lists allowed M.
fn case(ms: &'static [usize]) -> impl Strategy<Value = Case> {
    let dim = |max: usize| prop_oneof![1 => Just(1usize), 4 => 1..max].boxed();
    case_in(ms, dim(30), dim(80), dim(70))
}

/// A case with `M` from `ms` and `T`, `K`, `N` drawn from the given strategies.
fn case_in(
    ms: &'static [usize],
    t: BoxedStrategy<usize>,
    k: BoxedStrategy<usize>,
    n: BoxedStrategy<usize>,
) -> impl Strategy<Value = Case> {
    (proptest::sample::select(ms), t, k, n)
        .prop_flat_map(|(m, t, k, n)| {
            (
                (1..m).prop_map(move |pn| NmPattern::new(pn, m).unwrap()),
                Just((t, k, n)),
                values(k * n),
                proptest::collection::vec(-2.0f32..2.0, t * k),
                proptest::option::of(values(n)),
            )
        })
        .prop_map(|(pattern, (t, k, n), w, x, bias)| Case {
            pattern,
            t,
            k,
            n,
            w,
            x,
            bias,
        })
}

const ANY_M: &[usize] = &[2, 3, 4, 5, 7, 8, 9, 16];
const M_DIVIDES_16: &[usize] = &[2, 4, 8, 16];
const M_DIVIDES_8: &[usize] = &[2, 4, 8];
const M_DIVIDES_4: &[usize] = &[2, 4];

fn run_case(
    build: fn(&NmMatrix, Option<&[f32]>) -> Option<PackedSpmm>,
    c: &Case,
) -> Result<(), TestCaseError> {
    let m = NmMatrix::from_dense_pruned(&c.w, c.k, c.n, c.pattern).unwrap();
    let Some(mm) = build(&m, c.bias.as_deref()) else {
        return Ok(());
    };
    check(&mm, &m, c.bias.as_deref(), &c.x, c.t)
}

fn run_shared(
    build: fn(&NmMatrix, Option<&[f32]>) -> Option<PackedSpmm>,
    c: &Case,
    share: usize,
) -> Result<(), TestCaseError> {
    let m = NmMatrix::from_dense_pruned_shared(&c.w, c.k, c.n, c.pattern, share).unwrap();
    let Some(mm) = build(&m, c.bias.as_deref()) else {
        return Ok(());
    };
    check(&mm, &m, c.bias.as_deref(), &c.x, c.t)
}

/// A fixed case: deterministic weights and inputs from the shape.
fn fixed(pattern: NmPattern, t: usize, k: usize, n: usize, bias: bool) -> Case {
    let f = |i: usize, s: usize| (((i * 2654435761 + s) % 1000) as f32 / 250.0) - 2.0;
    Case {
        pattern,
        t,
        k,
        n,
        w: (0..k * n)
            .map(|i| if i % 7 == 3 { 0.0 } else { f(i, 1) })
            .collect(),
        x: (0..t * k).map(|i| f(i, 2)).collect(),
        bias: bias.then(|| (0..n).map(|i| f(i, 3)).collect()),
    }
}

/// Builds for `kind`, or `None` (skip, with a note) when the CPU cannot run it.
fn build_for(kind: KernelKind, m: &NmMatrix, bias: Option<&[f32]>) -> Option<PackedSpmm> {
    if let Err(e) = kind.check_available() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| eprintln!("skipping: {e}"));
        return None;
    }
    Some(PackedSpmm::with_kernel(m, bias, kind).expect("available kernel covers the pattern"))
}

macro_rules! kernel_suite {
    ($name:ident, $ms:expr, $build:expr) => {
        mod $name {
            use super::*;

            fn build(m: &NmMatrix, bias: Option<&[f32]>) -> Option<PackedSpmm> {
                $build(m, bias)
            }

            proptest! {
                #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
                #[test]
                fn matches_reference(c in case($ms)) {
                    run_case(build, &c)?;
                }

                /// Runs of 2-4 columns with one pattern: the token kernel's shared
                /// slots (one input load for both columns of a pair).
                #[test]
                fn matches_reference_shared(c in case($ms), share in 2usize..5) {
                    run_shared(build, &c, share)?;
                }
            }

            fn fixed_case(p: NmPattern, t: usize, k: usize, n: usize, bias: bool) {
                if $ms.contains(&p.m()) {
                    run_case(build, &fixed(p, t, k, n, bias)).unwrap();
                }
            }

            #[test]
            fn model_shapes_2_4() {
                // The default model's GEMMs at a token count that leaves row tails.
                for (k, n) in [(192, 576), (192, 192), (192, 768), (768, 192)] {
                    fixed_case(NmPattern::TWO_FOUR, 13, k, n, true);
                }
            }

            /// A row's bits do not depend on the block it runs in (what makes
            /// `run_parallel` exact): 49-52 rows at once (the token kernel's
            /// 6-vector block and its 1, 2, 3 or 4 rider rows) against each row
            /// alone, plain and pair-shared.
            #[test]
            fn rows_do_not_depend_on_blocking() {
                for t in [49, 50, 51, 52] {
                    let (k, n) = (192, 72);
                    let c = fixed(NmPattern::TWO_FOUR, t, k, n, true);
                    for share in [1, 2] {
                        let m = NmMatrix::from_dense_pruned_shared(&c.w, k, n, c.pattern, share)
                            .unwrap();
                        let Some(mm) = build(&m, c.bias.as_deref()) else {
                            return;
                        };
                        let mut all = vec![f32::NAN; t * n];
                        mm.run(&c.x, t, &mut all);
                        let mut one = vec![f32::NAN; n];
                        for r in 0..t {
                            mm.run(&c.x[r * k..(r + 1) * k], 1, &mut one);
                            let same = one
                                .iter()
                                .zip(&all[r * n..(r + 1) * n])
                                .all(|(a, b)| a.to_bits() == b.to_bits());
                            assert!(
                                same,
                                "{}: share {share}, row {r} differs alone",
                                mm.kernel_name()
                            );
                        }
                    }
                }
            }

            /// K = 5 with 2:4: the tail group has one real row, so one kept slot
            /// points into the padding; x must not be read past its row.
            #[test]
            fn tail_group_with_padding_slot() {
                fixed_case(NmPattern::TWO_FOUR, 3, 5, 17, false);
                fixed_case(NmPattern::new(3, 4).unwrap(), 2, 1, 1, true);
            }

            /// One row, one column, K below one chunk: every path is a tail.
            #[test]
            fn all_tails() {
                for m in [2, 4, 8, 16] {
                    fixed_case(NmPattern::new(1, m).unwrap(), 1, 3, 1, true);
                    fixed_case(NmPattern::new(m - 1, m).unwrap(), 7, 17, 33, true);
                }
            }

            /// T spanning several 48-row panels of the x86 kernels, with a row tail.
            #[test]
            fn several_row_panels() {
                fixed_case(NmPattern::TWO_FOUR, 101, 40, 37, true);
            }

            /// K longer than the NEON kernel's 512-input panel: later K-chunks
            /// accumulate onto y; M = 3 makes the chunk 510 long.
            #[test]
            fn long_k_several_chunks() {
                fixed_case(NmPattern::TWO_FOUR, 9, 1100, 10, true);
                fixed_case(NmPattern::new(2, 3).unwrap(), 3, 1100, 5, true);
            }

            /// Patterns whose slot count needs two index vectors per tile.
            #[test]
            fn dense_patterns_two_index_vectors() {
                fixed_case(NmPattern::new(15, 16).unwrap(), 5, 40, 20, false);
                fixed_case(NmPattern::new(7, 8).unwrap(), 5, 40, 20, false);
            }
        }
    };
}

kernel_suite!(generic_kernel, ANY_M, |m, b| build_for(
    KernelKind::Generic,
    m,
    b
));
kernel_suite!(emu8_colsimd, M_DIVIDES_8, |m, b| PackedSpmm::emulated(
    m,
    b,
    Emu::Lanes8
));
kernel_suite!(emu8_inlane_colsimd, M_DIVIDES_4, |m, b| {
    PackedSpmm::emulated(m, b, Emu::Lanes8InLane)
});
kernel_suite!(emu16_colsimd, M_DIVIDES_16, |m, b| PackedSpmm::emulated(
    m,
    b,
    Emu::Lanes16
));
kernel_suite!(avx2_kernel, M_DIVIDES_8, |m, b| build_for(
    KernelKind::Avx2,
    m,
    b
));
kernel_suite!(avx2tok_kernel, ANY_M, |m, b| build_for(
    KernelKind::Avx2Tok,
    m,
    b
));
/// The token-SIMD kernels (AVX2 and NEON, one packed format) cut K into chunks of
/// 128 inputs and N into groups of 768 columns whose partial sums stay on the stack;
/// the shared suite's shapes fit one chunk and one group, so these go past both.
macro_rules! tok_suite {
    ($name:ident, $kind:expr) => {
        mod $name {
            use super::*;

            fn large_case() -> impl Strategy<Value = Case> {
                case_in(
                    ANY_M,
                    (1..110usize).boxed(),
                    (120..420usize).boxed(),
                    (1..300usize).boxed(),
                )
            }

            fn build(m: &NmMatrix, bias: Option<&[f32]>) -> Option<PackedSpmm> {
                build_for($kind, m, bias)
            }

            proptest! {
                #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
                #[test]
                fn several_chunks(c in large_case()) {
                    run_case(build, &c)?;
                }
            }

            /// Pairs of columns with one pattern need no pair slots at all, even when the
            /// pairs are not adjacent (columns are matched within each octet); plain
            /// magnitude 2:4 shares about half its slots (one row per group in common on
            /// average).
            #[test]
            fn shared_slots_follow_the_patterns() {
                let c = fixed(NmPattern::TWO_FOUR, 1, 192, 64, false);
                // Independent magnitudes (`fixed`'s are correlated across columns) and no
                // exact zeros: a zero weight is dropped from its column, which can turn a
                // shared row into a pair slot (no dearer: two loads feed two FMAs).
                let mut s = 0x9E37_79B9_7F4A_7C15u64;
                let w: Vec<f32> = (0..c.k * c.n)
                    .map(|_| {
                        s ^= s << 13;
                        s ^= s >> 7;
                        s ^= s << 17;
                        1.0 + (s >> 40) as f32 / (1u64 << 24) as f32
                    })
                    .collect();
                let paired =
                    NmMatrix::from_dense_pruned_shared(&w, c.k, c.n, c.pattern, 2).unwrap();
                let Some(mm) = build(&paired, None) else {
                    return;
                };
                assert_eq!(mm.shared_fraction(), Some(1.0));
                // Swap columns 1 and 2 of every octet: pairs (0, 2) and (1, 3) now share.
                let mut d = paired.to_dense();
                for r in 0..c.k {
                    for o in (0..c.n).step_by(8) {
                        d.swap(r * c.n + o + 1, r * c.n + o + 2);
                    }
                }
                let swapped = NmMatrix::from_dense_checked(&d, c.k, c.n, c.pattern).unwrap();
                let mm = build(&swapped, None).unwrap();
                assert_eq!(mm.shared_fraction(), Some(1.0));
                let plain = NmMatrix::from_dense_pruned(&w, c.k, c.n, c.pattern).unwrap();
                let f = build(&plain, None).unwrap().shared_fraction().unwrap();
                assert!((0.4..0.9).contains(&f), "{f}");
            }

            /// A column split gives `run`'s bits whatever runs the parts: scoped threads,
            /// nothing (the parts then run on the caller), or every part twice at once.
            #[test]
            fn column_parts_match_run() {
                type Par<'a> = &'a dyn Fn(usize, &(dyn Fn(usize) + Sync));
                let threads: Par = &|parts, each| {
                    std::thread::scope(|s| {
                        for i in 0..parts {
                            s.spawn(move || each(i));
                        }
                    })
                };
                let nothing: Par = &|_, _| {};
                let twice: Par = &|parts, each| {
                    std::thread::scope(|s| {
                        for i in (0..parts).chain(0..parts) {
                            s.spawn(move || each(i));
                        }
                    })
                };
                for (t, k, n) in [(1, 40, 13), (49, 192, 72), (98, 300, 776), (196, 130, 24)] {
                    let c = fixed(NmPattern::TWO_FOUR, t, k, n, true);
                    let m = NmMatrix::from_dense_pruned_shared(&c.w, k, n, c.pattern, 2).unwrap();
                    let Some(mm) = build(&m, c.bias.as_deref()) else {
                        return;
                    };
                    assert_eq!(mm.column_unit(), Some(8));
                    let mut want = vec![f32::NAN; t * n];
                    mm.run(&c.x, t, &mut want);
                    for parts in [1, 2, 3, 5, 200] {
                        for (name, par) in
                            [("threads", threads), ("nothing", nothing), ("twice", twice)]
                        {
                            let mut got = vec![f32::NAN; t * n];
                            mm.run_column_parts(&c.x, t, &mut got, parts, |p, e| par(p, e));
                            let same = got
                                .iter()
                                .zip(&want)
                                .all(|(a, b)| a.to_bits() == b.to_bits());
                            assert!(same, "T={t} N={n}, {parts} parts, par {name}");
                        }
                    }
                }
            }

            /// Two column groups (776 = 768 + 8), three K-chunks with a short one, row
            /// blocks of every height (AVX2: 1..=6 vectors of 8, each with and without 1-4
            /// rider rows, T = 8q + 1..4 up to 52; 97, 98 and 100 = 6 + 6 vectors + riders;
            /// NEON: 1..=12 vectors of 4 with row tails), plain and pair-shared.
            #[test]
            fn group_and_chunk_boundaries() {
                for t in [
                    1, 4, 8, 9, 10, 11, 12, 13, 16, 17, 18, 20, 25, 26, 27, 28, 33, 34, 36, 41, 42,
                    44, 48, 49, 50, 51, 52, 97, 98, 100, 196,
                ] {
                    let c = fixed(NmPattern::TWO_FOUR, t, 300, 776, true);
                    run_case(build, &c).unwrap();
                    run_shared(build, &c, 2).unwrap();
                }
                run_case(
                    build,
                    &fixed(NmPattern::new(3, 7).unwrap(), 41, 257, 775, false),
                )
                .unwrap();
            }
        }
    };
}
tok_suite!(avx2tok_large, KernelKind::Avx2Tok);
tok_suite!(neontok_large, KernelKind::NeonTok);

kernel_suite!(avx512_kernel, M_DIVIDES_16, |m, b| build_for(
    KernelKind::Avx512,
    m,
    b
));
kernel_suite!(neon_kernel, ANY_M, |m, b| build_for(KernelKind::Neon, m, b));
kernel_suite!(neontok_kernel, ANY_M, |m, b| build_for(
    KernelKind::NeonTok,
    m,
    b
));
kernel_suite!(selected_kernel, ANY_M, |m, b| Some(
    PackedSpmm::new(m, b).unwrap()
));

/// What the knob selects, without the skipped list.
fn knob(value: Option<&str>) -> Result<KernelKind, SparseError> {
    select_from(value).map(|s| s.kind)
}

#[test]
fn self_test_passes_every_kernel_this_cpu_runs() {
    for kind in KernelKind::ALL {
        if kind.check_available().is_ok() {
            selftest::check(kind).unwrap();
        }
    }
    assert_eq!(pick().1, Vec::new());
    assert!(skipped_kernels().is_empty());
}

/// A kernel one bias off by 0.01 (the generic kernel with a shifted bias) is caught,
/// and the error names the kernel, the pattern, the shape and the element.
#[test]
fn self_test_catches_a_wrong_kernel() {
    let off_bias = |m: &NmMatrix, b: Option<&[f32]>| {
        let shifted: Vec<f32> = match b {
            Some(b) => b.iter().map(|v| v + 0.01).collect(),
            None => vec![0.01; m.n()],
        };
        PackedSpmm::with_kernel(m, Some(&shifted), KernelKind::Generic)
    };
    let e = selftest::check_with(KernelKind::Avx512, &off_bias).unwrap_err();
    assert!(
        matches!(
            e,
            SparseError::SelfTest {
                kernel: "avx512",
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("2:4, T=1 K=5 N=3: row 0 column 0 gave"),
        "{e}"
    );
    // Exact agreement passes: the generic kernel against itself.
    let same = |m: &NmMatrix, b: Option<&[f32]>| PackedSpmm::with_kernel(m, b, KernelKind::Generic);
    selftest::check_with(KernelKind::Avx2Tok, &same).unwrap();
}

/// A kernel without a column unit runs the whole product itself and never calls `par`.
#[test]
fn column_parts_fall_back_to_run() {
    let c = fixed(NmPattern::TWO_FOUR, 5, 16, 24, true);
    let m = NmMatrix::from_dense_pruned(&c.w, 16, 24, c.pattern).unwrap();
    let g = PackedSpmm::with_kernel(&m, c.bias.as_deref(), KernelKind::Generic).unwrap();
    assert_eq!(g.column_unit(), None);
    let mut want = vec![0.0; 5 * 24];
    g.run(&c.x, 5, &mut want);
    let mut got = vec![f32::NAN; 5 * 24];
    let called = AtomicBool::new(false);
    g.run_column_parts(&c.x, 5, &mut got, 2, |_, _| {
        called.store(true, Ordering::Relaxed)
    });
    assert!(!called.load(Ordering::Relaxed));
    assert_eq!(got, want);
}

#[test]
fn knob_parsing() {
    assert_eq!(knob(None), Ok(best()));
    assert_eq!(knob(Some(" ")), Ok(best()));
    assert_eq!(knob(Some("generic")), Ok(KernelKind::Generic));
    assert_eq!(knob(Some("GENERIC")), Ok(KernelKind::Generic));
    let e = knob(Some("sse9")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "unknown sparse kernel `sse9` (expected one of generic, avx2, avx2tok, avx512, neon, neontok)"
    );
    for kind in KernelKind::ALL {
        let got = knob(Some(kind.name()));
        match kind.check_available() {
            Ok(()) => assert_eq!(got, Ok(kind)),
            Err(e) => assert_eq!(got, Err(e)),
        }
    }
    #[cfg(target_arch = "x86_64")]
    assert!(matches!(
        knob(Some("neon")),
        Err(SparseError::KernelUnavailable { kernel: "neon", .. })
    ));
    #[cfg(target_arch = "aarch64")]
    assert_eq!(knob(Some("neon")), Ok(KernelKind::Neon));
}

#[test]
fn best_is_available_and_named() {
    best().check_available().unwrap();
    let m = NmMatrix::from_dense_pruned(&[1.0; 64], 8, 8, NmPattern::TWO_FOUR).unwrap();
    let g = PackedSpmm::with_kernel(&m, None, KernelKind::Generic).unwrap();
    assert_eq!(g.kernel_name(), "generic_spmm24_f32");
    let b = PackedSpmm::with_kernel(&m, None, best()).unwrap();
    assert!(
        b.kernel_name().starts_with(best().name()),
        "{}",
        b.kernel_name()
    );
    // A pattern the x86 kernels do not cover falls back to generic in `new`.
    let odd = NmMatrix::from_dense_pruned(&[1.0; 64], 8, 8, NmPattern::new(2, 5).unwrap()).unwrap();
    if matches!(selected(), Ok(KernelKind::Avx2 | KernelKind::Avx512)) {
        assert_eq!(
            PackedSpmm::new(&odd, None).unwrap().kernel(),
            KernelKind::Generic
        );
        assert!(PackedSpmm::with_kernel(&odd, None, selected().unwrap()).is_err());
    }
}

#[test]
fn bias_length_is_checked() {
    let m = NmMatrix::from_dense_pruned(&[1.0; 12], 4, 3, NmPattern::TWO_FOUR).unwrap();
    assert_eq!(
        PackedSpmm::with_kernel(&m, Some(&[0.0; 2]), KernelKind::Generic).unwrap_err(),
        SparseError::BiasLength { len: 2, n: 3 }
    );
}
