//! Ownership of a socket path: an exclusive `flock` on `<socket>.lock`, held
//! for the daemon's life, so a second daemon configured with the same path
//! refuses to start instead of binding over the first one's socket.
//!
//! A lock file rather than the socket node itself: the node can be unlinked
//! and re-created under a running daemon (and is, by its rebind), while the
//! lock must stay with the process. The file holds the owner's pid, for the
//! refusal message only; the lock, not the pid, decides.
//!
//! Leaves out the socket node (`listener.rs`).

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Tries to take a lock file that someone unlinked between our open and our
/// flock; past this the path is being fought over and we give up.
const LOCK_ATTEMPTS: usize = 5;

/// The lock on one socket path; unlocked (and its file removed) on drop.
pub(crate) struct SocketLock {
    path: PathBuf,
    /// Never read: holding it is holding the lock (dropped: unlocked and closed).
    _file: Flock<File>,
    dev: u64,
    ino: u64,
    /// Cleared when a fresh lock replaces this one, whose file is already gone.
    unlink_on_drop: bool,
}

/// Why a lock was not taken: someone else holds it, or the file system said no.
pub(crate) enum LockError {
    Held { pid: Option<u32> },
    Io(io::Error),
}

/// `<socket>.lock`, beside the socket.
pub(crate) fn lock_path(socket: &Path) -> PathBuf {
    let mut name = OsString::from(socket.as_os_str());
    name.push(".lock");
    PathBuf::from(name)
}

impl SocketLock {
    /// Takes the lock for `socket`, or says who has it (the error names the
    /// socket, the lock file and, when the file says, the holder's pid).
    pub(crate) fn acquire(socket: &Path) -> anyhow::Result<SocketLock> {
        let path = lock_path(socket);
        match SocketLock::try_acquire(&path) {
            Ok(lock) => Ok(lock),
            Err(LockError::Held { pid }) => {
                let holder = match pid {
                    Some(pid) => format!("pid {pid}"),
                    None => "another process".to_string(),
                };
                anyhow::bail!(
                    "publish.socket: {} is in use by a running maskd ({holder} holds {}); \
                     stop it, or give this daemon another publish.socket",
                    socket.display(),
                    path.display()
                )
            }
            Err(LockError::Io(e)) => Err(e).with_context(|| {
                format!(
                    "publish.socket: taking the lock {} for {}",
                    path.display(),
                    socket.display()
                )
            }),
        }
    }

    /// Non-blocking attempt at `path` itself.
    pub(crate) fn try_acquire(path: &Path) -> Result<SocketLock, LockError> {
        for _ in 0..LOCK_ATTEMPTS {
            let file = open(path).map_err(LockError::Io)?;
            let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(locked) => locked,
                Err((mut file, Errno::EWOULDBLOCK)) => {
                    return Err(LockError::Held {
                        pid: read_pid(&mut file),
                    })
                }
                Err((_, e)) => return Err(LockError::Io(e.into())),
            };
            let ours = file.metadata().map_err(LockError::Io)?;
            // The previous owner unlinks the file as it exits, still holding
            // the lock: a lock on an inode no longer at `path` guards nothing.
            match fs::metadata(path) {
                Ok(now) if now.dev() == ours.dev() && now.ino() == ours.ino() => {}
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(LockError::Io(e)),
            }
            // Only for the refusal message of whoever comes next; failing to
            // write it (a read-only open) costs nothing but that detail.
            let _ = write_pid(&mut file);
            return Ok(SocketLock {
                path: path.to_path_buf(),
                dev: ours.dev(),
                ino: ours.ino(),
                _file: file,
                unlink_on_drop: true,
            });
        }
        Err(LockError::Io(io::Error::other(format!(
            "{} keeps being replaced while we lock it",
            path.display()
        ))))
    }

    /// Whether the lock file at our path is still the one we hold (someone may
    /// have removed the socket's whole directory).
    pub(crate) fn still_at_path(&self) -> bool {
        fs::metadata(&self.path).is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino)
    }

    /// After our file vanished from the path: takes a fresh lock there, so we
    /// keep the path only if no other daemon took it meanwhile.
    pub(crate) fn retake(&mut self) -> Result<(), LockError> {
        let fresh = SocketLock::try_acquire(&self.path)?;
        // The old file is gone from the path; dropping the old lock must not
        // unlink the fresh file that now sits there.
        self.unlink_on_drop = false;
        *self = fresh;
        Ok(())
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketLock {
    fn drop(&mut self) {
        // Unlinked while still locked: whoever opens the path next gets a new
        // inode, and `try_acquire`'s identity check turns away anyone who
        // opened the old one before the unlink.
        if self.unlink_on_drop && self.still_at_path() {
            if let Err(e) = fs::remove_file(&self.path) {
                log::debug!("removing {}: {e}", self.path.display());
            }
        }
    }
}

fn open(path: &Path) -> io::Result<File> {
    let rw = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(nix::libc::O_CLOEXEC)
        .open(path);
    match rw {
        // A lock file made by a daemon running as another user: flock needs
        // no write permission, so we can still learn whether it is held.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => File::open(path),
        other => other,
    }
}

fn write_pid(file: &mut File) -> io::Result<()> {
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}
