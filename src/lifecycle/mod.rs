//! Lifecycle: signal flags (SIGTERM/SIGINT/SIGHUP), systemd notification
//! (READY, WATCHDOG, STOPPING, STATUS) and the journald-friendly stderr logger.
//!
//! Leaves out the frame loop itself: `daemon/` polls these between frames.

pub mod logging;
pub mod notify;
pub mod signals;

#[cfg(test)]
mod test_util;

pub use notify::Notifier;
pub use signals::{SignalError, Signals};
