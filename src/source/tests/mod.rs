//! In-process tests of the source with `videotestsrc` and generated files in
//! a temporary directory (never a camera; `rtsp.rs` serves a fake one on
//! loopback). Short timeouts keep them quick. `recovery.rs`: how a stream
//! ends, the backoff after it, live detection.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;

use super::*;
use crate::config::ResizeMode;

mod recovery;
mod rtsp;

fn cfg(pipeline: &str, looping: bool) -> SourceConfig {
    SourceConfig {
        pipeline: pipeline.to_string(),
        looping,
        resize: ResizeMode::Letterbox,
        frame_timeout: Duration::from_millis(1_000),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("maskd-source-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a gst-launch description to EOS (for making test files).
fn run_to_eos(description: &str) {
    gst::init().unwrap();
    let pipeline = gst::parse::launch(description).unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(30),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("test file pipeline finished in 30 s");
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(matches!(msg.view(), gst::MessageView::Eos(_)), "{msg:?}");
}

/// A VP8/WebM clip of `frames` frames at 100 fps.
fn make_webm(path: &Path, frames: u32) {
    run_to_eos(&format!(
        "videotestsrc num-buffers={frames} pattern=ball ! video/x-raw,width=160,height=120,framerate=100/1 \
         ! vp8enc deadline=1 ! webmmux ! filesink location={}",
        path.display()
    ));
}

/// What a test keeps of each frame.
#[derive(Debug, Clone, Copy)]
struct Seen {
    seq: u64,
    capture_ns: u64,
}

/// Calls `next_frame` until `want` frames arrived or `calls` calls were made.
fn collect(source: &mut Source, want: usize, calls: usize) -> Vec<Seen> {
    let mut seen = Vec::new();
    for _ in 0..calls {
        if seen.len() >= want {
            break;
        }
        let got = source
            .next_frame(Duration::from_millis(50), |f| Seen {
                seq: f.seq,
                capture_ns: f.capture_ns,
            })
            .unwrap();
        seen.extend(got);
    }
    seen
}

fn assert_increasing(seen: &[Seen]) {
    for pair in seen.windows(2) {
        assert!(
            pair[0].seq < pair[1].seq,
            "seq went {} -> {}",
            pair[0].seq,
            pair[1].seq
        );
    }
}

fn rgb_at(f: &FrameView<'_>, x: u32, y: u32) -> [u8; 3] {
    let at = y as usize * f.stride + x as usize * 3;
    [f.data[at], f.data[at + 1], f.data[at + 2]]
}

fn near(got: [u8; 3], want: [u8; 3]) -> bool {
    got.iter().zip(want).all(|(g, w)| g.abs_diff(w) <= 12)
}

const RED: [u8; 3] = [255, 0, 0];
const BLACK: [u8; 3] = [0, 0, 0];

#[test]
fn frames_have_the_requested_size_stride_and_content() {
    let mut source = Source::new(
        &cfg(
            "videotestsrc is-live=true pattern=red ! video/x-raw,width=320,height=240",
            false,
        ),
        225,
        225,
    )
    .unwrap();
    source.start().unwrap();
    let mut checked = false;
    for _ in 0..100 {
        let got = source
            .next_frame(Duration::from_millis(100), |f| {
                assert_eq!((f.width, f.height), (225, 225));
                // RGB rows are padded to 4 bytes: 225 * 3 = 675 -> 676.
                assert_eq!(f.stride, 676);
                assert!(f.data.len() >= f.stride * 224 + 225 * 3);
                assert_eq!((f.source_width, f.source_height), (320, 240));
                assert_eq!(
                    f.content,
                    Rect {
                        x: 0,
                        y: 28,
                        width: 225,
                        height: 168
                    }
                );
                assert!(near(rgb_at(f, 112, 112), RED), "{:?}", rgb_at(f, 112, 112));
                assert!(near(rgb_at(f, 0, 28), RED), "first picture row");
                assert!(near(rgb_at(f, 224, 195), RED), "last picture row");
                assert!(near(rgb_at(f, 112, 5), BLACK), "top border");
                assert!(near(rgb_at(f, 112, 27), BLACK), "last top border row");
                assert!(near(rgb_at(f, 112, 196), BLACK), "first bottom border row");
            })
            .unwrap();
        if got.is_some() {
            checked = true;
            break;
        }
    }
    assert!(checked, "no frame arrived");
    assert_eq!(source.stats().frames, 1);
}

/// The content rectangle we report is where `videoscale add-borders=true` put
/// the picture, for a pillarboxed (portrait) source too.
#[test]
fn letterbox_rect_matches_the_pixels_for_a_portrait_source() {
    let mut source = Source::new(
        &cfg(
            "videotestsrc is-live=true pattern=red ! video/x-raw,width=240,height=320",
            false,
        ),
        224,
        224,
    )
    .unwrap();
    source.start().unwrap();
    let mut rect = None;
    for _ in 0..100 {
        rect = source
            .next_frame(Duration::from_millis(100), |f| {
                let c = f.content;
                assert!(near(rgb_at(f, c.x, 100), RED));
                assert!(near(rgb_at(f, c.x + c.width - 1, 100), RED));
                assert!(near(rgb_at(f, c.x - 1, 100), BLACK));
                assert!(near(rgb_at(f, c.x + c.width, 100), BLACK));
                c
            })
            .unwrap();
        if rect.is_some() {
            break;
        }
    }
    assert_eq!(
        rect,
        Some(Rect {
            x: 28,
            y: 0,
            width: 168,
            height: 224
        })
    );
}

#[test]
fn stretch_fills_the_whole_frame() {
    let mut config = cfg(
        "videotestsrc is-live=true pattern=red ! video/x-raw,width=320,height=180",
        false,
    );
    config.resize = ResizeMode::Stretch;
    let mut source = Source::new(&config, 64, 64).unwrap();
    source.start().unwrap();
    let mut checked = false;
    for _ in 0..100 {
        let got = source
            .next_frame(Duration::from_millis(100), |f| {
                assert_eq!(
                    f.content,
                    Rect {
                        x: 0,
                        y: 0,
                        width: 64,
                        height: 64
                    }
                );
                for (x, y) in [(0, 0), (63, 0), (0, 63), (63, 63)] {
                    assert!(
                        near(rgb_at(f, x, y), RED),
                        "corner {x},{y}: {:?}",
                        rgb_at(f, x, y)
                    );
                }
            })
            .unwrap();
        if got.is_some() {
            checked = true;
            break;
        }
    }
    assert!(checked, "no frame arrived");
}

#[test]
fn eos_without_looping_rebuilds_and_frames_resume() {
    let mut source = Source::new(
        &cfg(
            "videotestsrc num-buffers=5 ! video/x-raw,width=64,height=48,framerate=200/1",
            false,
        ),
        32,
        32,
    )
    .unwrap();
    source.start().unwrap();
    let seen = collect(&mut source, 14, 400);
    let stats = source.stats();
    assert!(seen.len() >= 14, "only {} frames, {stats:?}", seen.len());
    assert!(stats.restarts >= 2, "{stats:?}");
    assert_eq!(stats.loops, 0);
    assert_increasing(&seen);
}

#[test]
fn looping_keeps_seq_going_without_restarts() {
    let dir = TempDir::new("loop");
    let clip = dir.0.join("clip.webm");
    make_webm(&clip, 10);
    let pipeline = format!("filesrc location={} ! decodebin", clip.display());
    let mut source = Source::new(&cfg(&pipeline, true), 64, 64).unwrap();
    source.start().unwrap();
    let seen = collect(&mut source, 25, 400);
    let stats = source.stats();
    assert!(seen.len() >= 25, "only {} frames, {stats:?}", seen.len());
    assert_eq!(stats.restarts, 0, "{stats:?}");
    assert!(stats.loops >= 2, "{stats:?}");
    assert_increasing(&seen);
}

#[test]
fn nonexistent_element_is_an_error_naming_it() {
    let err = Source::new(
        &cfg("nosuchelement0 device=x ! videoconvert", false),
        32,
        32,
    )
    .err()
    .expect("parsing must fail");
    match &err {
        SourceError::Parse { missing, .. } => assert_eq!(missing, &["nosuchelement0".to_string()]),
        other => panic!("expected Parse, got {other:?}"),
    }
    let shown = err.to_string();
    assert!(shown.starts_with("source.pipeline: "), "{shown}");
    assert!(shown.contains("nosuchelement0"), "{shown}");
}

#[test]
fn bad_syntax_is_an_error() {
    let err = Source::new(&cfg("videotestsrc ! ! videoconvert", false), 32, 32)
        .err()
        .expect("parsing must fail");
    assert!(matches!(err, SourceError::Parse { .. }), "{err:?}");
    assert!(
        err.to_string().contains("videotestsrc ! ! videoconvert"),
        "{err}"
    );
}

#[test]
fn truncated_files_are_restarted() {
    let dir = TempDir::new("truncated");
    let clip = dir.0.join("clip.webm");
    make_webm(&clip, 60);
    let bytes = std::fs::read(&clip).unwrap();
    let cut = dir.0.join("cut.webm");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    // An mp4 without its index (moov comes last without faststart).
    let mp4 = dir.0.join("clip.mp4");
    run_to_eos(&format!(
        "videotestsrc num-buffers=10 ! video/x-raw,width=64,height=48 ! jpegenc ! qtmux ! filesink location={}",
        mp4.display()
    ));
    let bytes = std::fs::read(&mp4).unwrap();
    let cut_mp4 = dir.0.join("cut.mp4");
    std::fs::write(&cut_mp4, &bytes[..bytes.len() / 2]).unwrap();

    for file in [&cut, &cut_mp4] {
        let pipeline = format!("filesrc location={} ! decodebin", file.display());
        let mut config = cfg(&pipeline, false);
        config.frame_timeout = Duration::from_millis(300);
        let mut source = Source::new(&config, 32, 32).unwrap();
        let _ = source.start();
        for _ in 0..200 {
            if source.stats().restarts >= 2 {
                break;
            }
            source
                .next_frame(Duration::from_millis(20), |_| ())
                .unwrap();
        }
        let stats = source.stats();
        assert!(stats.restarts >= 2, "{}: {stats:?}", file.display());
        assert!(matches!(
            stats.state,
            SourceState::Running | SourceState::Retrying { .. }
        ));
    }
}

/// A source that stops producing without an error or EOS (a truncated H.264
/// mp4 behaves so) is caught by the frame timeout.
#[test]
fn silent_source_hits_the_frame_timeout() {
    let mut config = cfg("videotestsrc is-live=true ! valve drop=true", false);
    config.frame_timeout = Duration::from_millis(150);
    let mut source = Source::new(&config, 32, 32).unwrap();
    source.start().unwrap();
    let mut error = None;
    for _ in 0..200 {
        let got = source
            .next_frame(Duration::from_millis(20), |_| ())
            .unwrap();
        assert!(got.is_none(), "the valve lets nothing through");
        if source.stats().restarts > 0 {
            error = source.last_error().map(str::to_owned);
            break;
        }
    }
    let error = error.expect("the frame timeout restarted the pipeline");
    assert!(error.contains("no frame for 150ms"), "{error}");
    assert!(matches!(source.stats().state, SourceState::Retrying { .. }));
}

#[test]
fn a_slow_consumer_loses_old_frames_and_they_are_counted() {
    let mut source = Source::new(
        &cfg(
            "videotestsrc ! video/x-raw,width=64,height=48,framerate=500/1",
            false,
        ),
        32,
        32,
    )
    .unwrap();
    source.start().unwrap();
    let mut seqs = Vec::new();
    for _ in 0..200 {
        if seqs.len() >= 5 {
            break;
        }
        let got = source
            .next_frame(Duration::from_millis(50), |f| {
                std::thread::sleep(Duration::from_millis(20));
                f.seq
            })
            .unwrap();
        seqs.extend(got);
    }
    let stats = source.stats();
    assert_eq!(seqs.len(), 5, "{stats:?}");
    let gaps: u64 = seqs[0] + seqs.windows(2).map(|w| w[1] - w[0] - 1).sum::<u64>();
    assert!(
        gaps > 0,
        "a 20 ms consumer of a 500 fps source must miss frames: {seqs:?}"
    );
    assert!(stats.dropped >= gaps, "{stats:?} gaps {gaps}");
    let waiting = stats.received - stats.frames - stats.dropped;
    assert!(waiting <= 1, "{stats:?}");
}

#[test]
fn missing_device_fails_start_and_keeps_retrying() {
    let mut source = Source::new(
        &cfg("v4l2src device=/dev/maskd-no-such-camera", false),
        32,
        32,
    )
    .unwrap();
    let err = source.start().expect_err("no such device");
    assert!(matches!(err, SourceError::Start { .. }), "{err:?}");
    assert!(err.to_string().contains("v4l2src"), "{err}");
    assert!(matches!(source.stats().state, SourceState::Retrying { .. }));
    for _ in 0..100 {
        if source.stats().restarts >= 3 {
            break;
        }
        let got = source
            .next_frame(Duration::from_millis(20), |_| ())
            .unwrap();
        assert!(got.is_none());
    }
    assert!(source.stats().restarts >= 3, "{:?}", source.stats());
    assert!(source
        .last_error()
        .is_some_and(|e| e.contains("restart failed")));
}

#[test]
fn live_capture_times_are_recent_and_increasing() {
    let mut source = Source::new(
        &cfg(
            "videotestsrc is-live=true ! video/x-raw,width=64,height=48,framerate=60/1",
            false,
        ),
        32,
        32,
    )
    .unwrap();
    source.start().unwrap();
    let seen = collect(&mut source, 3, 200);
    assert_eq!(seen.len(), 3);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    for s in &seen {
        assert!(
            s.capture_ns <= now && now - s.capture_ns < 60_000_000_000,
            "{s:?} vs {now}"
        );
    }
    assert!(
        seen.windows(2).all(|w| w[0].capture_ns < w[1].capture_ns),
        "{seen:?}"
    );
}

#[test]
fn stop_then_start_continues_the_sequence() {
    let mut source = Source::new(
        &cfg(
            "videotestsrc is-live=true ! video/x-raw,width=64,height=48",
            false,
        ),
        32,
        32,
    )
    .unwrap();
    assert!(matches!(
        source.next_frame(Duration::ZERO, |_| ()),
        Err(SourceError::NotStarted)
    ));
    source.start().unwrap();
    let before = collect(&mut source, 2, 200);
    source.stop();
    assert_eq!(source.stats().state, SourceState::Idle);
    assert!(matches!(
        source.next_frame(Duration::ZERO, |_| ()),
        Err(SourceError::NotStarted)
    ));
    source.start().unwrap();
    let after = collect(&mut source, 2, 200);
    assert_eq!((before.len(), after.len()), (2, 2));
    assert!(after[0].seq > before[1].seq);
    assert_eq!(source.stats().restarts, 0);
}
