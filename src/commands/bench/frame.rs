//! One variant loaded in this process and what one of its frames costs, stage by stage.
//!
//! A frame is the daemon's per-frame work after the source: `Engine::infer_sized`
//! (preprocessing, the segmenter plan, postprocessing into the reused `MaskSet`) and
//! then `Publisher::publish` to one subscribed client reading on another thread, over
//! the daemon's own SOCK_SEQPACKET socket in a scratch directory. The publisher encodes
//! each mask as it publishes (once per encoding in use), so the `publish` stage holds
//! the RLE encoding as well as building and sending the FRAME; the client thread's
//! receiving is not on the frame's clock but its allocations, like every thread's,
//! are in the process's count.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::alloc;
use crate::config::{EngineConfig, DEFAULT_MAX_PROMPTS};
use crate::config::{MaskEncoding, PromptsConfig, PublishConfig};
use crate::contracts::{FrameView, MaskSet};
use crate::engine::Engine;
use crate::publish::wire::{self, ServerMessage};
use crate::publish::{Client, ClientError, Publisher};

use super::{BenchArgs, Variant};

/// Mask size of every bench frame: the demo config's `[masks]`.
pub(crate) const MASK_SIZE: (u32, u32) = (160, 120);
/// How long the bench waits for its client to subscribe.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(10);
/// The client thread's receive timeout: how soon it notices it should stop.
const CLIENT_POLL: Duration = Duration::from_millis(100);

/// What one frame cost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct FrameSample {
    /// The whole frame: the four stages below and the clock reads between them.
    pub total_ms: f64,
    pub preprocess_ms: f64,
    pub model_ms: f64,
    pub postprocess_ms: f64,
    /// Encoding the masks, building the FRAME and sending it (`Publisher::publish`).
    pub publish_ms: f64,
    /// Heap allocations inside the segmenter plan's run, when counted.
    pub model_allocs: Option<u64>,
    /// With a pruning schedule, parts of `model_ms`: before the decoder, and in the
    /// pruner; and the pruner's allocations.
    pub encoder_ms: f64,
    pub select_ms: f64,
    pub select_allocs: Option<u64>,
}

/// A variant loaded in this process, prompts encoded, fed a still image, publishing
/// to one client.
pub(crate) struct Loaded {
    pub(crate) engine: Engine,
    image: image::RgbImage,
    source: (u32, u32),
    masks: MaskSet,
    pub(crate) load_s: f64,
    bus: Bus,
}

impl Loaded {
    /// Loads `manifest`, encodes the prompts, connects the client and runs 3 warm-up
    /// frames.
    pub(crate) fn new(args: &BenchArgs, variant: &Variant) -> anyhow::Result<Loaded> {
        let load_start = Instant::now();
        let cfg = EngineConfig {
            threads: args.threads.max(1),
            sparse_kernel: variant.kernel,
            device: args.device,
            pruning: variant.pruning.clone(),
            ..EngineConfig::with_defaults(variant.manifest.clone())
        };
        let prompts = PromptsConfig {
            text: args.prompts.clone(),
            mask_threshold: None,
            score_threshold: None,
            max_prompts: DEFAULT_MAX_PROMPTS.max(args.prompts.len()),
        };
        let mut engine = Engine::load(&cfg, &prompts)?;
        engine
            .wait_for_prompts(Duration::from_secs(120))
            .context("encoding the prompts")?;
        engine.set_alloc_counter(alloc::count);
        let load_s = load_start.elapsed().as_secs_f64();
        let (w, h) = engine.input_size();
        let image = image::open(&args.image)
            .with_context(|| format!("--image {}", args.image.display()))?
            .to_rgb8();
        let source = (image.width(), image.height());
        let image = image::imageops::resize(&image, w, h, image::imageops::FilterType::Triangle);
        let bus = Bus::start(&mut engine, &args.prompts)?;
        let mut loaded = Loaded {
            engine,
            image,
            source,
            masks: MaskSet::default(),
            load_s,
            bus,
        };
        for seq in 0..3 {
            loaded.frame(seq)?;
        }
        Ok(loaded)
    }

    /// One frame of the daemon's per-frame work.
    pub(crate) fn frame(&mut self, seq: u64) -> anyhow::Result<FrameSample> {
        // Accepting and reading control messages happens every loop in the daemon
        // too, but between frames: off the frame's clock.
        self.bus.publisher.service(self.engine.prompts());
        let (w, h) = (self.image.width(), self.image.height());
        let view = FrameView::still(seq, self.image.as_raw(), w, h, self.source);
        let start = Instant::now();
        self.engine.infer_sized(&view, MASK_SIZE, &mut self.masks)?;
        let infer_done = Instant::now();
        self.bus.publisher.publish(&self.masks);
        let end = Instant::now();
        let stages = self.engine.stage_times();
        let ms = |ns: u64| ns as f64 / 1e6;
        Ok(FrameSample {
            total_ms: end.duration_since(start).as_secs_f64() * 1e3,
            preprocess_ms: ms(stages.preprocess_ns),
            model_ms: ms(stages.model_ns),
            postprocess_ms: ms(stages.postprocess_ns),
            publish_ms: end.duration_since(infer_done).as_secs_f64() * 1e3,
            model_allocs: stages.model_allocs,
            encoder_ms: ms(stages.encoder_ns),
            select_ms: ms(stages.select_ns),
            select_allocs: stages.select_allocs,
        })
    }

    /// FRAME messages the publisher sent and dropped (the client's queue was full).
    pub(crate) fn published(&self) -> (u64, u64) {
        let s = self.bus.publisher.stats();
        (s.sent, s.dropped)
    }
}

/// The daemon's publisher on a socket in a scratch directory, with one subscribed
/// client that reads every frame on its own thread.
struct Bus {
    publisher: Publisher,
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    client: Option<JoinHandle<()>>,
}

impl Bus {
    fn start(engine: &mut Engine, prompts: &[String]) -> anyhow::Result<Bus> {
        // One per variant: `--interleave` loads several in one process.
        static BUSES: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "maskd-bench-{}-{}",
            std::process::id(),
            BUSES.fetch_add(1, Ordering::Relaxed)
        ));
        let socket = dir.join("bench.sock");
        let cfg = PublishConfig {
            socket: socket.clone(),
            mode: 0o600,
            group: None,
            max_clients: 1,
            queue_depth: 4,
            allow_uids: None,
            allow_gids: None,
        };
        let publisher = Publisher::bind(&cfg, MaskEncoding::Rle)
            .with_context(|| format!("bench socket {}", socket.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let texts = prompts.to_vec();
        let client = std::thread::Builder::new()
            .name("bench-client".into())
            .spawn({
                let stop = Arc::clone(&stop);
                move || read_frames(&socket, &texts, &stop)
            })
            .context("starting the bench client thread")?;
        let mut bus = Bus {
            publisher,
            dir,
            stop,
            client: Some(client),
        };
        let deadline = Instant::now() + SUBSCRIBE_WAIT;
        // The SUBSCRIBE is answered by `service`, on this thread, as in the daemon.
        loop {
            bus.publisher.service(engine.prompts());
            if bus.publisher.stats().subscribers > 0 {
                break;
            }
            if Instant::now() > deadline || bus.client.as_ref().is_some_and(|c| c.is_finished()) {
                bail!("the bench client did not subscribe within {SUBSCRIBE_WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(bus)
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(client) = self.client.take() {
            let _ = client.join();
        }
        // The publisher unlinks its socket when dropped; the lock file and the
        // directory are the bench's own.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The client thread: connect, subscribe to the bench's prompts, read frames until told
/// to stop or the publisher goes away.
fn read_frames(socket: &Path, prompts: &[String], stop: &AtomicBool) {
    let texts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let mut client = match Client::connect(socket) {
        Ok(c) => c,
        Err(e) => {
            log::warn!("bench client: {e}");
            return;
        }
    };
    client.set_reply_timeout(SUBSCRIBE_WAIT);
    if let Err(e) = client.subscribe(&texts, MaskEncoding::Rle) {
        log::warn!("bench client: {e}");
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        match client.recv_raw(CLIENT_POLL) {
            Ok(Some(msg)) => {
                if let Ok(ServerMessage::Error { .. }) = wire::parse_server(msg) {
                    return;
                }
            }
            Ok(None) => {}
            Err(ClientError::Closed) => return,
            Err(e) => {
                log::warn!("bench client: {e}");
                return;
            }
        }
    }
}
