//! `sum(a * b, axis)` as one op, where `b` broadcasts over `a`'s leading axes.
//!
//! The default model's mask head is a per-pixel dot product between each prompt's
//! query map and the shared pixel embeddings, exported as `Mul` then `ReduceSum`:
//! tract materialises the `[P, 64, 56, 56]` product (a broadcast multiply at ~3 ns per
//! element) and reads it again to sum, ~2.2 ms of a frame (`maskd bench --profile
//! --per-node`). Here each output row accumulates `a · b` plane by plane, never
//! storing the product.

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::math::Mul;
use tract_core::ops::nn::{Reduce, Reducer};

use super::graph::substitute;
use super::parallel::par_rows;

/// `y[o, 0, x] = sum_d a[o, d, x] * b[o or 0, d, x]`, with `a` viewed as
/// `[outer, depth, inner]` around `axis`; `b` is either `a`'s shape or 1 on every axis
/// before `axis`. The output keeps `axis` with length 1 (like tract's `Reduce`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MulSum {
    axis: usize,
    /// Whether `b` is the first input (the product commutes, the graph's order stays).
    b_first: bool,
}

impl Op for MulSum {
    fn name(&self) -> StaticName {
        "MulSum".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("axis {}", self.axis)])
    }

    op_as_typed_op!();
}

impl MulSum {
    fn split(&self, shape: &[usize]) -> (usize, usize, usize) {
        let outer = shape[..self.axis].iter().product();
        let inner = shape[self.axis + 1..].iter().product();
        (outer, shape[self.axis], inner)
    }
}

impl EvalOp for MulSum {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, y) = args_2!(inputs);
        let (a, b) = if self.b_first { (y, x) } else { (x, y) };
        let (sa, sb) = (a.shape(), b.shape());
        ensure!(
            a.datum_type() == f32::datum_type()
                && b.datum_type() == f32::datum_type()
                && sa.len() == sb.len()
                && sa.len() > self.axis
                && sa[self.axis..] == sb[self.axis..]
                && (sa[..self.axis] == sb[..self.axis] || sb[..self.axis].iter().all(|&d| d == 1)),
            "MulSum: inputs {:?} {:?} and {:?} {:?} do not fit axis {}",
            a.datum_type(),
            sa,
            b.datum_type(),
            sb,
            self.axis
        );
        let (outer, depth, inner) = self.split(sa);
        let b_per_outer = sa[..self.axis] == sb[..self.axis] && outer > 1;
        let mut out_shape: TVec<usize> = sa.into();
        out_shape[self.axis] = 1;
        let mut out = Tensor::zero::<f32>(&out_shape)?;
        let av = a.try_as_plain_ram()?.as_slice::<f32>()?;
        let bv = b.try_as_plain_ram()?.as_slice::<f32>()?;
        {
            let mut view = out.try_as_plain_ram_mut()?;
            let ys = view.as_slice_mut::<f32>()?;
            let work = outer * depth * inner;
            par_rows(ys, inner.max(1), 1, work, |first, rows| {
                for (i, y) in rows.chunks_exact_mut(inner.max(1)).enumerate() {
                    let o = first + i;
                    let ao = &av[o * depth * inner..(o + 1) * depth * inner];
                    let bo = if b_per_outer {
                        &bv[o * depth * inner..(o + 1) * depth * inner]
                    } else {
                        &bv[..depth * inner]
                    };
                    for (ap, bp) in ao.chunks_exact(inner).zip(bo.chunks_exact(inner)) {
                        for ((y, a), b) in y.iter_mut().zip(ap).zip(bp) {
                            *y += a * b;
                        }
                    }
                }
                Ok(())
            })?;
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for MulSum {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let a = if self.b_first { inputs[1] } else { inputs[0] };
        ensure!(
            a.datum_type == f32::datum_type() && a.rank() > self.axis,
            "MulSum: input {:?} has no axis {}",
            a,
            self.axis
        );
        let mut shape = a.shape.to_tvec();
        shape[self.axis] = 1.to_dim();
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}

/// Replaces every `Reduce<Sum>` over one axis of a `Mul` it alone reads, when one
/// factor has the product's shape and the other equals it from that axis on and is 1
/// (or equal) before it; returns how many.
pub fn apply(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let Some((mul, op)) = find(model, id)? else {
            continue;
        };
        let name = model.node(id).name.clone();
        let inputs = model.node(mul).inputs.clone();
        substitute(model, &name, op, &inputs, &[id.into()])
            .with_context(|| format!("node `{name}`: fusing Mul and ReduceSum"))?;
        replaced += 1;
    }
    Ok(replaced)
}

fn find(model: &TypedModel, id: usize) -> TractResult<Option<(usize, MulSum)>> {
    let node = model.node(id);
    let Some(reduce) = node.op_as::<Reduce>() else {
        return Ok(None);
    };
    let [axis] = reduce.axes.as_slice() else {
        return Ok(None);
    };
    if reduce.reducer != Reducer::Sum {
        return Ok(None);
    }
    let mul = model.node(node.inputs[0].node);
    let is_mul = mul.op_as::<TypedBinOp>().is_some_and(|b| b.0.is::<Mul>());
    if !is_mul || mul.inputs.len() != 2 || mul.outputs[0].successors.len() != 1 {
        return Ok(None);
    }
    let prod = &mul.outputs[0].fact;
    let (x, y) = (
        model.outlet_fact(mul.inputs[0])?,
        model.outlet_fact(mul.inputs[1])?,
    );
    if prod.datum_type != f32::datum_type()
        || x.datum_type != f32::datum_type()
        || y.datum_type != f32::datum_type()
        || x.rank() != prod.rank()
        || y.rank() != prod.rank()
    {
        return Ok(None);
    }
    let fits = |a: &TypedFact, b: &TypedFact| {
        a.shape == prod.shape
            && a.shape.iter().skip(*axis).eq(b.shape.iter().skip(*axis))
            && (a.shape.iter().take(*axis).eq(b.shape.iter().take(*axis))
                || b.shape.iter().take(*axis).all(|d| *d == 1.to_dim()))
    };
    let b_first = if fits(x, y) {
        false
    } else if fits(y, x) {
        true
    } else {
        return Ok(None);
    };
    Ok(Some((
        mul.id,
        MulSum {
            axis: *axis,
            b_first,
        },
    )))
}

#[cfg(test)]
mod tests;
