//! How a stream ends and what follows: a bus Error ends it at once, the
//! backoff starts over only after a stream that played, and live sources are
//! told from files by GStreamer's answer.

use std::time::{Duration, Instant};

use super::*;

/// A source posting an Error while it keeps producing (as a camera whose
/// connection broke can, for the frames already buffered) must be rebuilt at
/// once, although every call finds a newer frame waiting, and long before
/// the frame timeout.
#[test]
fn a_bus_error_ends_a_stream_that_still_delivers_frames() {
    let mut config = cfg(
        "videotestsrc name=cam ! video/x-raw,width=64,height=48,framerate=500/1",
        false,
    );
    config.frame_timeout = Duration::from_secs(60);
    // Still waiting to rebuild when checked, so the error is still the last one.
    config.backoff_initial = Duration::from_secs(30);
    config.backoff_max = Duration::from_secs(30);
    let mut source = Source::new(&config, 32, 32).unwrap();
    source.start().unwrap();
    assert_eq!(collect(&mut source, 3, 200).len(), 3);
    let State::Running { pipeline, .. } = &source.state else {
        panic!("not running: {:?}", source.stats());
    };
    let cam = pipeline.element().by_name("cam").unwrap();
    let error = gst::message::Error::builder(gst::ResourceError::Read, "the camera went away")
        .src(&cam)
        .build();
    cam.post_message(error).unwrap();
    for _ in 0..50 {
        if source.stats().restarts > 0 {
            break;
        }
        // Slower than the 2 ms between frames: a frame always waits.
        source
            .next_frame(Duration::from_millis(20), |_| {
                std::thread::sleep(Duration::from_millis(5));
            })
            .unwrap();
    }
    let stats = source.stats();
    assert_eq!(stats.restarts, 1, "{stats:?}");
    assert_eq!(stats.timeouts, 0, "{stats:?}");
    assert!(
        matches!(stats.state, SourceState::Retrying { .. }),
        "{stats:?}"
    );
    let error = source.last_error().unwrap_or_default();
    assert!(error.contains("cam: the camera went away"), "{error}");
}

/// Polls a 5-frame stream (EOS after 25 ms) through four failures and
/// returns how far off the fourth retry is.
fn delay_after_four_short_streams(played_for: Duration) -> Duration {
    let mut config = cfg(
        "videotestsrc num-buffers=5 ! video/x-raw,width=64,height=48,framerate=200/1",
        false,
    );
    config.backoff_initial = Duration::from_millis(20);
    config.backoff_max = Duration::from_secs(10);
    let mut source = Source::new(&config, 32, 32).unwrap();
    source.backoff.played_for = played_for;
    source.start().unwrap();
    let give_up = Instant::now() + Duration::from_secs(20);
    while source.stats().restarts < 4 && Instant::now() < give_up {
        source.next_frame(Duration::ZERO, |_| ()).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let stats = source.stats();
    assert_eq!(stats.restarts, 4, "{stats:?}");
    assert!(
        stats.frames >= 4,
        "every stream delivered a frame: {stats:?}"
    );
    match stats.state {
        SourceState::Retrying { retry_at } => retry_at.saturating_duration_since(Instant::now()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_backoff_starts_over_only_after_a_stream_that_played() {
    // Counted as played: each EOS starts over at the initial 20 ms.
    let played = delay_after_four_short_streams(Duration::ZERO);
    assert!(played <= Duration::from_millis(20), "{played:?}");
    // Failing at once (25 ms of frames, an hour needed): 20, 40, 80, 160 ms.
    let failed = delay_after_four_short_streams(Duration::from_secs(3_600));
    assert!(failed >= Duration::from_millis(100), "{failed:?}");
}

/// Liveness after the first frame, and whether the appsink syncs.
fn liveness(pipeline: &str) -> (Option<bool>, bool) {
    let mut source = Source::new(&cfg(pipeline, false), 32, 32).unwrap();
    source.start().unwrap();
    assert_eq!(collect(&mut source, 1, 200).len(), 1, "{pipeline}");
    let State::Running { pipeline, .. } = &source.state else {
        panic!("not running: {:?}", source.stats());
    };
    let sink = pipeline.element().by_name("maskd_sink").unwrap();
    (source.stats().live, sink.property::<bool>("sync"))
}

#[test]
fn live_sources_run_unsynchronised_and_files_at_their_rate() {
    let live = liveness("videotestsrc is-live=true ! video/x-raw,width=64,height=48");
    assert_eq!(live, (Some(true), false));
    let generated = liveness("videotestsrc ! video/x-raw,width=64,height=48");
    assert_eq!(generated, (Some(false), true));
    let dir = TempDir::new("liveness");
    let clip = dir.0.join("clip.webm");
    make_webm(&clip, 10);
    let file = liveness(&format!("filesrc location={} ! decodebin", clip.display()));
    assert_eq!(file, (Some(false), true));
}
