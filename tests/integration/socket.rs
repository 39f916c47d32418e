//! The socket's ownership and access end to end: one daemon per path (the
//! lock), a deleted socket file bound again, a socket passed as systemd
//! passes it, and `publish.allow_uids` against a client of another uid.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use maskd::config::MaskEncoding;
use maskd::publish::Client;

use crate::util::{config, maskd, repo, Daemon, Dir};

fn fixture_manifest() -> PathBuf {
    repo().join("tests/data/fixture/fixture.toml")
}

/// A config for the fixture model on a live test pattern; `publish` lines are
/// appended to its `[publish]` table.
fn ball_config(dir: &Dir, publish: &str) -> (PathBuf, PathBuf) {
    let (cfg, socket) = config(
        dir,
        "videotestsrc is-live=true pattern=ball",
        &fixture_manifest(),
        &["ball"],
        4,
    );
    if !publish.is_empty() {
        let text = fs::read_to_string(&cfg).expect("reading the test config");
        let text = text.replacen("[publish]\n", &format!("[publish]\n{publish}\n"), 1);
        fs::write(&cfg, text).expect("writing the test config");
    }
    (cfg, socket)
}

/// Subscribes to "ball" and reads frames until one arrives.
fn receives_a_frame(socket: &Path) {
    let mut client = Client::connect(socket).expect("connecting");
    client
        .subscribe(&["ball"], MaskEncoding::Rle)
        .expect("subscribing");
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if client
            .recv(Duration::from_secs(10))
            .expect("receiving")
            .is_some()
        {
            return;
        }
    }
    panic!("no frame through {}", socket.display());
}

/// Waits for `child` to exit, killing it after `limit`.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn a_second_daemon_on_the_same_socket_refuses_to_start_and_names_the_holder() {
    let dir = Dir::new();
    let (cfg, socket) = ball_config(&dir, "");
    let daemon = Daemon::start(&dir, &cfg, &socket);
    let lock = PathBuf::from(format!("{}.lock", socket.display()));
    let holder = fs::read_to_string(&lock).expect("the lock file beside the socket");

    let mut second = maskd()
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the second maskd");
    let status = wait_exit(&mut second, Duration::from_secs(180))
        .expect("the second maskd kept running beside the first");
    let mut stderr = String::new();
    if let Some(mut pipe) = second.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    assert!(!status.success(), "the second maskd started: {stderr}");
    assert!(
        stderr.contains(&socket.display().to_string())
            && stderr.contains(&format!("pid {}", holder.trim())),
        "the refusal names neither the socket nor the holder:\n{stderr}"
    );
    receives_a_frame(&daemon.socket);
}

#[test]
fn a_deleted_socket_file_is_bound_again_and_serves() {
    let dir = Dir::new();
    let (cfg, socket) = ball_config(&dir, "");
    let daemon = Daemon::start(&dir, &cfg, &socket);
    fs::remove_file(&socket).expect("deleting the socket file");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "the socket never came back:\n{}",
            daemon.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    receives_a_frame(&socket);
    assert!(
        daemon.stderr_text().contains("vanished; bound it again"),
        "the rebind is not logged:\n{}",
        daemon.stderr_text()
    );
}

/// A `maskd run` started as systemd starts an activated service.
struct Activated {
    child: Child,
    stderr: PathBuf,
}

impl Drop for Activated {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if wait_exit(&mut self.child, Duration::from_secs(30)).is_none() {
            eprintln!("maskd did not stop on SIGTERM");
        }
    }
}

/// Starts maskd with `listener` as fd 3 and LISTEN_FDS=1, LISTEN_PID=its pid.
fn start_activated(dir: &Dir, cfg: &Path, listener: &OwnedFd) -> Activated {
    let stderr = dir.join("activated.stderr");
    let log = fs::File::create(&stderr).expect("creating the stderr log");
    let inner = maskd();
    let mut cmd = Command::new("sh");
    // systemd sets LISTEN_PID after fork; a shell that execs keeps its pid, $$.
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(inner.get_program())
        .args(inner.get_args())
        .arg("run")
        .arg("--config")
        .arg(cfg)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "maskd.socket")
        .stdout(Stdio::null())
        .stderr(log);
    let raw = listener.as_raw_fd();
    // SAFETY: dup2 and fcntl are async-signal-safe and touch only fd numbers.
    unsafe {
        cmd.pre_exec(move || {
            if raw != 3 && nix::libc::dup2(raw, 3) != 3 {
                return Err(std::io::Error::last_os_error());
            }
            // Inheritable even when `raw` already was 3 (dup2 is then a no-op).
            if nix::libc::fcntl(3, nix::libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawning maskd through sh");
    let mut activated = Activated { child, stderr };
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let text = fs::read_to_string(&activated.stderr).unwrap_or_default();
        if text.contains("ready:") {
            return activated;
        }
        if let Ok(Some(status)) = activated.child.try_wait() {
            panic!("maskd exited early ({status}):\n{text}");
        }
        assert!(Instant::now() < deadline, "maskd not ready:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_socket_passed_as_systemd_passes_it_is_served() {
    let dir = Dir::new();
    let (cfg, configured) = ball_config(&dir, "");
    let path = dir.join("activated.sock");
    let fd = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("creating the socket systemd would create");
    let addr = nix::sys::socket::UnixAddr::new(path.as_path()).expect("socket address");
    nix::sys::socket::bind(fd.as_raw_fd(), &addr).expect("binding it");
    nix::sys::socket::listen(&fd, nix::sys::socket::Backlog::new(16).expect("backlog"))
        .expect("listening");

    let daemon = start_activated(&dir, &cfg, &fd);
    let log = fs::read_to_string(&daemon.stderr).unwrap_or_default();
    assert!(
        log.contains("passed by the service manager"),
        "the passed socket was not adopted:\n{log}"
    );
    assert!(
        !configured.exists(),
        "publish.socket was bound although a socket was passed"
    );
    receives_a_frame(&path);
    drop(daemon);
    assert!(
        path.exists(),
        "the socket unit's path is systemd's to remove"
    );
}

/// `setpriv` (util-linux) to run a command as another uid; only root can.
fn as_uid(uid: u32, gid: u32) -> Option<Command> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: skipping the other-uid check");
        return None;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("setpriv not found: skipping the other-uid check");
        return None;
    }
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups");
    Some(cmd)
}

/// `maskd subscribe --count 1` through `prefix` (a setpriv, or nothing).
fn subscribe_once(prefix: Option<Command>, socket: &Path) -> std::process::Output {
    let inner = maskd();
    let mut cmd = match prefix {
        Some(mut cmd) => {
            cmd.arg(inner.get_program()).args(inner.get_args());
            cmd
        }
        None => inner,
    };
    cmd.arg("subscribe")
        .arg("--socket")
        .arg(socket)
        .args(["--prompt", "ball", "--count", "1", "--timeout", "60"])
        .output()
        .expect("running maskd subscribe")
}

#[test]
fn only_allowed_uids_get_in_and_the_others_are_told_why() {
    const NOBODY: u32 = 65534;
    let Some(nobody) = as_uid(NOBODY, NOBODY) else {
        return;
    };
    let dir = Dir::new();
    // The other uid must reach the socket: through the directory (tempdirs are
    // 0700) and the file's mode; only allow_uids stands in its way.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
        .expect("opening the test directory");
    let (cfg, socket) = ball_config(&dir, "allow_uids = [0]");
    let text = fs::read_to_string(&cfg).expect("reading the config");
    fs::write(&cfg, text.replace("mode = \"0600\"", "mode = \"0666\"")).expect("writing it");
    let daemon = Daemon::start(&dir, &cfg, &socket);
    let mode = fs::metadata(&socket).expect("socket").permissions().mode() & 0o777;
    assert_eq!(mode, 0o666, "publish.mode applied to the socket");

    let denied = subscribe_once(Some(nobody), &socket);
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(!denied.status.success(), "uid {NOBODY} got in");
    assert!(
        stderr.contains("AccessDenied") && stderr.contains(&format!("uid {NOBODY}")),
        "the refusal does not say why:\n{stderr}"
    );

    let allowed = subscribe_once(None, &socket);
    assert!(
        allowed.status.success(),
        "root was refused:\n{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    assert!(
        daemon.stderr_text().contains(&format!("uid {NOBODY}")),
        "the daemon does not log the refusal:\n{}",
        daemon.stderr_text()
    );
}
