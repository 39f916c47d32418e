use super::*;
use crate::engine::test_util::{assert_close, f32s, run_first};
use tract_core::ops::math::mul;

/// `sum(a * b, axis 2)` for a `[1, 3, 4, 5, 6]` and b `b_shape`, optionally with b first.
fn model(b_shape: &[usize], b_first: bool) -> TypedModel {
    let mut m = TypedModel::default();
    let a = m.add_source("a", f32::fact([1, 3, 4, 5, 6])).expect("a");
    let b = m.add_source("b", f32::fact(b_shape)).expect("b");
    let ins = if b_first { [b, a] } else { [a, b] };
    let p = m.wire_node("mul", mul(), &ins).expect("mul")[0];
    let s = m
        .wire_node("sum", Reduce::new(tvec![2], Reducer::Sum), &[p])
        .expect("sum")[0];
    m.select_output_outlets(&[s]).expect("outputs");
    m
}

fn run(m: TypedModel, b_shape: &[usize]) -> Tensor {
    let n: usize = b_shape.iter().product();
    let a: Vec<f32> = (0..360).map(|i| (i as f32 * 0.31).sin()).collect();
    let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.17).cos()).collect();
    let a = Tensor::from_shape(&[1, 3, 4, 5, 6], &a).expect("a");
    let b = Tensor::from_shape(b_shape, &b).expect("b");
    run_first(m, [a, b])
}

#[test]
fn matches_mul_then_reduce() {
    for (b_shape, b_first) in [
        (vec![1, 1, 4, 5, 6], false),
        (vec![1, 1, 4, 5, 6], true),
        (vec![1, 3, 4, 5, 6], false),
    ] {
        let want = run(model(&b_shape, b_first), &b_shape);
        let mut m = model(&b_shape, b_first);
        assert_eq!(apply(&mut m).expect("apply"), 1, "{b_shape:?}");
        let got = run(m, &b_shape);
        assert_eq!(got.shape(), want.shape());
        assert_close(&f32s(&got), &f32s(&want), 1e-5);
    }
}

#[test]
fn other_broadcasts_are_left_alone() {
    // b broadcasts along the summed axis: not a per-plane dot product.
    let mut m = model(&[1, 3, 1, 5, 6], false);
    assert_eq!(apply(&mut m).expect("apply"), 0);
}
