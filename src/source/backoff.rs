//! Exponential backoff between pipeline rebuilds, reset by a stream that played.

use std::time::{Duration, Instant};

/// Frames must have flowed this long for a stream to count as having played:
/// a camera that accepts the connection and drops it within seconds keeps
/// backing off instead of being hammered at the initial delay forever.
pub(crate) const PLAYED_FOR: Duration = Duration::from_secs(5);

/// After a stream that played ends, retries stay at the initial delay this
/// long before they start doubling. Exponential backoff alone makes the wait
/// after a camera returns about as long as it was gone (retries at 0.25, 0.75,
/// 1.75, 3.75 s: back after 2 s, found at 3.75 s); a restarting camera or RTSP
/// server is usually gone for a few seconds, and being found within one
/// initial delay is what makes recovery take well under a second.
pub(crate) const FAST_RETRY_FOR: Duration = Duration::from_secs(10);

/// Delays double from `initial` up to `max`. Holds no timer: the source keeps
/// its own "retry at" instant so that waiting never blocks the frame loop.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    /// Retries before this instant wait only `initial` (a played stream ended).
    fast_until: Option<Instant>,
    /// [`PLAYED_FOR`], shortened by tests.
    pub(crate) played_for: Duration,
    /// [`FAST_RETRY_FOR`], shortened by tests.
    pub(crate) fast_for: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Backoff {
        let max = max.max(initial);
        Backoff {
            initial,
            max,
            next: initial,
            fast_until: None,
            played_for: PLAYED_FOR,
            fast_for: FAST_RETRY_FOR,
        }
    }

    /// A pipeline failed at `now` after delivering frames for `played` (None:
    /// not a single frame). A stream that played starts the delays over.
    pub(crate) fn ended(&mut self, played: Option<Duration>, now: Instant) {
        if played.is_some_and(|p| p >= self.played_for) {
            self.next = self.initial;
            self.fast_until = Some(now + self.fast_for);
        }
    }

    /// The delay before the next attempt, scheduled at `now`.
    pub(crate) fn next_delay(&mut self, now: Instant) -> Duration {
        if self.fast_until.is_some_and(|until| now < until) {
            return self.initial;
        }
        self.fast_until = None;
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn delays(b: &mut Backoff, at: Instant, n: usize) -> Vec<Duration> {
        (0..n).map(|_| b.next_delay(at)).collect()
    }

    #[test]
    fn doubles_up_to_the_cap() {
        let mut b = Backoff::new(ms(250), ms(1_000));
        let delays = delays(&mut b, Instant::now(), 5);
        assert_eq!(delays, [ms(250), ms(500), ms(1_000), ms(1_000), ms(1_000)]);
    }

    #[test]
    fn cap_below_initial_is_raised_to_initial() {
        let mut b = Backoff::new(ms(300), ms(100));
        assert_eq!(delays(&mut b, Instant::now(), 2), [ms(300), ms(300)]);
    }

    #[test]
    fn a_stream_that_played_resets_and_retries_fast_for_a_while() {
        let now = Instant::now();
        let mut b = Backoff::new(ms(250), ms(10_000));
        assert_eq!(delays(&mut b, now, 4).last(), Some(&ms(2_000)));
        b.ended(Some(PLAYED_FOR), now);
        // Inside the fast window every retry waits the initial delay...
        assert_eq!(delays(&mut b, now + ms(9_000), 20), vec![ms(250); 20]);
        // ...after it, the delays double again from the initial one.
        let later = now + FAST_RETRY_FOR;
        assert_eq!(delays(&mut b, later, 3), [ms(250), ms(500), ms(1_000)]);
    }

    #[test]
    fn a_stream_that_failed_at_once_keeps_backing_off() {
        let now = Instant::now();
        let mut b = Backoff::new(ms(250), ms(4_000));
        let mut got = Vec::new();
        for _ in 0..6 {
            b.ended(Some(PLAYED_FOR - ms(1)), now);
            got.push(b.next_delay(now));
        }
        b.ended(None, now);
        got.push(b.next_delay(now));
        assert_eq!(got, [250, 500, 1_000, 2_000, 4_000, 4_000, 4_000].map(ms));
    }
}
