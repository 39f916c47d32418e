use proptest::prelude::*;

use super::*;

/// Every kernel this CPU runs.
fn kinds() -> Vec<DenseKind> {
    DenseKind::ALL
        .into_iter()
        .filter(|k| k.check_available().is_ok())
        .collect()
}

fn data(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 250.0 - 2.0)
        .collect()
}

/// f64 reference on the unpacked weights.
fn reference(w: &[f32], k: usize, n: usize, bias: Option<&[f32]>, x: &[f32], t: usize) -> Vec<f64> {
    let mut y = vec![0f64; t * n];
    for r in 0..t {
        for c in 0..n {
            let mut acc = bias.map_or(0.0, |b| b[c] as f64);
            for i in 0..k {
                acc += x[r * k + i] as f64 * w[i * n + c] as f64;
            }
            y[r * n + c] = acc;
        }
    }
    y
}

fn check(kind: DenseKind, t: usize, k: usize, n: usize, bias: bool) {
    let w = data(k * n, 7);
    let x = data(t * k, 11);
    let b = bias.then(|| data(n, 13));
    let g = PackedGemm::with_kernel(&w, k, n, b.as_deref(), kind).expect("pack");
    let mut y = vec![f32::NAN; t * n];
    g.run(&x, t, &mut y);
    let want = reference(&w, k, n, b.as_deref(), &x, t);
    // |x|, |w| <= 2: sums of K products of at most 4 each, rounded in f32.
    let tol = 1e-6 * (4 * k + 2) as f64;
    for (i, (got, want)) in y.iter().zip(&want).enumerate() {
        assert!(
            ((*got as f64) - want).abs() <= tol,
            "{} T={t} K={k} N={n} bias={bias}: y[{i}] = {got}, want {want}",
            kind.name()
        );
    }
}

#[test]
fn the_models_shapes_match_the_reference_on_every_kernel() {
    for kind in kinds() {
        for &(k, n) in &[
            (192, 576),
            (192, 192),
            (192, 768),
            (768, 192),
            (384, 256),
            (256, 384),
            (192, 64),
            (128, 1),
            // One panel alone is past the L2 block: blocks of one panel each.
            (1100, 70),
        ] {
            for t in [196, 49, 3, 1] {
                check(kind, t, k, n, t % 2 == 1);
            }
        }
    }
}

#[test]
fn the_tile_walk_covers_every_row_and_column_tail() {
    for kind in kinds() {
        let (mr, nr) = kind.tile();
        for t in 1..=2 * mr + 1 {
            for n in [1, nr / 2, nr / 2 + 1, nr - 1, nr, nr + 1, 2 * nr + 3] {
                for k in [1, 3, 4, 5, 9] {
                    check(kind, t, k, n, (t + n) % 2 == 0);
                }
            }
        }
    }
}

#[test]
fn simd_kernels_give_the_bits_of_one_another_split_or_not() {
    // A column split and a row split compute each output with the same operations
    // as one call, so the bits cannot change with the thread count.
    let (t, k, n) = (50, 96, 200);
    let (w, x, b) = (data(k * n, 1), data(t * k, 2), data(n, 3));
    for kind in kinds() {
        let g = PackedGemm::with_kernel(&w, k, n, Some(&b), kind).expect("pack");
        let mut whole = vec![0.0; t * n];
        g.run(&x, t, &mut whole);
        for parts in [1, 2, 3, 64] {
            let mut split = vec![f32::NAN; t * n];
            g.run_column_parts(&x, t, &mut split, parts, |p, each| {
                (0..p).rev().for_each(each)
            });
            assert_eq!(split, whole, "{} parts {parts}", kind.name());
        }
        // A `par` that skips every part: they all run on the caller afterwards.
        let mut lazy = vec![f32::NAN; t * n];
        g.run_column_parts(&x, t, &mut lazy, 3, |_, _| {});
        assert_eq!(lazy, whole, "{} lazy par", kind.name());
        let mut rows = vec![f32::NAN; t * n];
        let cut = 19 * k;
        g.run(&x[..cut], 19, &mut rows[..19 * n]);
        g.run(&x[cut..], t - 19, &mut rows[19 * n..]);
        assert_eq!(rows, whole, "{} row split", kind.name());
    }
}

#[test]
fn packing_keeps_the_weights_and_bias() {
    let (k, n) = (13, 37);
    let (w, b) = (data(k * n, 5), data(n, 6));
    for kind in kinds() {
        let g = PackedGemm::with_kernel(&w, k, n, Some(&b), kind).expect("pack");
        assert_eq!(g.weights(), w);
        assert_eq!(g.bias(), Some(&b[..]));
        assert!(g.packed_bytes() >= (k * n + n) * 4);
        assert!(g.kernel_name().starts_with(kind.name()));
    }
    let g = PackedGemm::with_kernel(&w, k, n, None, DenseKind::Generic).expect("pack");
    assert_eq!(g.bias(), None);
    let mut y = vec![0.0; n];
    g.run(&vec![0.0; k], 1, &mut y);
    assert!(y.iter().all(|v| *v == 0.0), "no bias starts from zero");
}

#[test]
fn bad_shapes_and_names_are_errors() {
    assert_eq!(
        PackedGemm::with_kernel(&[1.0; 5], 2, 3, None, DenseKind::Generic).unwrap_err(),
        DenseError::Shape { len: 5, k: 2, n: 3 }
    );
    assert!(PackedGemm::with_kernel(&[], 0, 3, None, DenseKind::Generic).is_err());
    assert_eq!(
        PackedGemm::with_kernel(&[1.0; 6], 2, 3, Some(&[0.0; 2]), DenseKind::Generic).unwrap_err(),
        DenseError::BiasLength { len: 2, n: 3 }
    );
    assert!(matches!(
        DenseKind::from_name("avx9"),
        Err(DenseError::UnknownKernel { .. })
    ));
    assert_eq!(
        DenseKind::from_name(" AVX512 ").ok(),
        Some(DenseKind::Avx512)
    );
    assert!(select_from(Some("sse")).is_err());
    assert_eq!(
        select_from(Some("generic")).map(|s| s.kind).ok(),
        Some(DenseKind::Generic)
    );
    assert!(select_from(None).is_ok());
    #[cfg(target_arch = "x86_64")]
    assert!(DenseKind::Neon.check_available().is_err());
    #[cfg(target_arch = "aarch64")]
    assert!(DenseKind::Avx2.check_available().is_err());
}

#[test]
fn self_test_passes_every_kernel_here_and_catches_a_wrong_one() {
    for kind in kinds() {
        assert_eq!(selftest::check(kind), Ok(()), "{}", kind.name());
    }
    // A kernel whose weights are off by one in the last column.
    let wrong = |w: &[f32], k: usize, n: usize, b: Option<&[f32]>| {
        let mut w = w.to_vec();
        for kk in 0..k {
            w[kk * n + n - 1] += 0.5;
        }
        PackedGemm::with_kernel(&w, k, n, b, DenseKind::Generic)
    };
    let err = selftest::check_with(DenseKind::Avx2, &wrong).unwrap_err();
    assert!(
        matches!(&err, DenseError::SelfTest { kernel: "avx2", detail } if detail.contains("column")),
        "{err}"
    );
    assert!(best().check_available().is_ok());
}

#[test]
fn best_is_the_widest_simd_kernel_this_cpu_has() {
    #[cfg(target_arch = "x86_64")]
    {
        let want = if is_x86_feature_detected!("avx512f") {
            DenseKind::Avx512
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            DenseKind::Avx2
        } else {
            DenseKind::Generic
        };
        assert_eq!(best(), want);
    }
    #[cfg(target_arch = "aarch64")]
    assert_eq!(best(), DenseKind::Neon);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_shapes_match_the_reference(
        t in 0usize..40,
        k in 1usize..90,
        n in 1usize..90,
        bias: bool,
    ) {
        for kind in kinds() {
            check(kind, t, k, n, bias);
        }
    }
}
