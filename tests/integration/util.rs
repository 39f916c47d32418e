//! Test harness: each test gets its own directory, config and socket, and runs
//! the real `maskd` executable (under `MASKD_TEST_RUNNER` when cross-built).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The repository root (models/, configs/ live there).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The maskd command, prefixed by `MASKD_TEST_RUNNER` (e.g. qemu) when set: without
/// binfmt_misc a cross-built binary cannot be exec'd. Not `CROSS_RUNNER`, which the
/// `cross` tool reserves and sets to its own runner's name inside its containers.
pub fn maskd() -> Command {
    let exe = env!("CARGO_BIN_EXE_maskd");
    match std::env::var("MASKD_TEST_RUNNER")
        .ok()
        .filter(|r| !r.is_empty())
    {
        Some(runner) => {
            let mut parts = runner.split_whitespace();
            let mut cmd = Command::new(parts.next().unwrap_or_default());
            cmd.args(parts).arg(exe);
            cmd
        }
        None => Command::new(exe),
    }
}

/// A scratch directory removed on drop.
pub struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Dir {
        Dir {
            dir: tempfile::Builder::new()
                .prefix("maskd-test-")
                .tempdir()
                .expect("creating a temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `text` to `name` inside the directory and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.join(name);
        fs::write(&path, text).expect("writing a test file");
        path
    }
}

/// Runs `maskd ARGS` to completion and returns its output.
pub fn run(args: &[&str]) -> Output {
    maskd().args(args).output().expect("running maskd")
}

/// A `maskd run` child process, stopped with SIGTERM on drop.
pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    stderr: PathBuf,
}

impl Daemon {
    /// Starts `maskd run --config CONFIG` and waits until its socket accepts connections.
    pub fn start(dir: &Dir, config: &Path, socket: &Path) -> Daemon {
        Self::start_with_env(dir, config, socket, &[])
    }

    pub fn start_with_env(dir: &Dir, config: &Path, socket: &Path, env: &[(&str, &str)]) -> Daemon {
        let stderr = dir.join("maskd.stderr");
        let log = fs::File::create(&stderr).expect("creating the stderr log");
        let mut cmd = maskd();
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawning maskd run");
        let mut daemon = Daemon {
            child: Some(child),
            socket: socket.to_path_buf(),
            stderr,
        };
        daemon.wait_for_socket(Duration::from_secs(180));
        daemon
    }

    fn wait_for_socket(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("maskd exited early ({status}):\n{}", self.stderr_text());
                }
            }
            if self.stderr_text().contains("ready:") && self.socket.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("maskd not ready after {limit:?}:\n{}", self.stderr_text());
    }

    /// The daemon's process id (for /proc samples).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the daemon is running").id()
    }

    /// Sends `signal` to the running daemon (SIGHUP for a reload).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let child = self.child.as_ref().expect("the daemon is running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signalling maskd");
    }

    /// Waits until the daemon's log contains `text`; panics with the log after `limit`.
    pub fn wait_for_log(&self, text: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.stderr_text().contains(text) {
            assert!(
                Instant::now() < deadline,
                "maskd never logged {text:?}:\n{}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A config for `maskd run` in `dir`, on `pipeline`, with `manifest` and `prompts`.
pub fn config(
    dir: &Dir,
    pipeline: &str,
    manifest: &Path,
    prompts: &[&str],
    queue_depth: usize,
) -> (PathBuf, PathBuf) {
    let socket = dir.join("maskd.sock");
    let prompts: Vec<String> = prompts.iter().map(|p| format!("{p:?}")).collect();
    let text = format!(
        r#"[source]
pipeline = "{pipeline}"
loop = true
frame_timeout_ms = 5000

[engine]
manifest = "{manifest}"

[prompts]
text = [{prompts}]

[masks]
width = 64
height = 48

[publish]
socket = "{socket}"
mode = "0600"
queue_depth = {queue_depth}

[log]
level = "info"
"#,
        manifest = manifest.display(),
        prompts = prompts.join(", "),
        socket = socket.display(),
    );
    (dir.write("maskd.toml", &text), socket)
}
