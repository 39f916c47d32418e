//! LayerNorm as one op, replacing the six nodes tract makes of it.
//!
//! The export decomposes `LayerNorm` (mean, subtract, mean of squares, scale, shift),
//! and tract keeps it as `Reduce<Sum>`, `Mul` by 1/C, `Sub`, `RmsNorm` and a
//! `Mul`+`Add` chain: five passes over the tokens and four tensors per norm, 22 norms
//! per frame, ~4–5 ms of the default model's frame (`maskd bench --profile`). Here a
//! row is read once for its mean, once for its variance and written once.
//!
//! [`apply`] rewrites only that exact chain over the last axis, with the 1/C constant
//! checked; the affine part is taken when its factors are constants (the decoder's
//! FiLM-modulated norm keeps its own `Mul`/`Add`).

use std::sync::Arc;

use tract_core::internal::*;
use tract_core::ops::binary::{BinMiniOp, TypedBinOp};
use tract_core::ops::math::{Add, Mul, Sub};
use tract_core::ops::nn::{Reduce, Reducer, RmsNorm};

use super::graph::substitute;
use super::parallel::par_rows;

/// `(x - mean) / sqrt(var + eps) * gamma + beta` over the last axis of an f32 tensor.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    eps: f32,
    /// Ones and zeros where the graph has no affine part: `x·1 + 0` is exact.
    gamma: Arc<[f32]>,
    beta: Arc<[f32]>,
    width: usize,
}

impl PartialEq for LayerNorm {
    fn eq(&self, other: &Self) -> bool {
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        self.width == other.width
            && self.eps.to_bits() == other.eps.to_bits()
            && bits(&self.gamma) == bits(&other.gamma)
            && bits(&self.beta) == bits(&other.beta)
    }
}

impl Eq for LayerNorm {}

impl LayerNorm {
    pub fn new(
        width: usize,
        eps: f32,
        gamma: Option<Vec<f32>>,
        beta: Option<Vec<f32>>,
    ) -> TractResult<LayerNorm> {
        for v in [&gamma, &beta].into_iter().flatten() {
            ensure!(
                v.len() == width,
                "LayerNorm: {} affine values for width {width}",
                v.len()
            );
        }
        Ok(LayerNorm {
            eps,
            gamma: gamma.unwrap_or_else(|| vec![1.0; width]).into(),
            beta: beta.unwrap_or_else(|| vec![0.0; width]).into(),
            width,
        })
    }

    /// One row in place.
    pub fn row(&self, x: &mut [f32]) {
        let c = x.len() as f32;
        let mean = lanes_sum(x, |v| v) / c;
        let var = lanes_sum(x, |v| (v - mean) * (v - mean)) / c;
        let inv = 1.0 / (var + self.eps).sqrt();
        for ((v, g), b) in x.iter_mut().zip(self.gamma.iter()).zip(self.beta.iter()) {
            *v = (*v - mean) * inv * g + b;
        }
    }
}

/// Sum of `f(v)` in 8 independent lanes, so the compiler vectorises it.
fn lanes_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    acc.iter().sum::<f32>() + tail
}

impl Op for LayerNorm {
    fn name(&self) -> StaticName {
        "LayerNorm".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("width {}, eps {}", self.width, self.eps)])
    }

    op_as_typed_op!();
}

impl EvalOp for LayerNorm {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        ensure!(
            x.datum_type() == f32::datum_type() && x.shape().last() == Some(&self.width),
            "LayerNorm: input is {:?} {:?}, expected f32 [..., {}]",
            x.datum_type(),
            x.shape(),
            self.width
        );
        // In place when this node is the only reader.
        let mut y = x.into_tensor();
        {
            let mut view = y.try_as_plain_ram_mut()?;
            let ys = view.as_slice_mut::<f32>()?;
            let work = ys.len();
            par_rows(ys, self.width.max(1), 1, work, |_, chunk| {
                chunk
                    .chunks_exact_mut(self.width.max(1))
                    .for_each(|r| self.row(r));
                Ok(())
            })?;
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for LayerNorm {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        ensure!(
            x.datum_type == f32::datum_type()
                && x.rank() > 0
                && x.shape[x.rank() - 1] == self.width.to_dim(),
            "LayerNorm: input is {:?}, expected f32 [..., {}]",
            x,
            self.width
        );
        Ok(tvec!(f32::fact(x.shape.clone())))
    }

    as_op!();
}

/// Replaces every decomposed LayerNorm chain; returns how many.
pub fn apply(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let Some((x, last, op)) = find(model, id)? else {
            continue;
        };
        let name = format!("{}.layernorm", model.node(id).name);
        substitute(model, &name, op, &[x], &[last.into()])
            .with_context(|| format!("node `{name}`: fusing LayerNorm"))?;
        replaced += 1;
    }
    Ok(replaced)
}

/// `(x, the chain's last node, the op)` when `id` is the `RmsNorm` of a chain.
fn find(model: &TypedModel, id: usize) -> TractResult<Option<(OutletId, usize, LayerNorm)>> {
    let node = model.node(id);
    let Some(rms) = node.op_as::<RmsNorm>() else {
        return Ok(None);
    };
    let fact = &node.outputs[0].fact;
    let Ok(eps) = rms.eps.cast_to_scalar::<f32>() else {
        return Ok(None);
    };
    if fact.datum_type != f32::datum_type() || fact.rank() == 0 || rms.axis != fact.rank() - 1 {
        return Ok(None);
    }
    let Ok(width) = fact.shape[rms.axis].to_usize() else {
        return Ok(None);
    };
    // x - mean(x), the difference read by the RmsNorm alone.
    let sub = model.node(node.inputs[0].node);
    if !is_bin::<Sub>(sub) || sub.outputs[0].successors.len() != 1 {
        return Ok(None);
    }
    let (x, mean) = (sub.inputs[0], sub.inputs[1]);
    let mean_node = model.node(mean.node);
    if !is_bin::<Mul>(mean_node) {
        return Ok(None);
    }
    let (mut sum, mut recip) = (None, None);
    for &i in &mean_node.inputs {
        match const_values(model, i)? {
            Some(v) if v.len() == 1 => recip = Some(v[0]),
            _ => sum = Some(i),
        }
    }
    let (Some(sum), Some(recip)) = (sum, recip) else {
        return Ok(None);
    };
    if (recip * width as f32 - 1.0).abs() > 1e-5 {
        return Ok(None);
    }
    let sum_node = model.node(sum.node);
    let is_sum = sum_node
        .op_as::<Reduce>()
        .is_some_and(|r| r.reducer == Reducer::Sum && r.axes.as_slice() == [rms.axis]);
    if !is_sum || sum_node.inputs.first() != Some(&x) {
        return Ok(None);
    }
    // Optional constant scale, then optional constant shift.
    let mut last = id;
    let mut gamma = None;
    let mut beta = None;
    if let Some((next, v)) = affine::<Mul>(model, last, width)? {
        gamma = Some(v);
        last = next;
    }
    if let Some((next, v)) = affine::<Add>(model, last, width)? {
        beta = Some(v);
        last = next;
    }
    Ok(Some((x, last, LayerNorm::new(width, eps, gamma, beta)?)))
}

fn is_bin<T: BinMiniOp>(node: &TypedNode) -> bool {
    node.inputs.len() == 2 && node.op_as::<TypedBinOp>().is_some_and(|b| b.0.is::<T>())
}

/// A node's constant f32 values, if its output is a constant.
fn const_values(model: &TypedModel, outlet: OutletId) -> TractResult<Option<Vec<f32>>> {
    let fact = model.outlet_fact(outlet)?;
    let Some(k) = fact.konst.as_ref() else {
        return Ok(None);
    };
    if k.datum_type() != f32::datum_type() {
        return Ok(None);
    }
    Ok(Some(k.try_as_plain_ram()?.as_slice::<f32>()?.to_vec()))
}

/// The sole successor of `id` when it is a `T` (Mul or Add) with a constant of `width`
/// values along the last axis (and 1 elsewhere) that does not change the shape.
fn affine<T: BinMiniOp>(
    model: &TypedModel,
    id: usize,
    width: usize,
) -> TractResult<Option<(usize, Vec<f32>)>> {
    let node = model.node(id);
    let out = OutletId::new(id, 0);
    let [succ] = node.outputs[0].successors.as_slice() else {
        return Ok(None);
    };
    if model.output_outlets()?.contains(&out) {
        return Ok(None);
    }
    let next = model.node(succ.node);
    if !is_bin::<T>(next) {
        return Ok(None);
    }
    let Some(&other) = next.inputs.iter().find(|i| **i != out) else {
        return Ok(None);
    };
    let Some(values) = const_values(model, other)? else {
        return Ok(None);
    };
    let shape = model.outlet_fact(other)?.shape.to_tvec();
    let per_column = shape.last() == Some(&width.to_dim())
        && shape.iter().rev().skip(1).all(|d| *d == 1.to_dim());
    let same = next.outputs[0].fact.shape == node.outputs[0].fact.shape;
    if values.len() != width || !per_column || !same {
        return Ok(None);
    }
    Ok(Some((succ.node, values)))
}

#[cfg(test)]
mod tests;
