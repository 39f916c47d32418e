//! Socket activation: the listening socket systemd passes (sd_listen_fds(3)),
//! taken once at start-up.
//!
//! Like `sd_listen_fds(1)`, it unsets `LISTEN_PID`, `LISTEN_FDS` and
//! `LISTEN_FDNAMES` and marks the fd close-on-exec, so that processes maskd
//! starts (GStreamer's plugin scanner) neither inherit the socket nor believe
//! it was passed to them. `LISTEN_FDNAMES` is otherwise ignored: maskd takes
//! exactly one socket. Leaves out checking the socket (`listener.rs`).

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};

use anyhow::bail;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};

/// First file descriptor passed by systemd socket activation (sd_listen_fds(3)).
pub const SD_LISTEN_FDS_START: i32 = 3;

const VARS: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// The passed listening socket, if systemd (or a test acting like it) passed
/// one to this process. Call once, early, while the process has one thread:
/// it edits the environment.
pub fn take_listener() -> anyhow::Result<Option<OwnedFd>> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    for var in VARS {
        std::env::remove_var(var);
    }
    match passed_count(pid.as_deref(), fds.as_deref(), std::process::id())? {
        0 => Ok(None),
        _ => {
            // SAFETY: only borrowed for the fcntl below, which fails cleanly
            // (EBADF) if nothing is open there despite the variables.
            let borrowed = unsafe { BorrowedFd::borrow_raw(SD_LISTEN_FDS_START) };
            // Close-on-exec, as sd_listen_fds does: the socket is ours alone.
            fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|e| {
                anyhow::anyhow!("passed socket (fd {SD_LISTEN_FDS_START}, LISTEN_FDS): {e}")
            })?;
            // SAFETY: systemd passed exactly one open descriptor at
            // SD_LISTEN_FDS_START for this pid (checked above, and the fcntl
            // just succeeded on it); nothing else in the process owns it.
            Ok(Some(unsafe { OwnedFd::from_raw_fd(SD_LISTEN_FDS_START) }))
        }
    }
}

/// How many sockets the variables pass to process `me`: 0 when they are
/// absent, malformed or meant for another process (a parent's, inherited).
pub(crate) fn passed_count(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    me: u32,
) -> anyhow::Result<usize> {
    let for_me = listen_pid
        .and_then(|p| p.trim().parse::<u32>().ok())
        .is_some_and(|p| p == me);
    let count = listen_fds.and_then(|n| n.trim().parse::<usize>().ok());
    match (for_me, count) {
        (true, Some(n)) if n > 1 => {
            bail!("systemd passed {n} sockets (LISTEN_FDS); maskd takes exactly one")
        }
        (true, Some(n)) => Ok(n),
        _ => Ok(0),
    }
}
