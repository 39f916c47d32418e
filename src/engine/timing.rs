//! Where the last frame's time went inside [`super::Engine::infer_sized`], for
//! `maskd bench`: the engine's stages and how many heap allocations the segmenter plan's
//! run made.
//!
//! The engine may not import the counting allocator (`alloc` is not one of its rooms),
//! so whoever has one installs a plain function that reads it ([`AllocCounter`]). Each
//! frame costs four clock reads and, with a counter, two relaxed loads: nothing the
//! daemon would notice, and no allocation.

use std::time::Instant;

/// Reads a process-wide allocation counter; `None` when there is none.
pub type AllocCounter = fn() -> Option<u64>;

/// One frame's engine stages, in nanoseconds of wall time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageTimes {
    /// From the call until the image tensor is written: picking up newly encoded
    /// prompts (and rebuilding the text tensor when they changed) and normalising
    /// the frame.
    pub preprocess_ns: u64,
    /// The segmenter plan's run (tract's nodes and maskd's ops inside it).
    pub model_ns: u64,
    /// Reading the outputs and thresholding them into the `MaskSet`.
    pub postprocess_ns: u64,
    /// Heap allocations during the plan's run, when an [`AllocCounter`] is installed
    /// (tract's: the pruner's own are `select_allocs`).
    pub model_allocs: Option<u64>,
    /// With a pruning schedule, the part of `model_ns` before the decoder: the embed
    /// and every block, the pruner's work between them included (0 for the full graph,
    /// which runs as one plan).
    pub encoder_ns: u64,
    /// With a pruning schedule, the part of `model_ns` the pruner took: scoring, top-k,
    /// gathering the kept tokens and scattering the grid back for the decoder.
    pub select_ns: u64,
    /// The pruner's heap allocations this frame, with a counter (meant to be 0).
    pub select_allocs: Option<u64>,
}

/// Marks the stage boundaries of one frame.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stopwatch {
    last: Instant,
}

impl Stopwatch {
    pub(crate) fn start() -> Stopwatch {
        Stopwatch {
            last: Instant::now(),
        }
    }

    /// Nanoseconds since the previous lap (or the start).
    pub(crate) fn lap(&mut self) -> u64 {
        let now = Instant::now();
        let ns = now.duration_since(self.last).as_nanos();
        self.last = now;
        u64::try_from(ns).unwrap_or(u64::MAX)
    }
}

/// Allocations between two readings of `counter`; `None` without one or when either
/// reading is missing.
pub(crate) fn allocs_between(before: Option<u64>, after: Option<u64>) -> Option<u64> {
    Some(after?.saturating_sub(before?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn laps_are_consecutive_and_monotonic() {
        let total = Instant::now();
        let mut w = Stopwatch::start();
        let a = w.lap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = w.lap();
        let elapsed = u64::try_from(total.elapsed().as_nanos()).unwrap_or(u64::MAX);
        // The sleep lands in the second lap, and the laps never add up to more than
        // the time that passed around them (`total` started first and is read last).
        assert!(b >= 2_000_000, "second lap {b} ns");
        assert!(a + b <= elapsed, "{a} + {b} > {elapsed}");
    }

    #[test]
    fn allocations_need_both_readings() {
        assert_eq!(allocs_between(Some(10), Some(25)), Some(15));
        assert_eq!(allocs_between(None, Some(25)), None);
        assert_eq!(allocs_between(Some(10), None), None);
        // A counter that went backwards (it cannot) reads as none, not as a huge number.
        assert_eq!(allocs_between(Some(10), Some(3)), Some(0));
    }
}
