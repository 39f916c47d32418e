//! Source: a GStreamer pipeline built from the config's gst-launch fragment,
//! ending in maskd's conversion, scaling and appsink, lending RGB frames at the
//! model's input size to the frame loop without copying.
//!
//! Owns the failure handling the field needs: a bus Error or an EOS ends the
//! stream at once (a frame already waiting is still delivered, later ones are
//! not), and no frame for `frame_timeout` is the last resort for sources that
//! stop silently (a truncated mp4 never gets EOS). The pipeline is torn down
//! and rebuilt after an exponential backoff (`backoff_initial` doubling to
//! `backoff_max`). A stream that played (frames for `backoff::PLAYED_FOR`)
//! starts the delays over and is retried at `backoff_initial` for
//! `backoff::FAST_RETRY_FOR`, so a camera that drops once an hour is back
//! within a fraction of a second each time, while one that fails at once keeps
//! backing off. Waiting for a retry never blocks the caller longer than the
//! `wait` it passed, so the loop keeps answering clients and signals while a
//! camera is gone. With `looping`, EOS seeks back to the start instead.
//!
//! Frames: latest wins. The appsink callback keeps one frame; a newer one
//! replaces it and the replaced one counts as dropped. `seq` numbers every
//! frame that reached the appsink, across rebuilds, so gaps are drops.
//!
//! Pacing: live sources (cameras, RTSP, `videotestsrc is-live=true`, as
//! GStreamer reports them: see `pipeline.rs`) run with `sync=false`, delivering
//! frames as they arrive; syncing would hold each RTSP frame for the 2 s of
//! rtspsrc's jitterbuffer latency. Non-live sources (files) run with
//! `sync=true`, at their native rate, so a looping demo clip plays like a
//! camera instead of as fast as it decodes.
//!
//! Capture time (`capture_ns`, CLOCK_REALTIME): for live sources, the buffer's
//! PTS mapped to running time plus the pipeline's base time is the capture
//! instant on the pipeline clock; it is shifted to realtime by its age on that
//! clock. For files, and whenever a piece is missing or implausible, the time
//! the frame reached the appsink.
//!
//! Leaves out what the pixels mean (the engine) and threads of its own: all
//! waiting happens in [`Source::next_frame`], on the caller's thread.

mod backoff;
mod geometry;
mod pipeline;

#[cfg(test)]
mod tests;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;

use crate::contracts::{FrameView, Rect};

use crate::config::SourceConfig;
use backoff::Backoff;
use pipeline::{Counters, Event, Liveness, Pending, Pipeline, Wake};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("initialising GStreamer: {0}")]
    Init(#[source] gst::glib::Error),
    /// The fragment does not parse, or names an element no installed plugin provides.
    #[error("source.pipeline: {message}{} (in `{pipeline}`)", missing_hint(.missing))]
    Parse {
        pipeline: String,
        missing: Vec<String>,
        message: String,
    },
    /// The first start failed; the source keeps retrying in `next_frame`.
    #[error("starting the pipeline: {element}: {message}")]
    Start {
        element: String,
        message: String,
        debug: Option<String>,
    },
    #[error("next_frame called while the source is stopped (call start first)")]
    NotStarted,
}

fn missing_hint(missing: &[String]) -> String {
    if missing.is_empty() {
        String::new()
    } else {
        format!(
            "; no installed GStreamer plugin provides {} (gst-inspect-1.0 lists what is installed)",
            missing.join(", ")
        )
    }
}

/// What the source is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceState {
    /// Not started, or stopped.
    Idle,
    /// A pipeline is playing (or prerolling).
    Running,
    /// The pipeline failed; the next rebuild is due at `retry_at`.
    Retrying { retry_at: Instant },
}

/// Counters since the source was made; all survive rebuilds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceStats {
    /// Frames lent to the caller.
    pub frames: u64,
    /// Frames that reached the appsink (`frames + dropped`, plus one if a frame waits).
    pub received: u64,
    /// Frames replaced by a newer one before the caller took them.
    pub dropped: u64,
    /// Pipeline failures (error, EOS without looping, frame timeout, failed start).
    pub restarts: u64,
    /// The restarts the frame timeout caused (the rest came from the bus).
    pub timeouts: u64,
    /// Seeks back to the start on EOS (looping).
    pub loops: u64,
    pub state: SourceState,
    /// Whether the running pipeline's source is live, as GStreamer answered;
    /// None until its first frame, while none runs, or if it did not answer.
    pub live: Option<bool>,
}

enum State {
    Idle,
    Running {
        pipeline: Pipeline,
        /// Last frame delivered, seek, or start: the frame timeout counts from here.
        progress: Instant,
        started: Instant,
        /// This pipeline's first frame: how long it played when it fails.
        first_frame: Option<Instant>,
    },
    Retrying {
        at: Instant,
    },
}

/// The source's scaled-frame geometry, recomputed only when caps change.
struct Geometry {
    output: Option<(gst::Caps, gst_video::VideoInfo)>,
    input: Option<(gst::Caps, (u32, u32), Rect)>,
}

pub struct Source {
    cfg: SourceConfig,
    width: u32,
    height: u32,
    description: String,
    /// Built by `new` (so parse errors surface at start-up) and used by the first `start`.
    prepared: Option<Pipeline>,
    state: State,
    backoff: Backoff,
    counters: Arc<Counters>,
    frames: u64,
    restarts: u64,
    timeouts: u64,
    loops: u64,
    last_error: Option<String>,
    geometry: Geometry,
}

impl Source {
    /// Builds the pipeline for `cfg.pipeline` delivering `width`×`height` RGB
    /// frames. Parses it now: bad syntax or a nonexistent element is an error
    /// here, naming the element.
    pub fn new(cfg: &SourceConfig, width: u32, height: u32) -> Result<Source, SourceError> {
        gst::init().map_err(SourceError::Init)?;
        let description = pipeline::describe(&cfg.pipeline, width, height, cfg.resize);
        let counters = Arc::new(Counters::default());
        let prepared = Pipeline::build(&cfg.pipeline, &description, Arc::clone(&counters))?;
        Ok(Source {
            cfg: cfg.clone(),
            width,
            height,
            description,
            prepared: Some(prepared),
            state: State::Idle,
            backoff: Backoff::new(cfg.backoff_initial, cfg.backoff_max),
            counters,
            frames: 0,
            restarts: 0,
            timeouts: 0,
            loops: 0,
            last_error: None,
            geometry: Geometry {
                output: None,
                input: None,
            },
        })
    }

    /// Sets the pipeline playing. On failure (a missing camera fails here) the
    /// error is returned *and* a retry is scheduled: the caller may abort, or
    /// carry on and let `next_frame` keep retrying with backoff.
    pub fn start(&mut self) -> Result<(), SourceError> {
        if !matches!(self.state, State::Idle) {
            return Ok(());
        }
        match self.launch() {
            Ok(()) => Ok(()),
            Err(event) => {
                let err = match &event {
                    Event::Error {
                        element,
                        message,
                        debug,
                    } => SourceError::Start {
                        element: element.clone(),
                        message: message.clone(),
                        debug: debug.clone(),
                    },
                    Event::Eos => SourceError::Start {
                        element: "pipeline".into(),
                        message: "end of stream before the first frame".into(),
                        debug: None,
                    },
                };
                self.schedule_retry(&format!("start failed: {event}"));
                Err(err)
            }
        }
    }

    /// Waits up to `wait` for the newest frame and lends it to `f` (mapped
    /// readable, no copy). Ok(None): no frame within `wait`, including while a
    /// failed pipeline waits for its retry. Bus errors, EOS and the frame
    /// timeout are handled here (logged, rebuilt with backoff), never returned.
    pub fn next_frame<R>(
        &mut self,
        wait: Duration,
        f: impl FnOnce(&FrameView<'_>) -> R,
    ) -> Result<Option<R>, SourceError> {
        let deadline = Instant::now() + wait;
        let mut f = Some(f);
        loop {
            match &mut self.state {
                State::Idle => return Err(SourceError::NotStarted),
                State::Retrying { at } => {
                    let at = *at;
                    let now = Instant::now();
                    if now < at {
                        std::thread::sleep(at.min(deadline) - now);
                        if Instant::now() < at {
                            return Ok(None);
                        }
                    }
                    self.retry();
                }
                State::Running {
                    pipeline,
                    progress,
                    started,
                    first_frame,
                } => match pipeline.wait(deadline) {
                    Wake::Frame(pending) => {
                        *progress = Instant::now();
                        if first_frame.is_none() {
                            *first_frame = Some(*progress);
                            log_first_frame(pipeline, progress.duration_since(*started));
                        }
                        if let Some(r) = self.deliver(pending, &mut f) {
                            return Ok(Some(r));
                        }
                    }
                    Wake::Event(Event::Eos) if self.cfg.looping => match pipeline.seek_to_start() {
                        Ok(()) => {
                            *progress = Instant::now();
                            self.loops += 1;
                            log::debug!("source: end of stream, looping");
                        }
                        Err(e) => self.fail(&format!("end of stream and seek failed: {e}")),
                    },
                    Wake::Event(event) => {
                        if let Event::Error { debug: Some(d), .. } = &event {
                            log::debug!("source: {d}");
                        }
                        self.fail(&event.to_string());
                    }
                    Wake::Timeout => {
                        if progress.elapsed() >= self.cfg.frame_timeout {
                            let timeout = self.cfg.frame_timeout;
                            self.timeouts += 1;
                            self.fail(&format!("no frame for {timeout:?}"));
                        }
                    }
                },
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    pub fn stats(&self) -> SourceStats {
        SourceStats {
            frames: self.frames,
            received: self.counters.received.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            restarts: self.restarts,
            timeouts: self.timeouts,
            loops: self.loops,
            state: match self.state {
                State::Idle => SourceState::Idle,
                State::Running { .. } => SourceState::Running,
                State::Retrying { at } => SourceState::Retrying { retry_at: at },
            },
            live: match &self.state {
                State::Running {
                    pipeline,
                    first_frame: Some(_),
                    ..
                } => match pipeline.liveness() {
                    Liveness::Live => Some(true),
                    Liveness::NotLive => Some(false),
                    Liveness::Unknown => None,
                },
                _ => None,
            },
        }
    }

    /// Why the pipeline last failed; cleared once frames flow again.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Sets the pipeline to Null (releasing the camera) and waits for it.
    /// `start` may be called again afterwards. Also done on drop.
    pub fn stop(&mut self) {
        if let State::Running { pipeline, .. } = std::mem::replace(&mut self.state, State::Idle) {
            pipeline.shutdown();
        }
        self.prepared = None;
    }

    /// Builds (or takes the prepared) pipeline and sets it playing.
    fn launch(&mut self) -> Result<(), Event> {
        let pipeline = match self.prepared.take() {
            Some(p) => p,
            None => Pipeline::build(
                &self.cfg.pipeline,
                &self.description,
                Arc::clone(&self.counters),
            )
            .map_err(|e| Event::Error {
                element: "pipeline".into(),
                message: e.to_string(),
                debug: None,
            })?,
        };
        self.geometry.input = None;
        if let Err(event) = pipeline.play() {
            teardown(pipeline);
            return Err(event);
        }
        log::info!("source: playing {}", self.cfg.pipeline);
        let now = Instant::now();
        self.state = State::Running {
            pipeline,
            progress: now,
            started: now,
            first_frame: None,
        };
        Ok(())
    }

    fn retry(&mut self) {
        if let Err(event) = self.launch() {
            self.schedule_retry(&format!("restart failed: {event}"));
        }
    }

    /// Tears the running pipeline down and schedules a rebuild.
    fn fail(&mut self, reason: &str) {
        if let State::Running {
            pipeline,
            progress,
            first_frame,
            ..
        } = std::mem::replace(&mut self.state, State::Idle)
        {
            teardown(pipeline);
            let played = first_frame.map(|first| progress.duration_since(first));
            self.backoff.ended(played, Instant::now());
        }
        self.schedule_retry(reason);
    }

    fn schedule_retry(&mut self, reason: &str) {
        let delay = self.backoff.next_delay(Instant::now());
        self.restarts += 1;
        log::warn!(
            "source: {reason}; rebuilding in {delay:?} (restart {})",
            self.restarts
        );
        self.last_error = Some(reason.to_string());
        self.state = State::Retrying {
            at: Instant::now() + delay,
        };
    }

    /// Maps `pending` and lends it to `f`; None (frame skipped, logged) if the
    /// buffer does not look like what the caps promised.
    fn deliver<R, F: FnOnce(&FrameView<'_>) -> R>(
        &mut self,
        pending: Pending,
        f: &mut Option<F>,
    ) -> Option<R> {
        let State::Running { pipeline, .. } = &self.state else {
            return None;
        };
        let (source_size, content) =
            self.geometry
                .input(pipeline, self.cfg.resize, (self.width, self.height));
        let info = self.geometry.output(&pending.sample)?;
        let buffer = pending.sample.buffer()?;
        let frame = match gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, info) {
            Ok(frame) => frame,
            Err(e) => {
                log::warn!("source: frame {} skipped: mapping: {e}", pending.seq);
                return None;
            }
        };
        if frame.width() != self.width || frame.height() != self.height {
            log::warn!(
                "source: frame {} skipped: {}x{} instead of {}x{}",
                pending.seq,
                frame.width(),
                frame.height(),
                self.width,
                self.height
            );
            return None;
        }
        let data = frame.plane_data(0).ok()?;
        let stride = usize::try_from(*frame.plane_stride().first()?).ok()?;
        let view = FrameView {
            seq: pending.seq,
            capture_ns: pending.capture_ns,
            width: self.width,
            height: self.height,
            stride,
            data,
            content,
            source_width: source_size.0,
            source_height: source_size.1,
        };
        let f = f.take()?;
        let r = f(&view);
        self.frames += 1;
        if self.last_error.take().is_some() {
            log::info!("source: frames flowing again");
        }
        Some(r)
    }
}

impl Geometry {
    /// Source size and content rectangle from the converter's input caps.
    fn input(
        &mut self,
        pipeline: &Pipeline,
        resize: crate::config::ResizeMode,
        out: (u32, u32),
    ) -> ((u32, u32), Rect) {
        let Some(caps) = pipeline.input_caps() else {
            let full = Rect {
                x: 0,
                y: 0,
                width: out.0,
                height: out.1,
            };
            return ((0, 0), full);
        };
        match &self.input {
            Some((cached, size, rect)) if cached.as_ptr() == caps.as_ptr() => (*size, *rect),
            _ => {
                let (size, par) = match gst_video::VideoInfo::from_caps(&caps) {
                    Ok(info) => {
                        let par = info.par();
                        (
                            (info.width(), info.height()),
                            (par.numer().max(0) as u32, par.denom().max(0) as u32),
                        )
                    }
                    Err(_) => ((0, 0), (1, 1)),
                };
                let rect = geometry::content_rect(resize, size, par, out);
                log::info!(
                    "source: {}x{} frames, picture at {}x{}+{}+{} of {}x{}",
                    size.0,
                    size.1,
                    rect.width,
                    rect.height,
                    rect.x,
                    rect.y,
                    out.0,
                    out.1
                );
                self.input = Some((caps, size, rect));
                (size, rect)
            }
        }
    }

    /// VideoInfo of the appsink's caps.
    fn output(&mut self, sample: &gst::Sample) -> Option<&gst_video::VideoInfo> {
        let caps = sample.caps()?;
        let fresh = !matches!(&self.output, Some((cached, _)) if cached.as_ptr() == caps.as_ptr());
        if fresh {
            match gst_video::VideoInfo::from_caps(caps) {
                Ok(info) => self.output = Some((caps.to_owned(), info)),
                Err(e) => {
                    log::warn!("source: frame skipped: caps {caps}: {e}");
                    return None;
                }
            }
        }
        self.output.as_ref().map(|(_, info)| info)
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Says how pacing was decided and how long the (re)start took to its first frame.
fn log_first_frame(pipeline: &Pipeline, after: Duration) {
    let pacing = match (pipeline.liveness(), pipeline.latency()) {
        (Liveness::Live, Some(latency)) => {
            format!("live (latency {latency:?}), unsynchronised")
        }
        (Liveness::Live, None) => "live, unsynchronised".to_string(),
        (Liveness::NotLive, _) => "not live, at native rate".to_string(),
        (Liveness::Unknown, _) => {
            "liveness unknown (no answer to the latency query), at native rate".to_string()
        }
    };
    log::info!("source: first frame {after:.0?} after start; {pacing}");
}

/// Stops a failed pipeline off the caller's thread: some elements block in
/// `set_state(Null)` (an RTSP TEARDOWN to a dead camera), and the loop must
/// keep serving clients meanwhile.
fn teardown(pipeline: Pipeline) {
    let handoff = Arc::new(std::sync::Mutex::new(Some(pipeline)));
    let theirs = Arc::clone(&handoff);
    let spawned = std::thread::Builder::new()
        .name("maskd-teardown".into())
        .spawn(move || {
            let taken = theirs.lock().ok().and_then(|mut p| p.take());
            if let Some(pipeline) = taken {
                pipeline.shutdown();
            }
        });
    if let Err(e) = spawned {
        log::warn!("source: no thread for teardown ({e}); stopping inline");
        let taken = handoff.lock().ok().and_then(|mut p| p.take());
        if let Some(pipeline) = taken {
            pipeline.shutdown();
        }
    }
}
