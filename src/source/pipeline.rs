//! One GStreamer pipeline: the user's fragment plus maskd's conversion,
//! scaling and appsink, and the shared slot its threads hand frames through.
//!
//! GStreamer's streaming thread pulls each sample in the appsink callback and
//! puts it in a one-frame slot (latest wins, the replaced one is counted as
//! dropped); a bus sync handler records the first Error or EOS in the same
//! slot. The frame loop waits on the slot's condvar, so a frame, an error or
//! EOS wakes it at once; once one is recorded the slot takes no more frames,
//! so a source that keeps producing after an error cannot starve it.
//!
//! Whether the source is live is GStreamer's answer, never a guess from
//! element names: `set_state` returning NO_PREROLL (v4l2src, nvarguscamerasrc,
//! `videotestsrc is-live=true`), or else the `live` flag of a LATENCY query
//! sent upstream from the appsink when the first buffer reaches it. RTSP needs
//! the query: rtspsrc, alone or inside uridecodebin, makes the state change
//! ASYNC. Leaves out what to do about errors (that is `source/mod.rs`:
//! rebuild, loop, backoff).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::geometry::capture_realtime;
use super::SourceError;
use crate::config::ResizeMode;

/// Names of the elements maskd appends (the fragment must not reuse them).
const INPUT_NAME: &str = "maskd_in";
const SINK_NAME: &str = "maskd_sink";

/// Counters that survive rebuilds; the streaming threads update them.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Frames that reached the appsink; the next frame's `seq`.
    pub(crate) received: AtomicU64,
    /// Frames replaced in the slot or discarded at teardown before the loop took them.
    pub(crate) dropped: AtomicU64,
}

/// A frame waiting for the loop.
pub(crate) struct Pending {
    pub(crate) sample: gst::Sample,
    pub(crate) seq: u64,
    pub(crate) capture_ns: u64,
}

/// Why a pipeline stopped producing.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Event {
    Eos,
    Error {
        element: String,
        message: String,
        debug: Option<String>,
    },
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Eos => write!(f, "end of stream"),
            Event::Error {
                element, message, ..
            } => write!(f, "{element}: {message}"),
        }
    }
}

/// Whether the pipeline's source is live, as GStreamer answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Liveness {
    /// Not decided yet, or the latency query went unanswered.
    Unknown,
    Live,
    NotLive,
}

impl Liveness {
    fn from_u8(v: u8) -> Liveness {
        match v {
            1 => Liveness::Live,
            2 => Liveness::NotLive,
            _ => Liveness::Unknown,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Liveness::Unknown => 0,
            Liveness::Live => 1,
            Liveness::NotLive => 2,
        }
    }
}

/// What woke [`Pipeline::wait`].
pub(crate) enum Wake {
    Frame(Pending),
    Event(Event),
    Timeout,
}

#[derive(Default)]
struct Slot {
    frame: Option<Pending>,
    /// The first Error/EOS since the last `wait` took one.
    event: Option<Event>,
    /// A Latency message asked the application to redistribute latency.
    latency_changed: bool,
    /// The pipeline clock went away (a clock-providing element left).
    clock_lost: bool,
}

struct Shared {
    slot: Mutex<Slot>,
    wake: Condvar,
    counters: Arc<Counters>,
    /// A [`Liveness`]; decided before the first frame is stored, and capture
    /// times of live frames come from their PTS.
    live: AtomicU8,
    /// The pipeline's minimum latency (ns) from the LATENCY query; u64::MAX unknown.
    latency_ns: AtomicU64,
}

impl Shared {
    fn liveness(&self) -> Liveness {
        Liveness::from_u8(self.live.load(Ordering::Relaxed))
    }

    fn set_liveness(&self, live: Liveness) {
        self.live.store(live.as_u8(), Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, Slot> {
        // The slot holds plain data; a panic elsewhere cannot leave it torn.
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(crate) struct Pipeline {
    pipeline: gst::Pipeline,
    appsink: gst_app::AppSink,
    /// Sink pad of the first converter: its caps are the source's size.
    input: gst::Pad,
    shared: Arc<Shared>,
}

/// The full gst-launch description for `fragment`.
///
/// `videoconvert ! videoscale ! videoconvert`: the first converter passes
/// through any format videoscale handles, so scaling runs on the camera's
/// (usually YUV) frames and only the small scaled frame is converted to RGB.
/// `pixel-aspect-ratio=1/1` makes videoscale either pad (letterbox,
/// `add-borders=true`) or distort (stretch) instead of emitting non-square pixels.
pub(crate) fn describe(fragment: &str, width: u32, height: u32, resize: ResizeMode) -> String {
    let borders = resize == ResizeMode::Letterbox;
    format!(
        "{fragment} ! videoconvert name={INPUT_NAME} ! videoscale add-borders={borders} \
         ! videoconvert ! video/x-raw,format=RGB,width={width},height={height},pixel-aspect-ratio=1/1 \
         ! appsink name={SINK_NAME} max-buffers=1 drop=true sync=true enable-last-sample=false"
    )
}

impl Pipeline {
    /// Parses and wires the pipeline, leaving it in `Null`.
    pub(crate) fn build(
        fragment: &str,
        description: &str,
        counters: Arc<Counters>,
    ) -> Result<Pipeline, SourceError> {
        let mut context = gst::ParseContext::new();
        let parsed = gst::parse::launch_full(
            description,
            Some(&mut context),
            gst::ParseFlags::FATAL_ERRORS,
        )
        .map_err(|e| SourceError::Parse {
            pipeline: fragment.to_string(),
            missing: context.missing_elements(),
            message: e.message().to_string(),
        })?;
        let internal = |what: &str| SourceError::Parse {
            pipeline: fragment.to_string(),
            missing: Vec::new(),
            message: what.to_string(),
        };
        let pipeline = parsed
            .downcast::<gst::Pipeline>()
            .map_err(|_| internal("the description did not produce a pipeline"))?;
        let appsink = pipeline
            .by_name(SINK_NAME)
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
            .ok_or_else(|| {
                internal(
                    "maskd's appsink is missing (does the fragment name an element maskd_sink?)",
                )
            })?;
        let input = pipeline
            .by_name(INPUT_NAME)
            .and_then(|e| e.static_pad("sink"))
            .ok_or_else(|| internal("maskd's input converter is missing (does the fragment name an element maskd_in?)"))?;

        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot::default()),
            wake: Condvar::new(),
            counters,
            live: AtomicU8::new(Liveness::Unknown.as_u8()),
            latency_ns: AtomicU64::new(u64::MAX),
        });
        let sink_pad = appsink
            .static_pad("sink")
            .ok_or_else(|| internal("maskd's appsink has no sink pad"))?;
        // Runs on the streaming thread before the first buffer reaches the
        // sink, so a live source gets `sync=false` before that buffer would
        // wait out the pipeline latency (2 s for rtspsrc's jitterbuffer).
        sink_pad.add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
            {
                let shared = Arc::clone(&shared);
                move |pad, _| {
                    decide_liveness(pad, &shared);
                    gst::PadProbeReturn::Remove
                }
            },
        );
        appsink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample({
                    let shared = Arc::clone(&shared);
                    move |sink| on_sample(sink, &shared)
                })
                .build(),
        );
        let bus = pipeline
            .bus()
            .ok_or_else(|| internal("the pipeline has no bus"))?;
        bus.set_sync_handler({
            let shared = Arc::clone(&shared);
            move |_, msg| on_message(msg, &shared)
        });
        Ok(Pipeline {
            pipeline,
            appsink,
            input,
            shared,
        })
    }

    /// Sets the pipeline playing. Live sources get `sync=false`: their frames
    /// arrive in real time and syncing would only add the pipeline latency.
    /// Files keep `sync=true` so they play at their native rate instead of as
    /// fast as they decode. NO_PREROLL here decides it at once; otherwise the
    /// first buffer's latency query does.
    pub(crate) fn play(&self) -> Result<(), Event> {
        match self.pipeline.set_state(gst::State::Playing) {
            Ok(gst::StateChangeSuccess::NoPreroll) => {
                self.shared.set_liveness(Liveness::Live);
                self.appsink.set_property("sync", false);
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(_) => {
                // The element that failed usually posted an Error first.
                let event = self.shared.lock().event.take();
                Err(event.unwrap_or_else(|| Event::Error {
                    element: self.pipeline.name().to_string(),
                    message: "failed to change state to PLAYING".to_string(),
                    debug: None,
                }))
            }
        }
    }

    /// Whether the source is live; decided by the time the first frame is stored.
    pub(crate) fn liveness(&self) -> Liveness {
        self.shared.liveness()
    }

    /// The minimum latency upstream of the appsink, when the query answered.
    pub(crate) fn latency(&self) -> Option<Duration> {
        match self.shared.latency_ns.load(Ordering::Relaxed) {
            u64::MAX => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// The GStreamer pipeline, for tests that post messages on its bus.
    #[cfg(test)]
    pub(crate) fn element(&self) -> &gst::Pipeline {
        &self.pipeline
    }

    /// Waits until a frame or an event arrives, or `deadline` passes.
    pub(crate) fn wait(&self, deadline: Instant) -> Wake {
        let mut slot = self.shared.lock();
        loop {
            if slot.latency_changed || slot.clock_lost {
                let (latency, clock) = (slot.latency_changed, slot.clock_lost);
                slot.latency_changed = false;
                slot.clock_lost = false;
                drop(slot);
                self.service(latency, clock);
                slot = self.shared.lock();
                continue;
            }
            // A frame that arrived before an error is still a good frame.
            if let Some(frame) = slot.frame.take() {
                return Wake::Frame(frame);
            }
            if let Some(event) = slot.event.take() {
                return Wake::Event(event);
            }
            let now = Instant::now();
            if now >= deadline {
                return Wake::Timeout;
            }
            slot = self
                .shared
                .wake
                .wait_timeout(slot, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Does what the Latency and ClockLost messages ask of the application.
    fn service(&self, latency: bool, clock_lost: bool) {
        if latency {
            if let Err(e) = self.pipeline.recalculate_latency() {
                log::debug!("source: recalculating latency: {e}");
            }
        }
        if clock_lost {
            // The documented recovery: PAUSED then PLAYING selects a new clock.
            log::info!("source: pipeline clock lost, selecting a new one");
            let _ = self.pipeline.set_state(gst::State::Paused);
            let _ = self.pipeline.set_state(gst::State::Playing);
        }
    }

    /// Flushing seek to the start, for looping files.
    pub(crate) fn seek_to_start(&self) -> Result<(), gst::glib::BoolError> {
        self.pipeline.seek_simple(
            gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT,
            gst::ClockTime::ZERO,
        )
    }

    /// Current caps entering maskd's converter (the source's size and PAR).
    pub(crate) fn input_caps(&self) -> Option<gst::Caps> {
        self.input.current_caps()
    }

    /// Stops the pipeline and releases its device; a frame still in the slot
    /// counts as dropped. May block while elements close (RTSP teardown).
    pub(crate) fn shutdown(self) {
        if let Some(bus) = self.pipeline.bus() {
            bus.unset_sync_handler();
        }
        if let Err(e) = self.pipeline.set_state(gst::State::Null) {
            log::warn!("source: stopping the pipeline: {e}");
        }
        if self.shared.lock().frame.take().is_some() {
            self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn realtime_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Runs on the streaming thread: must not block or panic.
fn on_sample(sink: &gst_app::AppSink, shared: &Shared) -> Result<gst::FlowSuccess, gst::FlowError> {
    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Flushing)?;
    let arrival = realtime_now_ns();
    let capture_ns = if shared.liveness() == Liveness::Live {
        live_capture_ns(sink, &sample, arrival)
    } else {
        arrival
    };
    let seq = shared.counters.received.fetch_add(1, Ordering::Relaxed);
    let mut slot = shared.lock();
    if slot.event.is_some() {
        // The stream has ended for the loop; a frame now would only delay
        // the rebuild by being delivered first.
        drop(slot);
        shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
        drop(sample);
        return Ok(gst::FlowSuccess::Ok);
    }
    let replaced = slot.frame.replace(Pending {
        sample,
        seq,
        capture_ns,
    });
    drop(slot);
    if replaced.is_some() {
        shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
    }
    shared.wake.notify_one();
    // `replaced` (a whole frame) is released here, after the lock.
    drop(replaced);
    Ok(gst::FlowSuccess::Ok)
}

/// Asks upstream of the appsink's `pad` whether the source is live, unless
/// `play` already knew, and turns syncing off for a live one. Streaming thread.
fn decide_liveness(pad: &gst::Pad, shared: &Shared) {
    if shared.liveness() != Liveness::Unknown {
        return;
    }
    let mut query = gst::query::Latency::new();
    if !pad.peer_query(&mut query) {
        return;
    }
    let (live, min, _max) = query.result();
    shared
        .latency_ns
        .store(min.nseconds().min(u64::MAX - 1), Ordering::Relaxed);
    if live {
        shared.set_liveness(Liveness::Live);
        if let Some(sink) = pad.parent_element() {
            sink.set_property("sync", false);
        }
    } else {
        shared.set_liveness(Liveness::NotLive);
    }
}

/// A live source stamps buffers with the running time of capture; base time
/// plus running time is the capture instant on the pipeline clock, which we
/// shift to CLOCK_REALTIME by its age. Arrival time when any piece is missing.
fn live_capture_ns(sink: &gst_app::AppSink, sample: &gst::Sample, arrival: u64) -> u64 {
    let running = sample.buffer().and_then(|b| b.pts()).and_then(|pts| {
        sample
            .segment()
            .and_then(|s| s.downcast_ref::<gst::ClockTime>())
            .and_then(|s| s.to_running_time(pts))
    });
    match (running, sink.base_time(), sink.clock()) {
        (Some(running), Some(base), Some(clock)) => {
            let now = clock.time().nseconds();
            capture_realtime(running.nseconds() + base.nseconds(), now, arrival)
        }
        _ => arrival,
    }
}

/// Bus sync handler: runs on whichever thread posted. Records what the loop
/// must act on and drops every message, so nothing accumulates on the bus of
/// a daemon that runs for weeks.
fn on_message(msg: &gst::Message, shared: &Shared) -> gst::BusSyncReply {
    use gst::MessageView;
    let source = || {
        msg.src()
            .map(|s| s.path_string().to_string())
            .unwrap_or_else(|| "pipeline".to_string())
    };
    let mut notify = true;
    {
        let mut slot = shared.lock();
        match msg.view() {
            MessageView::Eos(_) => {
                slot.event.get_or_insert(Event::Eos);
            }
            MessageView::Error(e) => {
                slot.event.get_or_insert(Event::Error {
                    element: source(),
                    message: e.error().to_string(),
                    debug: e.debug().map(|d| d.to_string()),
                });
            }
            MessageView::Latency(_) => slot.latency_changed = true,
            MessageView::ClockLost(_) => slot.clock_lost = true,
            MessageView::Warning(w) => {
                notify = false;
                drop(slot);
                log::warn!("source: {}: {}", source(), w.error());
            }
            _ => notify = false,
        }
    }
    if notify {
        shared.wake.notify_one();
    }
    gst::BusSyncReply::Drop
}
