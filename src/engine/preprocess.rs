//! Frame pixels -> the segmenter's image input: RGB8 rows (any stride) into a reused
//! NCHW f32 buffer, normalised per channel as `(x / 255 - mean) / std`.
//!
//! The normalisation is a 3x256 lookup table built once, so the per-pixel work is three
//! loads and three stores. Letterbox bars are black pixels in the frame and go through
//! like any other. Leaves out: scaling (the source delivers frames at the model size).

use crate::contracts::FrameView;
use crate::engine::manifest::ImageSpec;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreprocessError {
    #[error("frame is {got_width}x{got_height} but the model takes {width}x{height}")]
    Size {
        got_width: u32,
        got_height: u32,
        width: u32,
        height: u32,
    },
    #[error("frame stride {stride} is shorter than a row of {width} RGB pixels")]
    Stride { stride: usize, width: u32 },
    #[error("frame has {len} bytes, {needed} needed for {height} rows of stride {stride}")]
    Short {
        len: usize,
        needed: usize,
        height: u32,
        stride: usize,
    },
    #[error("input buffer holds {len} floats, {needed} needed")]
    Buffer { len: usize, needed: usize },
}

/// Normalises frames of one fixed size into NCHW planes.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    width: u32,
    height: u32,
    /// `lut[c][x]` = `(x / 255 - mean[c]) / std[c]`.
    lut: Box<[[f32; 256]; 3]>,
}

impl Preprocessor {
    pub fn new(spec: &ImageSpec) -> Preprocessor {
        let mut lut = Box::new([[0f32; 256]; 3]);
        for (c, table) in lut.iter_mut().enumerate() {
            for (x, v) in table.iter_mut().enumerate() {
                *v = (x as f32 / 255.0 - spec.mean[c]) / spec.std[c];
            }
        }
        Preprocessor {
            width: spec.width,
            height: spec.height,
            lut,
        }
    }

    /// Floats in one NCHW image (`3 * width * height`).
    pub fn len(&self) -> usize {
        3 * self.width as usize * self.height as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks `frame` and writes it into `out` (`3 * width * height` floats, planes R, G, B).
    pub fn run(&self, frame: &FrameView<'_>, out: &mut [f32]) -> Result<(), PreprocessError> {
        let (w, h) = (self.width as usize, self.height as usize);
        if frame.width != self.width || frame.height != self.height {
            return Err(PreprocessError::Size {
                got_width: frame.width,
                got_height: frame.height,
                width: self.width,
                height: self.height,
            });
        }
        if frame.stride < 3 * w {
            return Err(PreprocessError::Stride {
                stride: frame.stride,
                width: self.width,
            });
        }
        let needed = frame.stride * (h - 1) + 3 * w;
        if frame.data.len() < needed {
            return Err(PreprocessError::Short {
                len: frame.data.len(),
                needed,
                height: self.height,
                stride: frame.stride,
            });
        }
        if out.len() != self.len() {
            return Err(PreprocessError::Buffer {
                len: out.len(),
                needed: self.len(),
            });
        }
        let plane = w * h;
        let (r_plane, rest) = out.split_at_mut(plane);
        let (g_plane, b_plane) = rest.split_at_mut(plane);
        let [lr, lg, lb] = &*self.lut;
        for y in 0..h {
            let row = &frame.data[y * frame.stride..y * frame.stride + 3 * w];
            let dst = y * w..(y + 1) * w;
            let (r, g, b) = (
                &mut r_plane[dst.clone()],
                &mut g_plane[dst.clone()],
                &mut b_plane[dst],
            );
            for (x, px) in row.chunks_exact(3).enumerate() {
                r[x] = lr[px[0] as usize];
                g[x] = lg[px[1] as usize];
                b[x] = lb[px[2] as usize];
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contracts::Rect;

    fn spec(w: u32, h: u32) -> ImageSpec {
        ImageSpec {
            width: w,
            height: h,
            mean: [0.5, 0.25, 0.0],
            std: [0.5, 0.25, 2.0],
        }
    }

    fn frame(data: &[u8], w: u32, h: u32, stride: usize) -> FrameView<'_> {
        FrameView {
            seq: 0,
            capture_ns: 0,
            width: w,
            height: h,
            stride,
            data,
            content: Rect {
                x: 0,
                y: 0,
                width: w,
                height: h,
            },
            source_width: w,
            source_height: h,
        }
    }

    #[test]
    fn nchw_normalised_with_padded_stride() {
        // 2x2 image, stride 8 (2 bytes of row padding that must be ignored)
        let data = [
            255, 0, 0, 0, 255, 0, 99, 99, //
            0, 0, 255, 255, 255, 255, 99, 99,
        ];
        let p = Preprocessor::new(&spec(2, 2));
        let mut out = vec![f32::NAN; p.len()];
        p.run(&frame(&data, 2, 2, 8), &mut out).unwrap();
        let r = [1.0, -1.0, -1.0, 1.0];
        let g = [-1.0, 3.0, -1.0, 3.0];
        let b = [0.0, 0.0, 0.5, 0.5];
        let expected: Vec<f32> = r.iter().chain(&g).chain(&b).copied().collect();
        for (o, e) in out.iter().zip(&expected) {
            assert!((o - e).abs() < 1e-6, "{out:?} vs {expected:?}");
        }
    }

    #[test]
    fn rejects_bad_frames() {
        let p = Preprocessor::new(&spec(2, 2));
        let mut out = vec![0.0; p.len()];
        let data = [0u8; 12];
        assert!(matches!(
            p.run(&frame(&data, 3, 2, 9), &mut out),
            Err(PreprocessError::Size { got_width: 3, .. })
        ));
        assert!(matches!(
            p.run(&frame(&data, 2, 2, 5), &mut out),
            Err(PreprocessError::Stride { stride: 5, .. })
        ));
        assert_eq!(
            p.run(&frame(&data[..11], 2, 2, 6), &mut out),
            Err(PreprocessError::Short {
                len: 11,
                needed: 12,
                height: 2,
                stride: 6
            })
        );
        assert!(p.run(&frame(&data, 2, 2, 6), &mut out[..3]).is_err());
        assert!(p.run(&frame(&data, 2, 2, 6), &mut out).is_ok());
    }
}
