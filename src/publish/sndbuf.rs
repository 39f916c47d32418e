//! Bounding each client's queue with its socket send buffer.
//!
//! A SEQPACKET send succeeds while the bytes the kernel charges for unread
//! messages are below SO_SNDBUF, and fails with EAGAIN after; the server then
//! drops that frame for that client. The charge per message is not its
//! length but the skb's `truesize`, which on Linux 6.x (x86-64, measured)
//! is 768 B for 0–100 B, 2304 B for 1000 B, 8448 B for 4000 B, 16640 B for
//! 16000 B, 69888 B for 64 KiB: kmalloc buckets below ~16 KiB, whole pages
//! above, with kernel-specific overhead. The default buffer (212,992 B)
//! therefore queues ~93 frames of 1 KB: seconds of stale masks. So each
//! client's SO_SNDBUF is sized from the *measured* truesize of a message of
//! the size it receives: a private socketpair is sent a message of that length
//! and SIOCOUTQ read back. Portable across kernels and architectures, costs a
//! few syscalls and runs only when a client's message size moves out of range.
//!
//! Limits: the kernel doubles the value set and caps it at `net.core.wmem_max`
//! (default 212,992, so 425,984 effective) unless the process has CAP_NET_ADMIN
//! (SO_SNDBUFFORCE); its floor is 4,608, i.e. ~6 header-only frames. A message
//! longer than the effective buffer minus 32 bytes cannot be sent at all (EMSGSIZE).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType};

use super::sock;
use super::wire::MAX_MESSAGE_LEN;

/// `net.core.wmem_max` when /proc cannot be read (the kernel default).
const DEFAULT_WMEM_MAX: usize = 212_992;

/// The outcome of sizing one client's send buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sizing {
    /// Message length the buffer was sized for (the length asked for plus headroom).
    pub sized_for: usize,
    /// SO_SNDBUF wanted for `depth` such messages.
    pub wanted: usize,
    /// SO_SNDBUF in effect (read back from the kernel).
    pub effective: usize,
}

impl Sizing {
    /// The wanted size was capped by `net.core.wmem_max`.
    pub fn clamped(&self) -> bool {
        self.effective < self.wanted
    }
}

/// Measures message truesize and sets clients' SO_SNDBUF for `depth` messages.
pub(crate) struct QueueSizer {
    depth: usize,
    wmem_max: usize,
    /// (sender, receiver) used only to measure truesize; `None` if it could not be made.
    probe: Option<(OwnedFd, OwnedFd)>,
    /// Bytes sent through the probe (content is irrelevant to the kernel's charge).
    zeros: Vec<u8>,
}

impl QueueSizer {
    pub fn new(depth: usize) -> QueueSizer {
        let wmem_max = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(DEFAULT_WMEM_MAX);
        let probe = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        );
        let probe = match probe {
            Ok((tx, rx)) => {
                set_sndbuf(tx.as_fd(), MAX_MESSAGE_LEN + 64 * 1024, wmem_max);
                Some((tx, rx))
            }
            Err(e) => {
                log::warn!(
                    "cannot create the socketpair that measures queue sizes ({e}); estimating"
                );
                None
            }
        };
        QueueSizer {
            depth: depth.max(1),
            wmem_max,
            probe,
            zeros: Vec::new(),
        }
    }

    /// What the kernel charges a socket's send buffer for one unread message of `len` bytes.
    pub fn truesize(&mut self, len: usize) -> usize {
        self.measure(len).unwrap_or_else(|| estimate_truesize(len))
    }

    fn measure(&mut self, len: usize) -> Option<usize> {
        let (tx, rx) = self.probe.as_ref()?;
        if self.zeros.len() < len {
            self.zeros.resize(len, 0);
        }
        sock::send_nonblocking(tx.as_fd(), &self.zeros[..len]).ok()?;
        let charged = sock::queued_bytes(tx.as_fd());
        // Drain it whatever happened, or the probe fills up.
        let mut one = [0u8; 1];
        let _ = sock::recv_truncating(rx.as_fd(), &mut one);
        charged.ok().filter(|&c| c >= len)
    }

    /// Sets `fd`'s SO_SNDBUF so that `depth` messages of about `len` bytes fit
    /// and the next one does not.
    pub fn size(&mut self, fd: BorrowedFd<'_>, len: usize) -> Sizing {
        // Headroom, so a message growing by a few bytes per frame does not resize every frame.
        let sized_for = len + len / 4;
        let t = self.truesize(sized_for).max(sized_for + 64);
        // A send is admitted while the charge is below the buffer: with a
        // buffer in ((depth-1)*t, depth*t], exactly `depth` fit. Half of the
        // overhead below depth*t leaves room for measurement noise and still
        // exceeds `sized_for + 32`, the largest message the kernel accepts.
        let wanted = self.depth * t - (t - sized_for) / 2;
        let effective = set_sndbuf(fd, wanted, self.wmem_max);
        Sizing {
            sized_for,
            wanted,
            effective,
        }
    }
}

/// Asks for an effective SO_SNDBUF of `wanted` bytes (the kernel doubles what
/// it is given); beyond wmem_max tries SO_SNDBUFFORCE, else takes the cap.
/// Returns the effective size.
fn set_sndbuf(fd: BorrowedFd<'_>, wanted: usize, wmem_max: usize) -> usize {
    let value = wanted.div_ceil(2);
    let forced = value > wmem_max && socket::setsockopt(&fd, sockopt::SndBufForce, &value).is_ok();
    if !forced {
        let _ = socket::setsockopt(&fd, sockopt::SndBuf, &value.min(wmem_max));
    }
    socket::getsockopt(&fd, sockopt::SndBuf).unwrap_or(0)
}

/// Fallback when the probe is unavailable: an upper bound of the measured
/// shapes (power-of-two buckets with ~700 B of skb below 32 KiB, pages above).
fn estimate_truesize(len: usize) -> usize {
    if len < 32 * 1024 {
        (len + 512).next_power_of_two() + 256
    } else {
        len.div_ceil(4096) * 4096 + 8192
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measured_truesize_covers_the_message() {
        let mut s = QueueSizer::new(2);
        for len in [1, 56, 1000, 5000, 70_000] {
            let t = s.truesize(len);
            assert!(t > len, "{len}: {t}");
            assert!(t <= estimate_truesize(len) * 2, "{len}: {t}");
        }
    }

    /// Fills a socket sized for `depth` messages and counts what got in.
    fn admitted(depth: usize, len: usize) -> usize {
        let (tx, _rx) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let mut s = QueueSizer::new(depth);
        let sizing = s.size(tx.as_fd(), len);
        assert!(!sizing.clamped(), "{sizing:?}");
        let msg = vec![1u8; len];
        let mut n = 0;
        while sock::send_nonblocking(tx.as_fd(), &msg).is_ok() {
            n += 1;
            assert!(n < 10_000, "the queue never filled");
        }
        n
    }

    #[test]
    fn queue_holds_depth_messages_of_the_sized_length() {
        // Below the 4,608-byte floor the kernel queues more; sizes here are above it.
        for (depth, len) in [(2, 3000), (3, 20_000), (4, 60_000), (1, 100_000)] {
            let n = admitted(depth, len);
            // The sizer adds 25% headroom, so `len` messages may fit once more
            // than `depth` when that headroom crosses an allocation bucket.
            assert!(
                n >= depth && n <= depth + 1 + depth / 2,
                "depth {depth}, len {len}: {n}"
            );
        }
    }

    #[test]
    fn estimate_is_not_below_a_measurement() {
        let mut s = QueueSizer::new(1);
        for len in [0, 100, 1000, 4000, 16_000, 16_400, 65_536, 200_000] {
            assert!(estimate_truesize(len) >= s.truesize(len), "{len}");
        }
    }
}
