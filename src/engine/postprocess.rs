//! Segmenter outputs -> binary masks in the reused `MaskSet`.
//!
//! Per prompt: the presence probability `sigmoid(presence logit)` becomes `Mask::score`;
//! below the score threshold the mask is all zero. Otherwise the mask logits (which
//! cover the whole model input) are sampled bilinearly (half-pixel centres, edges
//! clamped, as PyTorch's `interpolate(..., align_corners=False)`) at the centre of every
//! output pixel, where the output grid spans only the frame's `content` rectangle (the
//! picture without letterbox bars), and thresholded. The threshold is compared in logit
//! space (`logit >= ln(t / (1 - t))`), which is the same test as `sigmoid(logit) >= t`
//! without an exp per pixel.
//!
//! The interpolation taps depend only on the geometry and are rebuilt only when it
//! changes; the work buffers and the masks' bit vectors are reused, so a steady stream of
//! frames allocates nothing here.

use crate::contracts::Rect;
use crate::contracts::{Mask, MaskSet, PromptId};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PostprocessError {
    #[error("mask logits hold {len} values, {prompts} prompts x {height}x{width} expected")]
    Logits {
        len: usize,
        prompts: usize,
        height: usize,
        width: usize,
    },
    #[error("{scores} presence logits for {prompts} prompts")]
    Scores { scores: usize, prompts: usize },
    #[error("content rectangle {content:?} is empty or outside the {width}x{height} input")]
    Content {
        content: Rect,
        width: u32,
        height: u32,
    },
    #[error("output mask size {width}x{height} is empty")]
    OutputSize { width: u32, height: u32 },
}

/// Decision thresholds, as probabilities strictly inside (0, 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub mask: f32,
    pub score: f32,
}

/// One bilinear tap along an axis: `v = a[i0] * (1 - f) + a[i1] * f`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tap {
    i0: usize,
    i1: usize,
    f: f32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Geometry {
    content: Rect,
    out_w: u32,
    out_h: u32,
}

#[derive(Debug, Clone)]
pub struct Postprocessor {
    /// Mask logits grid, `[height, width]`.
    mask_h: usize,
    mask_w: usize,
    /// Model input size the grid covers.
    input_w: u32,
    input_h: u32,
    mask_logit: f32,
    score: f32,
    geometry: Option<Geometry>,
    xs: Vec<Tap>,
    ys: Vec<Tap>,
    /// Each grid row interpolated along x to the output width: `mask_h * out_w`.
    rows: Vec<f32>,
}

impl Postprocessor {
    /// `mask_size` is `[height, width]` of the logits; `input` is the model input `(width, height)`.
    pub fn new(mask_size: [usize; 2], input: (u32, u32), thresholds: Thresholds) -> Postprocessor {
        Postprocessor {
            mask_h: mask_size[0],
            mask_w: mask_size[1],
            input_w: input.0,
            input_h: input.1,
            mask_logit: logit(thresholds.mask),
            score: thresholds.score,
            geometry: None,
            xs: Vec::new(),
            ys: Vec::new(),
            rows: Vec::new(),
        }
    }

    /// Writes one mask per prompt into `out.masks[..ids.len()]` (sized `out_w x out_h`,
    /// covering `content`) and sets `out.len`, `out.width`, `out.height`.
    /// `mask_logits` is `[P, mask_h, mask_w]` row-major, `presence_logits` is `[P]`.
    pub fn run(
        &mut self,
        mask_logits: &[f32],
        presence_logits: &[f32],
        ids: &[PromptId],
        content: Rect,
        out_size: (u32, u32),
        out: &mut MaskSet,
    ) -> Result<(), PostprocessError> {
        let p = ids.len();
        let cell = self.mask_h * self.mask_w;
        if mask_logits.len() != p * cell {
            return Err(PostprocessError::Logits {
                len: mask_logits.len(),
                prompts: p,
                height: self.mask_h,
                width: self.mask_w,
            });
        }
        if presence_logits.len() != p {
            return Err(PostprocessError::Scores {
                scores: presence_logits.len(),
                prompts: p,
            });
        }
        self.set_geometry(Geometry {
            content,
            out_w: out_size.0,
            out_h: out_size.1,
        })?;
        let (ow, oh) = (out_size.0 as usize, out_size.1 as usize);
        out.width = out_size.0;
        out.height = out_size.1;
        while out.masks.len() < p {
            out.masks.push(Mask::default());
        }
        for (ix, &id) in ids.iter().enumerate() {
            let mask = &mut out.masks[ix];
            mask.prompt_id = id;
            mask.score = sigmoid(presence_logits[ix]);
            mask.bits.clear();
            mask.bits.resize(ow * oh, 0);
            mask.coverage = 0.0;
            if mask.score < self.score {
                continue;
            }
            let set = self.threshold(&mask_logits[ix * cell..(ix + 1) * cell], &mut mask.bits);
            mask.coverage = set as f32 / (ow * oh) as f32;
        }
        out.len = p;
        Ok(())
    }

    fn set_geometry(&mut self, g: Geometry) -> Result<(), PostprocessError> {
        if self.geometry == Some(g) {
            return Ok(());
        }
        let c = g.content;
        if c.width == 0
            || c.height == 0
            || c.x.checked_add(c.width).is_none_or(|r| r > self.input_w)
            || c.y.checked_add(c.height).is_none_or(|b| b > self.input_h)
        {
            return Err(PostprocessError::Content {
                content: c,
                width: self.input_w,
                height: self.input_h,
            });
        }
        if g.out_w == 0 || g.out_h == 0 {
            return Err(PostprocessError::OutputSize {
                width: g.out_w,
                height: g.out_h,
            });
        }
        taps(
            &mut self.xs,
            c.x,
            c.width,
            g.out_w,
            self.input_w,
            self.mask_w,
        );
        taps(
            &mut self.ys,
            c.y,
            c.height,
            g.out_h,
            self.input_h,
            self.mask_h,
        );
        self.rows.clear();
        self.rows.resize(self.mask_h * g.out_w as usize, 0.0);
        self.geometry = Some(g);
        Ok(())
    }

    /// Thresholds one prompt's `[mask_h, mask_w]` logits into `bits`; returns the count set.
    fn threshold(&mut self, logits: &[f32], bits: &mut [u8]) -> usize {
        let ow = self.xs.len();
        // Separable: interpolate every grid row along x once, then each output row is a
        // blend of two of those.
        for (gy, row) in self.rows.chunks_exact_mut(ow).enumerate() {
            let src = &logits[gy * self.mask_w..(gy + 1) * self.mask_w];
            for (v, t) in row.iter_mut().zip(&self.xs) {
                *v = src[t.i0] + (src[t.i1] - src[t.i0]) * t.f;
            }
        }
        let mut set = 0;
        for (out_row, t) in bits.chunks_exact_mut(ow).zip(&self.ys) {
            let r0 = &self.rows[t.i0 * ow..(t.i0 + 1) * ow];
            let r1 = &self.rows[t.i1 * ow..(t.i1 + 1) * ow];
            for ((b, a0), a1) in out_row.iter_mut().zip(r0).zip(r1) {
                let v = a0 + (a1 - a0) * t.f;
                let on = v >= self.mask_logit;
                *b = on as u8;
                set += on as usize;
            }
        }
        set
    }
}

/// Taps for `n_out` output pixels spanning `[off, off + len)` of an input axis of
/// `input_len` pixels, sampling a grid of `grid_len` cells covering that whole axis.
fn taps(out: &mut Vec<Tap>, off: u32, len: u32, n_out: u32, input_len: u32, grid_len: usize) {
    out.clear();
    let last = grid_len.saturating_sub(1);
    for i in 0..n_out {
        let x = off as f64 + (i as f64 + 0.5) * len as f64 / n_out as f64;
        let g = (x * grid_len as f64 / input_len as f64 - 0.5).clamp(0.0, last as f64);
        let i0 = (g.floor() as usize).min(last);
        let i1 = (i0 + 1).min(last);
        out.push(Tap {
            i0,
            i1,
            f: (g - i0 as f64) as f32,
        });
    }
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Inverse of the sigmoid, for `p` strictly inside (0, 1).
pub fn logit(p: f32) -> f32 {
    (p / (1.0 - p)).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        mask: 0.5,
        score: 0.5,
    };

    fn full(w: u32, h: u32) -> Rect {
        Rect {
            x: 0,
            y: 0,
            width: w,
            height: h,
        }
    }

    #[test]
    fn identity_geometry_thresholds_each_cell() {
        // grid 2x2 over a 2x2 input, output 2x2: each output pixel is exactly one cell
        let mut pp = Postprocessor::new([2, 2], (2, 2), T);
        let mut out = MaskSet::default();
        let logits = [1.0, -1.0, 0.0, -0.01, 5.0, 5.0, 5.0, 5.0];
        pp.run(&logits, &[3.0, -3.0], &[7, 9], full(2, 2), (2, 2), &mut out)
            .unwrap();
        assert_eq!(out.len, 2);
        assert_eq!((out.width, out.height), (2, 2));
        let m = &out.masks()[0];
        assert_eq!(m.prompt_id, 7);
        assert_eq!(m.bits, [1, 0, 1, 0]);
        assert_eq!(m.coverage, 0.5);
        assert!((m.score - sigmoid(3.0)).abs() < 1e-6);
        // absent: all-zero mask despite positive logits
        let m = &out.masks()[1];
        assert_eq!((m.prompt_id, m.coverage), (9, 0.0));
        assert_eq!(m.bits, [0, 0, 0, 0]);
    }

    #[test]
    fn upsampling_is_half_pixel_bilinear() {
        // 1x2 grid [-1, 1] upsampled to 4 pixels: centres at grid -0.25, 0.25, 0.75, 1.25
        // -> clamped 0, 0.25, 0.75, 1 -> -1, -0.5, 0.5, 1
        let mut pp = Postprocessor::new(
            [1, 2],
            (4, 1),
            Thresholds {
                mask: sigmoid(-0.6),
                score: 0.5,
            },
        );
        let mut out = MaskSet::default();
        pp.run(&[-1.0, 1.0], &[9.0], &[0], full(4, 1), (4, 1), &mut out)
            .unwrap();
        assert_eq!(out.masks()[0].bits, [0, 1, 1, 1]);
        let mut pp = Postprocessor::new(
            [1, 2],
            (4, 1),
            Thresholds {
                mask: sigmoid(-0.4),
                score: 0.5,
            },
        );
        pp.run(&[-1.0, 1.0], &[9.0], &[0], full(4, 1), (4, 1), &mut out)
            .unwrap();
        assert_eq!(out.masks()[0].bits, [0, 0, 1, 1]);
    }

    #[test]
    fn letterbox_content_is_cropped() {
        // input 4x4, grid 4x4 (one cell per pixel); picture is the middle two rows.
        // Row 1 positive, row 2 negative -> output 4x2 is top row on, bottom row off.
        let mut logits = [-5.0f32; 16];
        logits[4..8].fill(5.0);
        let mut pp = Postprocessor::new([4, 4], (4, 4), T);
        let mut out = MaskSet::default();
        let content = Rect {
            x: 0,
            y: 1,
            width: 4,
            height: 2,
        };
        pp.run(&logits, &[9.0], &[0], content, (4, 2), &mut out)
            .unwrap();
        assert_eq!(out.masks()[0].bits, [1, 1, 1, 1, 0, 0, 0, 0]);
        assert_eq!(out.masks()[0].coverage, 0.5);
    }

    #[test]
    fn buffers_are_reused_and_len_shrinks() {
        let mut pp = Postprocessor::new([2, 2], (2, 2), T);
        let mut out = MaskSet::default();
        pp.run(
            &[1.0; 8],
            &[1.0, 1.0],
            &[0, 1],
            full(2, 2),
            (3, 3),
            &mut out,
        )
        .unwrap();
        let ptr = out.masks[1].bits.as_ptr();
        pp.run(&[1.0; 4], &[1.0], &[5], full(2, 2), (3, 3), &mut out)
            .unwrap();
        assert_eq!(out.len, 1);
        assert_eq!(out.masks.len(), 2, "spare masks are kept for their buffers");
        pp.run(
            &[1.0; 8],
            &[1.0, 1.0],
            &[0, 1],
            full(2, 2),
            (3, 3),
            &mut out,
        )
        .unwrap();
        assert_eq!(out.masks[1].bits.as_ptr(), ptr);
        assert_eq!(out.masks[1].bits, [1; 9]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let mut pp = Postprocessor::new([2, 2], (4, 4), T);
        let mut out = MaskSet::default();
        let e = pp
            .run(
                &[0.0; 7],
                &[0.0, 0.0],
                &[0, 1],
                full(4, 4),
                (4, 4),
                &mut out,
            )
            .unwrap_err();
        assert_eq!(
            e,
            PostprocessError::Logits {
                len: 7,
                prompts: 2,
                height: 2,
                width: 2
            }
        );
        let e = pp.run(
            &[0.0; 4],
            &[0.0],
            &[0],
            Rect {
                x: 2,
                y: 0,
                width: 3,
                height: 4,
            },
            (4, 4),
            &mut out,
        );
        assert!(matches!(e, Err(PostprocessError::Content { .. })));
        let e = pp.run(&[0.0; 4], &[0.0], &[0], full(4, 4), (0, 4), &mut out);
        assert!(matches!(e, Err(PostprocessError::OutputSize { .. })));
        // nothing to do is fine
        pp.run(&[], &[], &[], full(4, 4), (4, 4), &mut out).unwrap();
        assert_eq!(out.len, 0);
    }

    #[test]
    fn logit_inverts_sigmoid() {
        for p in [0.1f32, 0.5, 0.9] {
            assert!((sigmoid(logit(p)) - p).abs() < 1e-6);
        }
    }
}
