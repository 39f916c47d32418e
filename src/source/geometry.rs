//! Where the picture lies in the scaled frame, and capture-time mapping.
//!
//! Both are pure functions so they can be checked without GStreamer; the
//! letterbox arithmetic mirrors what `videoscale add-borders=true` does
//! (gst-plugins-base `gstvideoconvertscale.c`, `set_info`), so the rectangle we
//! report is the one GStreamer filled.

use super::Rect;
use crate::config::ResizeMode;

/// The picture's rectangle inside an `out_w`×`out_h` frame (square pixels)
/// made from a `src_w`×`src_h` frame whose pixels are `par_n/par_d` wide.
pub(crate) fn content_rect(
    resize: ResizeMode,
    (src_w, src_h): (u32, u32),
    (par_n, par_d): (u32, u32),
    (out_w, out_h): (u32, u32),
) -> Rect {
    let full = Rect {
        x: 0,
        y: 0,
        width: out_w,
        height: out_h,
    };
    if resize == ResizeMode::Stretch || src_w == 0 || src_h == 0 || par_n == 0 || par_d == 0 {
        return full;
    }
    // Display aspect ratio of the source, n/d; the output's is out_w/out_h.
    let n = u64::from(src_w) * u64::from(par_n);
    let d = u64::from(src_h) * u64::from(par_d);
    if n * u64::from(out_h) == d * u64::from(out_w) {
        return full;
    }
    // videoscale rounds the picture's size down and splits the border evenly,
    // the odd pixel going to the bottom/right.
    let to_h = u64::from(out_w) * d / n;
    if to_h <= u64::from(out_h) {
        let border = out_h - to_h as u32;
        Rect {
            x: 0,
            y: border / 2,
            width: out_w,
            height: to_h as u32,
        }
    } else {
        let to_w = (u64::from(out_h) * n / d).min(u64::from(out_w)) as u32;
        let border = out_w - to_w;
        Rect {
            x: border / 2,
            y: 0,
            width: to_w,
            height: out_h,
        }
    }
}

/// Converts a capture instant on the pipeline clock to CLOCK_REALTIME.
///
/// `captured` and `clock_now` are on the pipeline clock (nanoseconds),
/// `realtime_now` is CLOCK_REALTIME read at the same moment as `clock_now`.
/// A capture time in the future or more than `MAX_AGE_NS` old means the
/// timestamps are not capture times (a source that restamps, a clock jump):
/// then the arrival time is the better answer.
pub(crate) fn capture_realtime(captured: u64, clock_now: u64, realtime_now: u64) -> u64 {
    const MAX_AGE_NS: u64 = 10_000_000_000;
    match clock_now.checked_sub(captured) {
        Some(age) if age <= MAX_AGE_NS => realtime_now.saturating_sub(age),
        _ => realtime_now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rect(x: u32, y: u32, width: u32, height: u32) -> Rect {
        Rect {
            x,
            y,
            width,
            height,
        }
    }

    #[test]
    fn four_by_three_into_a_square_is_letterboxed() {
        let r = content_rect(ResizeMode::Letterbox, (640, 480), (1, 1), (224, 224));
        assert_eq!(r, rect(0, 28, 224, 168));
    }

    #[test]
    fn portrait_into_a_square_is_pillarboxed() {
        let r = content_rect(ResizeMode::Letterbox, (480, 640), (1, 1), (224, 224));
        assert_eq!(r, rect(28, 0, 168, 224));
    }

    #[test]
    fn odd_borders_round_like_videoscale() {
        // 16:9 into 224x224: picture 126 rows high, 98 border rows split 49/49.
        let r = content_rect(ResizeMode::Letterbox, (1280, 720), (1, 1), (224, 224));
        assert_eq!(r, rect(0, 49, 224, 126));
        // 4:3 into 225x225: 168.75 rounds down to 168, borders 57 split 28/29.
        let r = content_rect(ResizeMode::Letterbox, (640, 480), (1, 1), (225, 225));
        assert_eq!(r, rect(0, 28, 225, 168));
    }

    #[test]
    fn non_square_source_pixels_count() {
        // 720x576 PAL with 16:15 pixels displays as 4:3.
        let r = content_rect(ResizeMode::Letterbox, (720, 576), (16, 15), (224, 224));
        assert_eq!(r, rect(0, 28, 224, 168));
    }

    #[test]
    fn same_aspect_or_stretch_fills_the_frame() {
        let full = rect(0, 0, 320, 240);
        assert_eq!(
            content_rect(ResizeMode::Letterbox, (640, 480), (1, 1), (320, 240)),
            full
        );
        assert_eq!(
            content_rect(ResizeMode::Stretch, (1280, 720), (1, 1), (320, 240)),
            full
        );
        assert_eq!(
            content_rect(ResizeMode::Letterbox, (0, 0), (1, 1), (320, 240)),
            full
        );
    }

    #[test]
    fn capture_time_is_shifted_by_its_age() {
        assert_eq!(capture_realtime(1_000, 31_000, 5_000_000), 4_970_000);
        assert_eq!(capture_realtime(31_000, 31_000, 5_000_000), 5_000_000);
    }

    #[test]
    fn implausible_capture_times_fall_back_to_arrival() {
        assert_eq!(
            capture_realtime(40_000, 31_000, 5_000_000),
            5_000_000,
            "future"
        );
        assert_eq!(
            capture_realtime(0, 20_000_000_000, 5_000_000),
            5_000_000,
            "too old"
        );
    }
}
