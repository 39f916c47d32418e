//! The daemon: start-up order, the frame loop, reload and shutdown.
//!
//! The only module that sees every stage. It owns no stage logic: it builds
//! the stages from the config, moves frames through them on one thread and
//! reacts to signals. Start-up failures abort with the stage's error; per-frame
//! failures are logged and the frame is skipped. What SIGHUP changes is in
//! `reload.rs`, the health line in `report.rs`.

mod reload;
mod report;

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use log::{error, info, warn};

use crate::config::{self, Config};
use crate::contracts::MaskSet;
use crate::engine::{Engine, WaitError};
use crate::lifecycle::logging;
use crate::lifecycle::notify::Notifier;
use crate::lifecycle::signals::Signals;
use crate::publish::Publisher;
use crate::source::Source;

use reload::Reloader;
use report::Report;

/// Longest the loop waits for a frame before it services clients and signals again.
const FRAME_WAIT: Duration = Duration::from_millis(50);
/// How long start-up waits for the config prompts' text embeddings before going ready
/// without them (they still become active once encoded).
const PROMPT_STARTUP_WAIT: Duration = Duration::from_secs(60);

/// `maskd run`: load the config, set up logging and signals, run until asked to stop.
pub fn main(config_path: &Path) -> anyhow::Result<()> {
    let cfg = config::load(config_path)?;
    logging::init(cfg.log.level);
    let signals = Signals::install().context("installing signal handlers")?;
    // Before any thread exists: it edits the environment (LISTEN_* unset).
    let listener = crate::publish::activation::take_listener()?;
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

    // The socket first: its lock makes a second daemon on the same path refuse at once,
    // not after loading a model. Clients that connect meanwhile wait in the backlog.
    let mut publisher = match listener {
        Some(fd) => Publisher::from_fd(fd, &cfg.publish, cfg.masks.encoding)?,
        None => Publisher::bind(&cfg.publish, cfg.masks.encoding)?,
    };
    let mut engine = Engine::load(&cfg.engine, &cfg.prompts)
        .with_context(|| format!("{}: engine", cfg.path.display()))?;
    let (width, height) = engine.input_size();
    let mut source = Source::new(&cfg.source, width, height)
        .with_context(|| format!("{}: source.pipeline", cfg.path.display()))?;
    match engine.wait_for_prompts(PROMPT_STARTUP_WAIT) {
        Ok(()) => {}
        Err(WaitError::TimedOut { .. }) => {
            warn!("config prompts not encoded after {PROMPT_STARTUP_WAIT:?}; they start once ready")
        }
        // The model cannot encode the config's prompts: a start-up failure, with the
        // encoder's own error (the graph node), not a daemon that never produces masks.
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "{}: prompts.text: the model cannot encode them",
                cfg.path.display()
            )))
        }
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
    let mut reloader = Reloader::default();
    while !signals.shutdown_requested() {
        if signals.take_reload() {
            reloader.reload(&mut cfg, &mut engine, &mut source, &mut publisher);
        }
        reloader.poll(&mut cfg, &mut engine, &mut source);
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
