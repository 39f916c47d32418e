//! The listening socket's life: safe creation at the configured path (its
//! lock, parent directory, live-vs-stale check, mode and group applied before
//! anyone can connect), noticing the node vanish or change under us and
//! binding it again, adoption of a systemd-activated fd, and unlinking on close.
//!
//! Leaves out what happens to accepted connections.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::errno::Errno;
use nix::sys::socket::{self, sockopt, Backlog, SockType, UnixAddr};
use nix::unistd::Gid;

use super::lock::{LockError, SocketLock};
use super::sock;
use crate::config::PublishConfig;

/// Pending connections the kernel holds before `accept`; clients beyond
/// `max_clients` are still accepted, told why, and closed.
const BACKLOG: i32 = 64;
/// How often the path is checked: a `stat` a second costs nothing, and a
/// client that found no socket retries on a human time scale anyway.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A listening SEQPACKET socket; unlinks its path on drop if it created it.
pub(crate) struct Listener {
    fd: OwnedFd,
    /// `None` for a systemd-passed fd: the path is then the socket unit's,
    /// and there is nothing of ours to watch or remove.
    owned: Option<OwnedPath>,
}

/// A path we bound ourselves, and what is needed to bind it again.
struct OwnedPath {
    path: PathBuf,
    /// The node's (dev, ino), so we never unlink a socket another process put there.
    dev: u64,
    ino: u64,
    mode: u32,
    gid: Option<Gid>,
    lock: SocketLock,
    next_check: Instant,
    /// Warned about the current loss of the path; cleared once it is ours again,
    /// so a persistent problem is logged once, not every second.
    warned: bool,
}

impl Listener {
    /// Binds `cfg.socket`: see `Publisher::bind`.
    pub(crate) fn bind(cfg: &PublishConfig) -> anyhow::Result<Listener> {
        let path = &cfg.socket;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)
                .with_context(|| format!("publish.socket: creating directory {}", dir.display()))?;
        }
        // Before anything at the path is touched: a second daemon must not
        // even remove the first one's socket as "stale".
        let lock = SocketLock::acquire(path)?;
        let gid = match &cfg.group {
            Some(name) => Some(
                nix::unistd::Group::from_name(name)
                    .with_context(|| format!("publish.group: looking up group `{name}`"))?
                    .with_context(|| format!("publish.group: group `{name}` does not exist"))?
                    .gid,
            ),
            None => None,
        };
        remove_stale(path)?;
        let (fd, dev, ino) = bind_node(path, cfg.mode, gid, cfg.group.as_deref())?;
        Ok(Listener {
            fd,
            owned: Some(OwnedPath {
                path: path.clone(),
                dev,
                ino,
                mode: cfg.mode,
                gid,
                lock,
                next_check: Instant::now() + CHECK_EVERY,
                warned: false,
            }),
        })
    }

    /// Adopts a listening socket passed by systemd (`ListenSequentialPacket=`).
    /// Mode, group and path are the unit's business; the path is never unlinked,
    /// locked or watched (we do not know it).
    pub(crate) fn from_fd(fd: OwnedFd) -> anyhow::Result<Listener> {
        let ty = socket::getsockopt(&fd, sockopt::SockType).context("passed socket: SO_TYPE")?;
        if ty != SockType::SeqPacket {
            bail!("passed socket is {ty:?}, maskd needs SOCK_SEQPACKET (systemd: ListenSequentialPacket=)");
        }
        if !socket::getsockopt(&fd, sockopt::AcceptConn).context("passed socket: SO_ACCEPTCONN")? {
            bail!("passed socket is not listening");
        }
        sock::set_nonblocking(fd.as_fd(), true).context("passed socket: setting O_NONBLOCK")?;
        Ok(Listener { fd, owned: None })
    }

    /// The path we bound, if we created the node.
    pub(crate) fn path(&self) -> Option<&Path> {
        self.owned.as_ref().map(|o| o.path.as_path())
    }

    /// At most once per `CHECK_EVERY`: if our node is gone from the path or
    /// another one sits there, binds the path again (when no one else owns
    /// it). Returns the retired listening fd, whose pending connections the
    /// caller should still accept before dropping it.
    pub(crate) fn check(&mut self, now: Instant) -> Option<OwnedFd> {
        let owned = self.owned.as_mut()?;
        if now < owned.next_check {
            return None;
        }
        owned.next_check = now + CHECK_EVERY;
        let why = match fs::symlink_metadata(&owned.path) {
            Ok(m) if m.dev() == owned.dev && m.ino() == owned.ino => {
                owned.warned = false;
                return None;
            }
            Ok(_) => "was replaced",
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "vanished",
            Err(e) => {
                warn_once(
                    &mut owned.warned,
                    format_args!("checking {}: {e}", owned.path.display()),
                );
                return None;
            }
        };
        match owned.rebind() {
            Ok(fd) => {
                log::warn!(
                    "socket {} {why}; bound it again (clients connected meanwhile got ENOENT or ECONNREFUSED)",
                    owned.path.display()
                );
                owned.warned = false;
                Some(std::mem::replace(&mut self.fd, fd))
            }
            Err(e) => {
                warn_once(
                    &mut owned.warned,
                    format_args!(
                        "socket {} {why} and cannot be bound again: {e:#}; new clients cannot reach this maskd (retrying every {CHECK_EVERY:?})",
                        owned.path.display()
                    ),
                );
                None
            }
        }
    }
}

/// Logs `what` unless this loss of the path was already reported.
fn warn_once(warned: &mut bool, what: std::fmt::Arguments<'_>) {
    if !*warned {
        *warned = true;
        log::warn!("{what}");
    }
}

impl OwnedPath {
    /// Binds the path again, with the start-up rules: a live socket or a file
    /// in the way is left alone, and the lock must still be ours.
    fn rebind(&mut self) -> anyhow::Result<OwnedFd> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)
                .with_context(|| format!("creating directory {}", dir.display()))?;
        }
        if !self.lock.still_at_path() {
            match self.lock.retake() {
                Ok(()) => {}
                Err(LockError::Held { pid }) => bail!(
                    "{} is now held by {}",
                    self.lock.path().display(),
                    pid.map_or("another process".to_string(), |p| format!("pid {p}"))
                ),
                Err(LockError::Io(e)) => {
                    return Err(e)
                        .with_context(|| format!("locking {}", self.lock.path().display()))
                }
            }
        }
        remove_stale(&self.path)?;
        let (fd, dev, ino) = bind_node(&self.path, self.mode, self.gid, None)?;
        self.dev = dev;
        self.ino = ino;
        Ok(fd)
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // The socket goes before the lock (a field dropped after this body):
        // until the node is gone, the path is still ours to clean.
        if let Some(o) = &self.owned {
            match fs::symlink_metadata(&o.path) {
                Ok(m) if m.dev() == o.dev && m.ino() == o.ino => {
                    if let Err(e) = fs::remove_file(&o.path) {
                        log::warn!("removing {}: {e}", o.path.display());
                    }
                }
                _ => log::debug!("{} is no longer our socket; leaving it", o.path.display()),
            }
        }
    }
}

/// Creates the socket node at `path` (which must be free), applies mode and
/// group, and listens; returns the fd and the node's (dev, ino). On failure
/// the node is removed again. `group` names the group for error messages.
fn bind_node(
    path: &Path,
    mode: u32,
    gid: Option<Gid>,
    group: Option<&str>,
) -> anyhow::Result<(OwnedFd, u64, u64)> {
    let addr = UnixAddr::new(path).with_context(|| {
        format!(
            "publish.socket: {}: not a usable socket path (at most 107 bytes)",
            path.display()
        )
    })?;
    let fd = sock::seqpacket(true).context("creating a SOCK_SEQPACKET socket")?;
    socket::bind(fd.as_raw_fd(), &addr)
        .with_context(|| format!("publish.socket: binding {}", path.display()))?;
    let setup = || -> anyhow::Result<(u64, u64)> {
        let meta = fs::symlink_metadata(path)
            .with_context(|| format!("publish.socket: {}", path.display()))?;
        // Mode and group go on before listen(): until then a connect() gets
        // ECONNREFUSED, so no one slips in under the umask's permissions.
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("publish.mode: chmod {mode:o} {}", path.display()))?;
        if let Some(gid) = gid {
            nix::unistd::chown(path, None, Some(gid)).with_context(|| {
                format!(
                    "publish.group: chgrp {} {}",
                    group.map_or_else(|| gid.to_string(), str::to_string),
                    path.display()
                )
            })?;
        }
        socket::listen(&fd, Backlog::new(BACKLOG).unwrap_or(Backlog::MAXCONN))
            .with_context(|| format!("publish.socket: listen on {}", path.display()))?;
        Ok((meta.dev(), meta.ino()))
    };
    match setup() {
        Ok((dev, ino)) => Ok((fd, dev, ino)),
        Err(e) => {
            let _ = fs::remove_file(path);
            Err(e)
        }
    }
}

/// Removes a socket node no one answers on; refuses a live one or a non-socket.
fn remove_stale(path: &Path) -> anyhow::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("publish.socket: {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        bail!(
            "publish.socket: {} exists and is not a socket; refusing to replace it",
            path.display()
        );
    }
    match sock::connect(path, true) {
        // EAGAIN: its backlog is full, so it is alive but busy.
        Ok(_) | Err(Errno::EAGAIN) => bail!(
            "publish.socket: {} is in use: another process (maskd?) accepts connections on it",
            path.display()
        ),
        // EPROTOTYPE: something listens there with another socket type: live too.
        Err(Errno::EPROTOTYPE) => bail!(
            "publish.socket: {} is in use by a socket of another type",
            path.display()
        ),
        Err(Errno::ECONNREFUSED) => {
            log::info!("removing stale socket {}", path.display());
            fs::remove_file(path)
                .with_context(|| format!("publish.socket: removing stale {}", path.display()))
        }
        Err(e) => {
            Err(e).with_context(|| format!("publish.socket: probing existing {}", path.display()))
        }
    }
}
