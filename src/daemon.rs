//! The daemon: start-up order, the frame loop, reload and shutdown.
//!
//! The only module that sees every stage. It owns no stage logic: it builds
//! the stages from the config, moves frames through them on one thread and
//! reacts to signals. Start-up failures abort with the stage's error; per-frame
//! failures are logged and the frame is skipped.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use log::{error, info, warn};

use crate::config::{self, Config};
use crate::contracts::{MaskSet, PromptDirectory, PromptId};
use crate::engine::Engine;
use crate::lifecycle::logging;
use crate::lifecycle::notify::Notifier;
use crate::lifecycle::signals::Signals;
use crate::publish::Publisher;
use crate::source::Source;

/// Longest the loop waits for a frame before it services clients and signals again.
const FRAME_WAIT: Duration = Duration::from_millis(50);
/// How long start-up waits for the config prompts' text embeddings before going ready
/// without them (they still become active once encoded).
const PROMPT_STARTUP_WAIT: Duration = Duration::from_secs(60);
/// Interval of the one-line health report in the log and in systemd's STATUS.
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// First file descriptor passed by systemd socket activation (sd_listen_fds(3)).
const SD_LISTEN_FDS_START: i32 = 3;

/// `maskd run`: load the config, set up logging and signals, run until asked to stop.
pub fn main(config_path: &Path) -> anyhow::Result<()> {
    let cfg = config::load(config_path)?;
    logging::init(cfg.log.level);
    let signals = Signals::install().context("installing signal handlers")?;
    let listener = activated_listener()?;
    run(cfg, listener, &signals)
}

/// Runs the daemon on built resources until `signals` asks for shutdown.
///
/// `listener` is a listening SOCK_SEQPACKET socket handed over by systemd (or a
/// test); without it the publisher binds `cfg.publish.socket` itself.
pub fn run(mut cfg: Config, listener: Option<OwnedFd>, signals: &Signals) -> anyhow::Result<()> {
    let notifier = Notifier::from_env();
    info!(
        "maskd {} starting with {}",
        env!("CARGO_PKG_VERSION"),
        cfg.path.display()
    );

    let mut engine = Engine::load(&cfg.engine, &cfg.prompts)
        .with_context(|| format!("{}: engine", cfg.path.display()))?;
    let (width, height) = engine.input_size();
    let mut source = Source::new(&cfg.source, width, height)
        .with_context(|| format!("{}: source.pipeline", cfg.path.display()))?;
    let mut publisher = match listener {
        Some(fd) => Publisher::from_fd(fd, &cfg.publish, cfg.masks.encoding)?,
        None => Publisher::bind(&cfg.publish, cfg.masks.encoding)?,
    };
    if !engine.wait_for_prompts(PROMPT_STARTUP_WAIT) {
        warn!("config prompts not encoded after {PROMPT_STARTUP_WAIT:?}; they start once ready");
    }
    if let Err(err) = source.start() {
        // A camera missing at boot is retried with backoff like one lost later.
        warn!("source not started yet, retrying: {err}");
    }
    notifier.ready();
    info!(
        "ready: model input {width}x{height}, socket {}",
        cfg.publish.socket.display()
    );

    let mut masks = MaskSet::default();
    let mut report = Report::new();
    while !signals.shutdown_requested() {
        if signals.take_reload() {
            reload(&mut cfg);
        }
        publisher.service(engine.prompts());
        let outcome = source.next_frame(FRAME_WAIT, |frame| {
            engine.infer(frame, &cfg.masks, &mut masks)
        });
        match outcome {
            Ok(Some(Ok(()))) => {
                publisher.publish(&masks);
                report.observe(&masks);
            }
            Ok(Some(Err(err))) => {
                report.failed += 1;
                warn!("frame skipped: {err:#}");
            }
            Ok(None) => {}
            Err(err) => {
                error!("source failed: {err:#}");
                break;
            }
        }
        notifier.watchdog();
        if report.due() {
            let line = report.line(&source, &publisher, engine.prompts());
            info!("{line}");
            notifier.status(&line);
        }
    }

    info!("shutting down");
    notifier.stopping();
    source.stop();
    publisher.close();
    info!("stopped");
    Ok(())
}

/// SIGHUP: re-read the file; what can change live is applied, the rest is named.
fn reload(cfg: &mut Config) {
    match config::load(&cfg.path) {
        Ok(new) => {
            logging::set_level(new.log.level);
            let live = Config {
                log: new.log.clone(),
                ..cfg.clone()
            };
            if live != new {
                warn!(
                    "reload: only [log] applies live; restart maskd for the other changes in {}",
                    cfg.path.display()
                );
            }
            *cfg = live;
            info!("reloaded {}", cfg.path.display());
        }
        Err(err) => error!("reload rejected, keeping the running config: {err:#}"),
    }
}

/// A listening socket passed by systemd socket activation, if any (sd_listen_fds(3)).
fn activated_listener() -> anyhow::Result<Option<OwnedFd>> {
    let pid_matches = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| pid == std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok());
    match (pid_matches, count) {
        (true, Some(1)) => {
            // SAFETY: systemd passed exactly one open descriptor at SD_LISTEN_FDS_START
            // for this pid; nothing else in the process owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(SD_LISTEN_FDS_START) };
            Ok(Some(fd))
        }
        (true, Some(n)) if n > 1 => {
            anyhow::bail!("systemd passed {n} sockets; maskd takes exactly one")
        }
        _ => Ok(None),
    }
}

/// Counters for the periodic health line, which also says what the model saw, so a
/// glance at the journal shows whether the prompts are being found at all.
struct Report {
    since: Instant,
    frames: u64,
    failed: u64,
    /// Per prompt: frames with a non-empty mask, and the sum of their coverage.
    /// Bounded by `prompts.max_prompts`; cleared, not freed, each interval.
    seen: Vec<(PromptId, u64, f64)>,
}

impl Report {
    fn new() -> Self {
        Report {
            since: Instant::now(),
            frames: 0,
            failed: 0,
            seen: Vec::new(),
        }
    }

    fn due(&self) -> bool {
        self.since.elapsed() >= REPORT_EVERY
    }

    fn observe(&mut self, masks: &MaskSet) {
        self.frames += 1;
        for mask in masks.masks.iter().take(masks.len) {
            let hit = u64::from(mask.coverage > 0.0);
            match self
                .seen
                .iter_mut()
                .find(|(id, _, _)| *id == mask.prompt_id)
            {
                Some(entry) => {
                    entry.1 += hit;
                    entry.2 += f64::from(mask.coverage);
                }
                None => self
                    .seen
                    .push((mask.prompt_id, hit, f64::from(mask.coverage))),
            }
        }
    }

    /// Formats the line and starts a new interval.
    fn line(
        &mut self,
        source: &Source,
        publisher: &Publisher,
        prompts: &dyn PromptDirectory,
    ) -> String {
        use std::fmt::Write;
        let secs = self.since.elapsed().as_secs_f64();
        let fps = self.frames as f64 / secs.max(1e-9);
        let s = source.stats();
        let p = publisher.stats();
        let mut line = format!(
            "{fps:.1} fps, {} failed, source: {} frames {} dropped {} restarts, clients: {} ({} dropped)",
            self.failed, s.frames, s.dropped, s.restarts, p.clients, p.dropped
        );
        let frames = self.frames.max(1) as f64;
        for (id, hits, coverage) in &self.seen {
            let text = prompts.text(*id).unwrap_or("?");
            let _ = write!(
                line,
                "; {text:?} in {:.0}% of frames, {:.1}% of the image",
                100.0 * *hits as f64 / frames,
                100.0 * coverage / frames
            );
        }
        self.since = Instant::now();
        self.frames = 0;
        self.failed = 0;
        self.seen.clear();
        line
    }
}
