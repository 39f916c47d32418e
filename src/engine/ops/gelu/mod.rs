//! Tanh-form GELU on AVX2, replacing tract's `GeluApproximate` where tract has no SIMD
//! kernel for it.
//!
//! tract 0.23 runs `GeluApproximate` (what an opset-20 `Gelu` node becomes) with
//! AVX-512 or NEON code, and on AVX2-only x86 with its scalar generic routine: ~2.4 ns
//! per element, 6–7 ms of the default model's frame (`maskd bench --profile`). The
//! same formula and the same rational tanh on 8 lanes take a fraction of that.
//! [`apply`] swaps the op only where that is the case ([`available`]).

#[cfg(target_arch = "x86_64")]
mod x86;

use tract_core::internal::*;

use super::graph::substitute;
use super::parallel::par_rows;
use tract_core::ops::element_wise::ElementWiseOp;
use tract_core::ops::nn::GeluApproximate;

/// Whether [`run`] is SIMD code on this CPU (false: it is the scalar reference).
pub fn simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        return true;
    }
    false
}

/// Whether [`apply`] replaces tract's GELU: where [`run`] is SIMD and tract's is not
/// (tract has AVX-512 and NEON GELUs).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    if simd() && !is_x86_feature_detected!("avx512f") {
        return true;
    }
    false
}

/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` in f64: the reference.
pub fn reference(x: f32) -> f32 {
    let x = x as f64;
    let inner = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
    (0.5 * x * (1.0 + inner.tanh())) as f32
}

/// GELU in place: SIMD where [`available`], else the scalar reference.
pub fn run(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: AVX2 and FMA were just detected.
        unsafe { x86::gelu(xs) };
        return;
    }
    xs.iter_mut().for_each(|x| *x = reference(*x));
}

/// In-place tanh-form GELU on f32.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastGelu;

impl Op for FastGelu {
    fn name(&self) -> StaticName {
        "FastGelu".into()
    }

    op_as_typed_op!();
}

impl EvalOp for FastGelu {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        ensure!(
            x.datum_type() == f32::datum_type(),
            "FastGelu: input is {:?}, expected f32",
            x.datum_type()
        );
        // Takes the buffer when this node is its only reader (the usual case), so the
        // activation runs in place without a new tensor.
        let mut y = x.into_tensor();
        {
            let mut view = y.try_as_plain_ram_mut()?;
            let xs = view.as_slice_mut::<f32>()?;
            let work = xs.len();
            // Rows of 8 floats (one vector), split over the plan's pool.
            par_rows(xs, 8, 1, work, |_, chunk| {
                run(chunk);
                Ok(())
            })?;
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for FastGelu {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs[0].datum_type == f32::datum_type(),
            "FastGelu: input is {:?}, expected f32",
            inputs[0].datum_type
        );
        Ok(tvec!(inputs[0].datum_type.fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// Replaces every f32 `GeluApproximate` (tanh form, pow 3) by [`FastGelu`] where
/// [`available`]; returns how many.
pub fn apply(model: &mut TypedModel) -> TractResult<usize> {
    if !available() {
        return Ok(0);
    }
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let is_gelu = node
            .op_as::<ElementWiseOp>()
            .and_then(|e| e.0.downcast_ref::<GeluApproximate>())
            .is_some_and(|g| !g.fast_impl);
        if !is_gelu
            || node.inputs.len() != 1
            || model.outlet_fact(node.inputs[0])?.datum_type != f32::datum_type()
        {
            continue;
        }
        let name = node.name.clone();
        let input = node.inputs[0];
        substitute(model, &name, FastGelu, &[input], &[id.into()])
            .with_context(|| format!("node `{name}`: GELU on SIMD"))?;
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests;
