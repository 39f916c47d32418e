//! Exponential backoff between pipeline rebuilds.

use std::time::Duration;

/// Delays double from `initial` up to `max`; [`Backoff::reset`] once frames
/// flow again. Holds no timer: the source keeps its own "retry at" instant so
/// that waiting never blocks the frame loop.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Backoff {
        let max = max.max(initial);
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay before the next attempt; each call doubles the following one.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(ms(250), ms(1_000));
        let delays: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert_eq!(delays, [ms(250), ms(500), ms(1_000), ms(1_000), ms(1_000)]);
        b.reset();
        assert_eq!(b.next_delay(), ms(250));
    }

    #[test]
    fn cap_below_initial_is_raised_to_initial() {
        let mut b = Backoff::new(ms(300), ms(100));
        assert_eq!(b.next_delay(), ms(300));
        assert_eq!(b.next_delay(), ms(300));
    }
}
