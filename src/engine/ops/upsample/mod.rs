//! Bilinear upsampling by whole factors, replacing tract's general `Resize`.
//!
//! The default model's decoder upsamples three times per frame (×2, ×2 and a ×4 of
//! every prompt's query map): tract's `Resize` resolves its coordinate plan per call
//! and walks a general N-d window, and measured 12–17 ms of a ~130 ms frame
//! (`maskd bench --profile`), about as much as all the attention softmaxes. This op
//! precomputes the two 1-d tap tables once when the graph is built and blends rows
//! separably: each input row is interpolated along x once per use and output rows
//! are a 2-tap mix of two such rows.
//!
//! [`apply`] rewrites only what it reproduces exactly: `linear` mode with
//! `half_pixel` (or `pytorch_half_pixel`, the same for outputs longer than one)
//! coordinates, an f32 NCHW input whose H and W are concrete, and an output whose H
//! and W are whole multiples of them (what `F.interpolate(scale_factor=k,
//! mode="bilinear")` exports). Anything else keeps tract's op.

use std::fmt;
use std::sync::Arc;

use tract_core::internal::*;
use tract_core::ops::nn::resize::{CoordTransformer, Interpolator, Resize};

use super::graph::substitute;

/// Widest output row the op handles: two interpolated rows live on the stack.
pub const MAX_WIDTH: usize = 1024;

/// One output coordinate's two source taps and the weight of the second.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tap {
    lo: u32,
    hi: u32,
    w: f32,
}

/// ONNX `half_pixel` linear taps for `len_in -> len_in * scale`, with the edge
/// clamping ONNX and PyTorch use (source coordinates below 0 read the first sample,
/// past the end the last).
fn taps(len_in: usize, scale: usize) -> Vec<Tap> {
    let last = len_in.saturating_sub(1);
    (0..len_in * scale)
        .map(|o| {
            let src = ((o as f32 + 0.5) / scale as f32 - 0.5).max(0.0);
            let lo = (src.floor() as usize).min(last);
            let hi = (lo + 1).min(last);
            Tap {
                lo: lo as u32,
                hi: hi as u32,
                w: src - lo as f32,
            }
        })
        .collect()
}

/// `[N, C, H, W] -> [N, C, H * sy, W * sx]`, bilinear, half-pixel centres.
#[derive(Clone)]
pub struct Upsample2d {
    in_hw: (usize, usize),
    scale: (usize, usize),
    tables: Arc<(Vec<Tap>, Vec<Tap>)>,
}

impl Upsample2d {
    pub fn new(in_hw: (usize, usize), scale: (usize, usize)) -> TractResult<Upsample2d> {
        ensure!(
            in_hw.0 > 0 && in_hw.1 > 0 && scale.0 > 0 && scale.1 > 0,
            "Upsample2d: empty input {in_hw:?} or zero scale {scale:?}"
        );
        ensure!(
            in_hw.1 * scale.1 <= MAX_WIDTH,
            "Upsample2d: output width {} over {MAX_WIDTH}",
            in_hw.1 * scale.1
        );
        Ok(Upsample2d {
            in_hw,
            scale,
            tables: Arc::new((taps(in_hw.0, scale.0), taps(in_hw.1, scale.1))),
        })
    }

    fn out_hw(&self) -> (usize, usize) {
        (self.in_hw.0 * self.scale.0, self.in_hw.1 * self.scale.1)
    }

    /// One plane: `src` is `ih * iw`, `dst` is `oh * ow`.
    fn plane(&self, src: &[f32], dst: &mut [f32]) {
        let (ty, tx) = (&self.tables.0, &self.tables.1);
        let iw = self.in_hw.1;
        let ow = tx.len();
        // Two x-interpolated source rows, reused while consecutive output rows read
        // the same pair (every `scale` rows share one).
        let mut rows = [[0f32; MAX_WIDTH]; 2];
        let mut held = [u32::MAX; 2];
        let hrow = |y: u32, out: &mut [f32; MAX_WIDTH]| {
            let row = &src[y as usize * iw..(y as usize + 1) * iw];
            for (o, t) in out.iter_mut().zip(tx) {
                let a = row[t.lo as usize];
                *o = a + t.w * (row[t.hi as usize] - a);
            }
        };
        for (t, out) in ty.iter().zip(dst.chunks_exact_mut(ow)) {
            let lo = match held.iter().position(|&h| h == t.lo) {
                Some(i) => i,
                None => {
                    // Replace the row the upcoming taps no longer need (not `hi`).
                    let i = usize::from(held[0] == t.hi);
                    hrow(t.lo, &mut rows[i]);
                    held[i] = t.lo;
                    i
                }
            };
            let hi = match held.iter().position(|&h| h == t.hi) {
                Some(i) => i,
                None => {
                    let i = 1 - lo;
                    hrow(t.hi, &mut rows[i]);
                    held[i] = t.hi;
                    i
                }
            };
            let (a, b) = (&rows[lo][..ow], &rows[hi][..ow]);
            for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
                *o = a + t.w * (b - a);
            }
        }
    }
}

impl fmt::Debug for Upsample2d {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Upsample2d({}x{} -> x{}, x{})",
            self.in_hw.0, self.in_hw.1, self.scale.0, self.scale.1
        )
    }
}

impl PartialEq for Upsample2d {
    fn eq(&self, other: &Self) -> bool {
        self.in_hw == other.in_hw && self.scale == other.scale
    }
}

impl Eq for Upsample2d {}

impl Op for Upsample2d {
    fn name(&self) -> StaticName {
        "Upsample2d".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{self:?}")])
    }

    op_as_typed_op!();
}

impl EvalOp for Upsample2d {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let shape = x.shape();
        ensure!(
            x.datum_type() == f32::datum_type()
                && shape.len() == 4
                && (shape[2], shape[3]) == self.in_hw,
            "Upsample2d: input is {:?} {:?}, expected f32 [N, C, {}, {}]",
            x.datum_type(),
            shape,
            self.in_hw.0,
            self.in_hw.1
        );
        let (oh, ow) = self.out_hw();
        let out_shape = [shape[0], shape[1], oh, ow];
        // SAFETY: f32 has no invalid bit patterns, and `plane` writes every pixel of every
        // output plane (`chunks_exact_mut(oh * ow)` covers `y`, whose planes match the
        // input's one for one), so no uninitialised value is ever read.
        let mut y = unsafe { Tensor::uninitialized::<f32>(&out_shape)? };
        let xs = x.try_as_plain_ram()?.as_slice::<f32>()?;
        {
            let mut view = y.try_as_plain_ram_mut()?;
            let ys = view.as_slice_mut::<f32>()?;
            let plane_in = self.in_hw.0 * self.in_hw.1;
            for (src, dst) in xs.chunks_exact(plane_in).zip(ys.chunks_exact_mut(oh * ow)) {
                self.plane(src, dst);
            }
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for Upsample2d {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        ensure!(
            x.datum_type == f32::datum_type() && x.rank() == 4,
            "Upsample2d: input is {:?} of rank {}, expected f32 rank 4",
            x.datum_type,
            x.rank()
        );
        let (oh, ow) = self.out_hw();
        let shape = [
            x.shape[0].clone(),
            x.shape[1].clone(),
            oh.to_dim(),
            ow.to_dim(),
        ];
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}

/// Replaces every `Resize` node [`Upsample2d`] reproduces; returns how many.
pub fn apply(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let Some(op) = upsample_for(model, id)? else {
            continue;
        };
        let node = model.node(id);
        let name = node.name.clone();
        let input = node.inputs[0];
        substitute(model, &name, op, &[input], &[id.into()])
            .with_context(|| format!("node `{name}`: rewriting Resize to Upsample2d"))?;
        replaced += 1;
    }
    Ok(replaced)
}

fn upsample_for(model: &TypedModel, id: usize) -> TractResult<Option<Upsample2d>> {
    let node = model.node(id);
    let Some(resize) = node.op_as::<Resize>() else {
        return Ok(None);
    };
    let coords_ok = matches!(
        resize.coord_transformer,
        CoordTransformer::HalfPixel | CoordTransformer::PytorchHalfPixel
    );
    if resize.interpolator != Interpolator::Linear || !coords_ok {
        return Ok(None);
    }
    let x = model.outlet_fact(node.inputs[0])?;
    let y = &node.outputs[0].fact;
    if x.datum_type != f32::datum_type() || x.rank() != 4 || y.rank() != 4 {
        return Ok(None);
    }
    // N and C (possibly symbolic, the prompt count) pass through unchanged.
    if x.shape[0] != y.shape[0] || x.shape[1] != y.shape[1] {
        return Ok(None);
    }
    let dims = |f: &TypedFact| -> Option<(usize, usize)> {
        Some((f.shape[2].to_usize().ok()?, f.shape[3].to_usize().ok()?))
    };
    let (Some((ih, iw)), Some((oh, ow))) = (dims(x), dims(y)) else {
        return Ok(None);
    };
    if ih == 0 || iw == 0 || oh % ih != 0 || ow % iw != 0 || ow > MAX_WIDTH {
        return Ok(None);
    }
    // PyTorch's half-pixel variant differs only for an output of length 1.
    if resize.coord_transformer == CoordTransformer::PytorchHalfPixel && (oh == 1 || ow == 1) {
        return Ok(None);
    }
    Upsample2d::new((ih, iw), (oh / ih, ow / iw)).map(Some)
}

#[cfg(test)]
mod tests;
