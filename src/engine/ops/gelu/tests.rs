use super::*;
use crate::engine::test_util::{f32s, run_first};
use proptest::prelude::*;

/// tract's rational tanh is off by ~4e-7 near its clamp, which `0.5·x` scales: an
/// absolute 1e-5 covers |x| < 12 (below -7.5 the true value is < 1e-12).
fn close(got: f32, want: f32) -> bool {
    (got - want).abs() <= 1e-5 + 2e-6 * want.abs()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Every length (SIMD body and tail) and a range past the tanh clamp.
    #[test]
    fn simd_matches_reference(xs in proptest::collection::vec(-12f32..12.0, 0..40)) {
        let mut got = xs.clone();
        run(&mut got);
        for (i, (&g, &x)) in got.iter().zip(&xs).enumerate() {
            prop_assert!(close(g, reference(x)), "x[{}] = {}: {} vs {}", i, x, g, reference(x));
        }
    }
}

#[test]
fn known_values() {
    let mut xs = [0.0f32, 1.0, -1.0, 3.0, -20.0, 20.0, 0.5];
    run(&mut xs);
    // Tanh-form GELU values (PyTorch `gelu(approximate="tanh")`).
    let want = [0.0, 0.841_192, -0.158_808, 2.996_363, 0.0, 20.0, 0.345_714];
    for (g, w) in xs.iter().zip(want) {
        assert!((g - w).abs() < 1e-5, "{xs:?}");
    }
}

/// The rewrite against tract's own op on one graph.
#[test]
fn rewrite_matches_tract_gelu() {
    let mut model = TypedModel::default();
    let x = model.add_source("x", f32::fact([5, 37])).expect("source");
    let y = model
        .wire_node(
            "gelu",
            tract_core::ops::nn::gelu_approximate::gelu_approximate(false),
            &[x],
        )
        .expect("gelu");
    model.select_output_outlets(&y).expect("outputs");
    let xs: Vec<f32> = (0..5 * 37).map(|i| (i as f32 - 92.0) / 15.0).collect();
    let input = Tensor::from_shape(&[5, 37], &xs).expect("tensor");
    let want = f32s(&run_first(model.clone(), [input.clone()]));
    let mut fast = model;
    assert_eq!(apply(&mut fast).expect("apply"), usize::from(available()));
    let got = f32s(&run_first(fast, [input]));
    assert_eq!(got.len(), want.len());
    for (a, b) in got.iter().zip(&want) {
        assert!(close(*a, *b), "{a} vs {b}");
    }
}
