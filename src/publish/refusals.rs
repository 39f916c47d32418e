//! Turned-away connections, held open briefly so the refusal is readable.
//!
//! Closing a Unix socket whose receive queue holds unread messages makes the
//! peer's next `recv()` fail with ECONNRESET before it can read the ERROR we
//! sent (Linux `unix_release_sock`), and closing before the peer has sent
//! makes its `send()` fail with EPIPE. A client that connects and sends
//! SUBSCRIBE straight away hits one or the other. So a refused connection
//! gets its ERROR and `shutdown(SHUT_WR)` (the peer reads the ERROR, then end
//! of file), and is kept, its input drained, until the peer hangs up or a
//! deadline passes; it is drained once more right before the close.
//!
//! Bounded: at most `capacity` are held (the publisher stops accepting while
//! the ring is full and the client limit is reached, so the rest wait in the
//! backlog rather than being dropped unreadably). Never blocks, and allocates
//! only when built.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self, Shutdown};

use super::sock;

/// Connections held at once.
pub(crate) const REFUSED_CAPACITY: usize = 64;
/// Longest a refused connection is held: long enough for a client to read,
/// short enough that a client that never hangs up cannot hold a slot for long.
pub(crate) const REFUSED_HOLD: Duration = Duration::from_secs(1);
/// Messages discarded per held connection per call, so a client that keeps
/// sending cannot keep the frame loop in here.
const DRAIN_PER_CALL: usize = 32;

struct Held {
    fd: OwnedFd,
    id: u64,
    deadline: Instant,
}

/// The held connections (see the module docs).
pub(crate) struct Refusals {
    held: Vec<Held>,
    capacity: usize,
    hold: Duration,
}

impl Refusals {
    pub(crate) fn new(capacity: usize, hold: Duration) -> Refusals {
        Refusals {
            held: Vec::with_capacity(capacity),
            capacity,
            hold,
        }
    }

    pub(crate) fn has_room(&self) -> bool {
        self.held.len() < self.capacity
    }

    pub(crate) fn len(&self) -> usize {
        self.held.len()
    }

    /// Sends `error` (a complete ERROR message), ends our direction and holds
    /// the connection; with the ring full, it is drained and closed at once
    /// (best effort: the client may still see ECONNRESET).
    pub(crate) fn refuse(&mut self, fd: OwnedFd, id: u64, error: &[u8], now: Instant) {
        // A fresh socket's send queue is empty, so this fits unless the
        // client is already gone; either way there is nothing else to try.
        let _ = sock::send_nonblocking(fd.as_fd(), error);
        let _ = socket::shutdown(std::os::fd::AsRawFd::as_raw_fd(&fd), Shutdown::Write);
        if drain(&fd) == Drained::Open && self.has_room() {
            self.held.push(Held {
                fd,
                id,
                deadline: now + self.hold,
            });
        } else {
            log::debug!("client {id}: refused and closed");
        }
    }

    /// Drains every held connection; closes those whose peer hung up or whose
    /// deadline passed. Call it every loop iteration.
    pub(crate) fn service(&mut self, now: Instant) {
        self.held.retain(|h| {
            let open = drain(&h.fd) == Drained::Open;
            if open && now < h.deadline {
                return true;
            }
            log::debug!(
                "client {}: refused connection closed ({})",
                h.id,
                if open { "deadline" } else { "peer hung up" }
            );
            false
        });
    }
}

#[derive(PartialEq, Eq)]
enum Drained {
    /// Nothing more queued now; the peer may still send.
    Open,
    /// End of file or an error: the peer is gone.
    Gone,
}

/// Discards what the peer sent so far (up to `DRAIN_PER_CALL` messages).
fn drain(fd: &OwnedFd) -> Drained {
    let mut scratch = [0u8; 16];
    for _ in 0..DRAIN_PER_CALL {
        match sock::recv_truncating(fd.as_fd(), &mut scratch) {
            Ok(0) => return Drained::Gone,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => return Drained::Open,
            Err(_) => return Drained::Gone,
        }
    }
    Drained::Open
}
