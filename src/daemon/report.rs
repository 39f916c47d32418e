//! The periodic health line: frames per second, failures, source and client counters,
//! and per prompt how often it was found, so a glance at the journal shows whether the
//! prompts are being found at all.

use std::time::{Duration, Instant};

use crate::contracts::{MaskSet, PromptDirectory, PromptId};
use crate::publish::Publisher;
use crate::source::Source;

/// Interval of the one-line health report in the log and in systemd's STATUS.
pub(super) const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Counters for the periodic health line, which also says what the model saw, so a
/// glance at the journal shows whether the prompts are being found at all.
pub(super) struct Report {
    since: Instant,
    frames: u64,
    pub(super) failed: u64,
    /// Per prompt: frames with a non-empty mask, and the sum of their coverage.
    /// Bounded by `prompts.max_prompts`; cleared, not freed, each interval.
    seen: Vec<(PromptId, u64, f64)>,
}

impl Report {
    pub(super) fn new() -> Self {
        Report {
            since: Instant::now(),
            frames: 0,
            failed: 0,
            seen: Vec::new(),
        }
    }

    pub(super) fn due(&self) -> bool {
        self.since.elapsed() >= REPORT_EVERY
    }

    pub(super) fn observe(&mut self, masks: &MaskSet) {
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
    pub(super) fn line(
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
