//! The frame handed from the source to the engine.

/// A rectangle in pixel coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// One decoded RGB frame, already scaled to the model's input size, borrowed
/// from GStreamer's buffer for the time the engine reads it (no copy).
#[derive(Debug, Clone, Copy)]
pub struct FrameView<'a> {
    /// Monotonic across pipeline rebuilds, starts at 0; gaps are frames dropped upstream.
    pub seq: u64,
    /// Capture time, CLOCK_REALTIME nanoseconds since the Unix epoch.
    pub capture_ns: u64,
    /// Size of `data` (= the model's input size).
    pub width: u32,
    pub height: u32,
    /// Bytes per row of `data` (>= 3 * width).
    pub stride: usize,
    /// Packed RGB8 rows.
    pub data: &'a [u8],
    /// Where the picture lies in `data` (all of it unless letterboxed).
    pub content: Rect,
    /// Size of the frame as the camera delivered it, before scaling.
    pub source_width: u32,
    pub source_height: u32,
}

impl<'a> FrameView<'a> {
    /// A still image already at the model's size, filling the whole frame (no
    /// letterbox, no capture time): what `maskd eval`, `maskd bench` and tests feed.
    /// `source` is the image's size before it was scaled.
    pub fn still(seq: u64, data: &'a [u8], width: u32, height: u32, source: (u32, u32)) -> Self {
        FrameView {
            seq,
            capture_ns: 0,
            width,
            height,
            stride: 3 * width as usize,
            data,
            content: Rect {
                x: 0,
                y: 0,
                width,
                height,
            },
            source_width: source.0,
            source_height: source.1,
        }
    }
}
