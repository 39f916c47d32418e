//! Helpers shared by the engine's graph tests.

use tract_core::internal::*;

/// Runs `model` once on `inputs` and returns its first output.
pub fn run_first(model: TypedModel, inputs: impl IntoIterator<Item = Tensor>) -> Tensor {
    let plan = model.into_runnable().expect("plan");
    let mut out = plan
        .spawn()
        .expect("state")
        .run(inputs.into_iter().map(Tensor::into_tvalue).collect())
        .expect("run");
    out.remove(0).into_tensor()
}

/// The values of an f32 tensor.
pub fn f32s(t: &Tensor) -> Vec<f32> {
    t.try_as_plain_ram()
        .expect("plain")
        .as_slice::<f32>()
        .expect("f32")
        .to_vec()
}

/// Asserts `|got - want| <= tol * (1 + |want|)` element-wise, lengths equal.
pub fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "at {i}: {g} vs {w}");
    }
}

/// Largest absolute difference, lengths equal.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// Nodes of `model` whose op is named `name`.
pub fn count_ops(model: &TypedModel, name: &str) -> usize {
    model
        .nodes()
        .iter()
        .filter(|n| n.op().name() == name)
        .count()
}
