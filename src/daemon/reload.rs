//! SIGHUP: re-read the config file and apply what changed, key by key, without
//! dropping a client.
//!
//! Live: `[log]`, `[prompts]` (pinned prompts keep their ids, thresholds, the prompt
//! limit), `[masks]` (size from the next frame; the encoding for clients that
//! subscribe from now on), `[source]` (the pipeline is rebuilt) and `[engine]` with
//! `[pruning]` (the new model, or the same one with the new schedule, is loaded and
//! planned on a thread beside the running one, then swapped in between two frames; a
//! load that fails, e.g. a schedule the model cannot take, leaves the old model and
//! schedule serving). `[publish]`
//! needs a restart: the socket and its clients are the one thing a reload must not
//! touch, so each changed key is named in the log instead.
//!
//! A part that fails keeps its running value, and the config the daemon reports
//! (`cfg`) is always what runs: a later reload compares against that, so it retries
//! what failed.

use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::Instant;

use log::{error, info, warn};

use crate::config::{self, Config, EngineConfig};
use crate::engine::{Engine, Model};
use crate::lifecycle::logging;
use crate::publish::Publisher;
use crate::source::Source;

/// A model being loaded on its own thread.
struct Pending {
    engine: EngineConfig,
    started: Instant,
    result: Receiver<anyhow::Result<Model>>,
}

/// Reload state carried between loop iterations: at most one model load in flight.
#[derive(Default)]
pub(super) struct Reloader {
    pending: Option<Pending>,
}

impl Reloader {
    /// Re-reads `cfg.path` and applies it. A file that does not parse or validate
    /// changes nothing.
    pub(super) fn reload(
        &mut self,
        cfg: &mut Config,
        engine: &mut Engine,
        source: &mut Source,
        publisher: &mut Publisher,
    ) {
        let new = match config::load(&cfg.path) {
            Ok(new) => new,
            Err(err) => {
                error!("reload rejected, keeping the running config: {err:#}");
                return;
            }
        };
        let changed = config::changed_keys(cfg, &new);
        let wanted_engine = self.pending.as_ref().map_or(&cfg.engine, |p| &p.engine);
        if changed.is_empty() && *wanted_engine == new.engine {
            info!("reload: {} has no changes", cfg.path.display());
            return;
        }
        let section = |name: &str| changed.iter().any(|k| k.starts_with(name));

        if section("log.") {
            logging::set_level(new.log.level);
            cfg.log = new.log.clone();
        }
        if section("prompts.") {
            match engine.set_prompts(&new.prompts) {
                Ok(()) => cfg.prompts = new.prompts.clone(),
                Err(err) => error!(
                    "reload: {}: {err:#}; the running prompts stay",
                    cfg.path.display()
                ),
            }
        }
        if section("masks.") {
            publisher.set_default_encoding(new.masks.encoding);
            cfg.masks = new.masks.clone();
        }
        if section("source.") {
            let (width, height) = engine.input_size();
            if rebuild_source(source, &new.source, width, height) {
                cfg.source = new.source.clone();
            }
        }
        if *wanted_engine != new.engine {
            self.start_load(&new.engine, cfg, engine);
        }
        for key in changed.iter().filter(|k| k.starts_with("publish")) {
            warn!(
                "reload: {key} changed in {}; it applies when maskd restarts (the socket \
                 and its clients stay as they are)",
                cfg.path.display()
            );
        }
        info!(
            "reloaded {}: {}",
            cfg.path.display(),
            if changed.is_empty() {
                "the model load under way is replaced".to_string()
            } else {
                changed.join(", ")
            }
        );
    }

    /// Swaps in a model whose load has finished; call between frames. Cheap when no
    /// load is in flight.
    pub(super) fn poll(&mut self, cfg: &mut Config, engine: &mut Engine, source: &mut Source) {
        let Some(pending) = &self.pending else {
            return;
        };
        let result = match pending.result.try_recv() {
            Ok(result) => result,
            Err(TryRecvError::Empty) => return,
            Err(TryRecvError::Disconnected) => Err(anyhow::anyhow!("the loading thread died")),
        };
        let Some(pending) = self.pending.take() else {
            return;
        };
        let secs = pending.started.elapsed().as_secs_f64();
        match result {
            Ok(model) => {
                let size = model.input_size();
                let resized = size != engine.input_size();
                engine.swap_model(model);
                cfg.engine = pending.engine;
                info!(
                    "reload: the new model ({}) serves from this frame on, loaded in {secs:.1} s",
                    cfg.engine.manifest.display()
                );
                if resized {
                    // The source scales to the model's input: a new size needs a new pipeline.
                    info!(
                        "reload: the model takes {}x{}; rebuilding the source",
                        size.0, size.1
                    );
                    rebuild_source(source, &cfg.source, size.0, size.1);
                }
            }
            Err(err) => error!(
                "reload: {}: engine: {err:#}; the running model ({}) stays",
                cfg.path.display(),
                cfg.engine.manifest.display()
            ),
        }
    }

    /// Starts loading `wanted` beside the running engine; a load already in flight is
    /// abandoned (its thread finishes and its model is dropped there).
    fn start_load(&mut self, wanted: &EngineConfig, cfg: &Config, engine: &mut Engine) {
        if *wanted == cfg.engine {
            // Changed back to what runs: only the load in flight has to go.
            self.pending = None;
            return;
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let engine_cfg = wanted.clone();
        let prompts = cfg.prompts.clone();
        let live = engine.prompts().snapshot();
        let spawned = std::thread::Builder::new()
            .name("maskd-load".into())
            .spawn(move || {
                let model = Model::load(&engine_cfg, &prompts, &live);
                // The loop may have moved on to another reload: then no one listens.
                let _ = tx.send(model);
            });
        match spawned {
            Ok(_) => {
                info!(
                    "reload: loading {} beside the running model",
                    wanted.manifest.display()
                );
                self.pending = Some(Pending {
                    engine: wanted.clone(),
                    started: Instant::now(),
                    result: rx,
                });
            }
            Err(err) => error!("reload: starting the model loader: {err}; the running model stays"),
        }
    }
}

/// Replaces `source` with one built from `cfg`; on a pipeline that does not build, the
/// running source stays (logged) and false is returned. A pipeline that builds but
/// cannot start yet is kept and retried with backoff, as at boot.
fn rebuild_source(
    source: &mut Source,
    cfg: &config::SourceConfig,
    width: u32,
    height: u32,
) -> bool {
    match Source::new(cfg, width, height) {
        Ok(mut new) => {
            source.stop();
            if let Err(err) = new.start() {
                warn!("reload: the new source is not started yet, retrying: {err}");
            }
            *source = new;
            info!("reload: source rebuilt: {}", cfg.pipeline);
            true
        }
        Err(err) => {
            error!("reload: source.pipeline: {err}; the running source stays");
            false
        }
    }
}
