//! Thin SOCK_SEQPACKET helpers over nix shared by the server and the client:
//! connect, whole-message receive, non-blocking send, readiness wait, and the
//! send-queue byte count (`SIOCOUTQ`) the queue sizing relies on.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};

/// A new, unbound SEQPACKET socket (close-on-exec; non-blocking if asked).
pub(crate) fn seqpacket(nonblocking: bool) -> nix::Result<OwnedFd> {
    let mut flags = SockFlag::SOCK_CLOEXEC;
    if nonblocking {
        flags |= SockFlag::SOCK_NONBLOCK;
    }
    socket::socket(AddressFamily::Unix, SockType::SeqPacket, flags, None)
}

/// A SEQPACKET socket connected to `path`. Non-blocking: a full backlog
/// gives EAGAIN instead of waiting.
pub(crate) fn connect(path: &Path, nonblocking: bool) -> nix::Result<OwnedFd> {
    let fd = seqpacket(nonblocking)?;
    let addr = UnixAddr::new(path)?;
    socket::connect(fd.as_raw_fd(), &addr)?;
    Ok(fd)
}

/// Sets or clears O_NONBLOCK.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> nix::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    let flags = if on {
        flags | OFlag::O_NONBLOCK
    } else {
        flags - OFlag::O_NONBLOCK
    };
    fcntl(fd, FcntlArg::F_SETFL(flags)).map(drop)
}

/// Sends one whole message without blocking and without SIGPIPE.
pub(crate) fn send_nonblocking(fd: BorrowedFd<'_>, msg: &[u8]) -> nix::Result<usize> {
    socket::send(
        fd.as_raw_fd(),
        msg,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
    )
}

/// Sends one whole message, blocking while the queue is full.
pub(crate) fn send_blocking(fd: BorrowedFd<'_>, msg: &[u8]) -> nix::Result<usize> {
    socket::send(fd.as_raw_fd(), msg, MsgFlags::MSG_NOSIGNAL)
}

/// Receives one whole message into `buf` (resized to fit it exactly).
/// `Ok(None)`: the peer closed (a zero-length message reads the same and is
/// treated the same). With `nonblocking`, `Err(EAGAIN)` when none is queued.
///
/// Peeks with MSG_TRUNC first, which returns the real length, so a message is
/// never silently cut to the buffer (SEQPACKET discards the excess).
pub(crate) fn recv_message(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    nonblocking: bool,
) -> nix::Result<Option<usize>> {
    let flags = if nonblocking {
        MsgFlags::MSG_DONTWAIT
    } else {
        MsgFlags::empty()
    };
    let len = socket::recv(
        fd.as_raw_fd(),
        &mut [],
        flags | MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC,
    )?;
    if len == 0 {
        // Consume the empty message, if it was one, so the next read moves on.
        let _ = socket::recv(fd.as_raw_fd(), &mut [0u8; 1], MsgFlags::MSG_DONTWAIT);
        return Ok(None);
    }
    buf.resize(len, 0);
    let n = socket::recv(fd.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT)?;
    buf.truncate(n);
    Ok(Some(n))
}

/// Receives one message of at most `max` bytes into `buf` (reused, never grown
/// past `max + 1`); a longer message is consumed and reported as `max + 1` bytes.
pub(crate) fn recv_bounded(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    max: usize,
) -> nix::Result<Option<usize>> {
    buf.resize(max + 1, 0);
    let n = socket::recv(
        fd.as_raw_fd(),
        buf,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC,
    )?;
    if n == 0 {
        return Ok(None);
    }
    buf.truncate(n.min(max + 1));
    Ok(Some(n.min(max + 1)))
}

/// Receives and discards one message (only its first `buf.len()` bytes are kept).
pub(crate) fn recv_truncating(fd: BorrowedFd<'_>, buf: &mut [u8]) -> nix::Result<usize> {
    socket::recv(
        fd.as_raw_fd(),
        buf,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC,
    )
}

/// Waits until `fd` is readable (or hung up) or `timeout` passes; `true` if readable.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> nix::Result<bool> {
    // Round up so a sub-millisecond remainder does not turn into a busy loop.
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, timeout) {
        Ok(n) => Ok(n > 0),
        Err(Errno::EINTR) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Bytes the kernel charges to `fd`'s send buffer for messages the peer has
/// not read yet (SIOCOUTQ; for AF_UNIX, `sk_wmem_alloc`, skb overhead included).
pub(crate) fn queued_bytes(fd: BorrowedFd<'_>) -> nix::Result<usize> {
    let mut n: nix::libc::c_int = 0;
    // SAFETY: TIOCOUTQ (== SIOCOUTQ) writes one c_int through the pointer,
    // which points at a live local of that type; the fd is borrowed, so open.
    let rc = unsafe {
        nix::libc::ioctl(
            fd.as_raw_fd(),
            nix::libc::TIOCOUTQ,
            &mut n as *mut nix::libc::c_int,
        )
    };
    Errno::result(rc)?;
    Ok(usize::try_from(n).unwrap_or(0))
}
