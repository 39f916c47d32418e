//! The listening socket's life: safe creation at the configured path (parent
//! directory, live-vs-stale check, mode and group applied before anyone can
//! connect), adoption of a systemd-activated fd, and unlinking on close.
//!
//! Leaves out what happens to accepted connections.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use nix::errno::Errno;
use nix::sys::socket::{self, sockopt, Backlog, SockType, UnixAddr};

use super::sock;
use crate::config::PublishConfig;

/// Pending connections the kernel holds before `accept`; clients beyond
/// `max_clients` are still accepted, told why, and closed.
const BACKLOG: i32 = 64;

/// A listening SEQPACKET socket; unlinks its path on drop if it created it.
pub(crate) struct Listener {
    fd: OwnedFd,
    /// Set when we bound the path ourselves (not for a systemd-passed fd), with
    /// the node's (dev, ino) so we never unlink a socket another process put there.
    created: Option<(PathBuf, u64, u64)>,
}

impl Listener {
    /// Binds `cfg.socket`: see `Publisher::bind`.
    pub(crate) fn bind(cfg: &PublishConfig) -> anyhow::Result<Listener> {
        let path = &cfg.socket;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)
                .with_context(|| format!("publish.socket: creating directory {}", dir.display()))?;
        }
        remove_stale(path)?;
        let addr = UnixAddr::new(path.as_path()).with_context(|| {
            format!(
                "publish.socket: {}: not a usable socket path (at most 107 bytes)",
                path.display()
            )
        })?;
        let fd = sock::seqpacket(true).context("creating a SOCK_SEQPACKET socket")?;
        socket::bind(fd.as_raw_fd(), &addr)
            .with_context(|| format!("publish.socket: binding {}", path.display()))?;
        // From here on the node exists; remove it again if setup fails.
        let meta = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) => {
                let _ = fs::remove_file(path);
                return Err(e).with_context(|| format!("publish.socket: {}", path.display()));
            }
        };
        let listener = Listener {
            fd,
            created: Some((path.clone(), meta.dev(), meta.ino())),
        };
        // Mode and group go on before listen(): until then a connect() gets
        // ECONNREFUSED, so no one slips in under the umask's permissions.
        fs::set_permissions(path, fs::Permissions::from_mode(cfg.mode))
            .with_context(|| format!("publish.mode: chmod {:o} {}", cfg.mode, path.display()))?;
        if let Some(name) = &cfg.group {
            let group = nix::unistd::Group::from_name(name)
                .with_context(|| format!("publish.group: looking up group `{name}`"))?
                .with_context(|| format!("publish.group: group `{name}` does not exist"))?;
            nix::unistd::chown(path.as_path(), None, Some(group.gid))
                .with_context(|| format!("publish.group: chgrp {name} {}", path.display()))?;
        }
        socket::listen(
            &listener.fd,
            Backlog::new(BACKLOG).unwrap_or(Backlog::MAXCONN),
        )
        .with_context(|| format!("publish.socket: listen on {}", path.display()))?;
        Ok(listener)
    }

    /// Adopts a listening socket passed by systemd (`ListenSequentialPacket=`).
    /// Mode, group and path are the unit's business; the path is never unlinked.
    pub(crate) fn from_fd(fd: OwnedFd) -> anyhow::Result<Listener> {
        let ty = socket::getsockopt(&fd, sockopt::SockType).context("passed socket: SO_TYPE")?;
        if ty != SockType::SeqPacket {
            bail!("passed socket is {ty:?}, maskd needs SOCK_SEQPACKET (systemd: ListenSequentialPacket=)");
        }
        if !socket::getsockopt(&fd, sockopt::AcceptConn).context("passed socket: SO_ACCEPTCONN")? {
            bail!("passed socket is not listening");
        }
        sock::set_nonblocking(fd.as_fd(), true).context("passed socket: setting O_NONBLOCK")?;
        Ok(Listener { fd, created: None })
    }

    /// The path we bound, if we created the node.
    pub(crate) fn path(&self) -> Option<&Path> {
        self.created.as_ref().map(|(p, _, _)| p.as_path())
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some((path, dev, ino)) = &self.created {
            match fs::symlink_metadata(path) {
                Ok(m) if m.dev() == *dev && m.ino() == *ino => {
                    if let Err(e) = fs::remove_file(path) {
                        log::warn!("removing {}: {e}", path.display());
                    }
                }
                _ => log::debug!("{} is no longer our socket; leaving it", path.display()),
            }
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
