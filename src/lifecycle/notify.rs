//! systemd notification (sd_notify(3)): READY, RELOADING, STATUS, STOPPING and
//! a rate-limited WATCHDOG, over the `sd-notify` crate.
//!
//! Without `NOTIFY_SOCKET` (not started by systemd, or `Type=` is not `notify`)
//! every call is a no-op. Failures to notify are logged, never returned: a lost
//! status line must not stop the cameras. Leaves out deciding *when* the loop
//! is healthy enough to pet the watchdog (that is `daemon/`).

use std::cell::Cell;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Sends state changes to systemd; one per process, owned by the frame loop.
#[derive(Debug)]
pub struct Notifier {
    /// `NOTIFY_SOCKET` was set when the notifier was made.
    enabled: bool,
    /// Half of `WATCHDOG_USEC`: sd_watchdog_enabled(3) advises petting at
    /// half the timeout so one late frame does not kill the service.
    watchdog_every: Option<Duration>,
    /// Cells so the loop can notify through a shared reference.
    last_watchdog: Cell<Option<Instant>>,
    /// The last send failed; the next failure is not logged again.
    failing: Cell<bool>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` once.
    pub fn from_env() -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            watchdog_every: sd_notify::watchdog_enabled().map(|timeout| timeout / 2),
            last_watchdog: Cell::new(None),
            failing: Cell::new(false),
        }
    }

    /// A notifier that never sends (tests, `maskd` run by hand).
    pub fn disabled() -> Notifier {
        Notifier {
            enabled: false,
            watchdog_every: None,
            last_watchdog: Cell::new(None),
            failing: Cell::new(false),
        }
    }

    /// True when running under systemd with `Type=notify`.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// How often [`Notifier::watchdog`] actually sends (half of `WATCHDOG_USEC`);
    /// None when systemd has no watchdog for us. The loop must call `watchdog`
    /// at least this often.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog_every.filter(|_| self.enabled)
    }

    /// Start-up (or a reload) is complete.
    pub fn ready(&self) {
        self.send(&[NotifyState::Ready]);
    }

    /// A reload has begun; follow with [`Notifier::ready`] when it is done.
    /// systemd 253+ requires the MONOTONIC_USEC that comes with it.
    pub fn reloading(&self) {
        if !self.enabled {
            return;
        }
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(e) => log::warn!("sd_notify RELOADING: reading CLOCK_MONOTONIC: {e}"),
        }
    }

    /// One-line status shown by `systemctl status`; newlines become spaces
    /// because the protocol is newline-separated.
    pub fn status(&self, text: &str) {
        if !self.enabled {
            return;
        }
        if text.contains('\n') {
            let flat = text.replace('\n', " ");
            self.send(&[NotifyState::Status(&flat)]);
        } else {
            self.send(&[NotifyState::Status(text)]);
        }
    }

    /// Shutdown has begun.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    /// Pets the watchdog, at most once per [`Notifier::watchdog_interval`];
    /// cheap to call every frame.
    pub fn watchdog(&self) {
        let Some(every) = self.watchdog_interval() else {
            return;
        };
        let now = Instant::now();
        if self
            .last_watchdog
            .get()
            .is_some_and(|last| now.duration_since(last) < every)
        {
            return;
        }
        self.last_watchdog.set(Some(now));
        self.send(&[NotifyState::Watchdog]);
    }

    fn send(&self, state: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        match sd_notify::notify(state) {
            Ok(()) => self.failing.set(false),
            Err(e) => {
                if !self.failing.replace(true) {
                    log::warn!("sd_notify {state:?}: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::test_util;
    use std::os::unix::net::UnixDatagram;
    use std::path::PathBuf;

    /// A path-bound datagram socket in a fresh directory (sd-notify 0.5 does
    /// not support abstract sockets).
    struct NotifySocket {
        dir: PathBuf,
        sock: UnixDatagram,
    }

    impl NotifySocket {
        fn bind(name: &str) -> NotifySocket {
            let dir =
                std::env::temp_dir().join(format!("maskd-notify-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let sock = UnixDatagram::bind(dir.join("notify.sock")).unwrap();
            sock.set_nonblocking(true).unwrap();
            NotifySocket { dir, sock }
        }

        fn path(&self) -> PathBuf {
            self.dir.join("notify.sock")
        }

        /// Every datagram queued so far (the child has exited: all are in).
        fn drain(&self) -> Vec<String> {
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            while let Ok(n) = self.sock.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            got
        }
    }

    impl Drop for NotifySocket {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn sends_states_and_rate_limits_the_watchdog() {
        let sock = NotifySocket::bind("states");
        let out = test_util::run("lifecycle::notify::tests::child_notify", |cmd| {
            cmd.env("NOTIFY_SOCKET", sock.path())
                .env("WATCHDOG_USEC", "10000000")
                .env_remove("WATCHDOG_PID");
        });
        test_util::assert_passed(&out);
        let got = sock.drain();
        let want = [
            "READY=1\n",
            "STATUS=source: retrying in 2s\n",
            "STATUS=line one line two\n",
            "WATCHDOG=1\n",
            "STOPPING=1\n",
        ];
        assert_eq!(got.len(), want.len() + 1, "{got:?}");
        assert_eq!(&got[..3], &want[..3]);
        assert!(
            got[3].starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{got:?}"
        );
        assert_eq!(
            &got[4..],
            &want[3..],
            "second watchdog within 5 s must be suppressed"
        );
    }

    #[test]
    #[ignore = "runs in a child process (see sends_states_and_rate_limits_the_watchdog)"]
    fn child_notify() {
        if !test_util::in_child() {
            return;
        }
        let n = Notifier::from_env();
        assert!(n.is_enabled());
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(5)));
        n.ready();
        n.status("source: retrying in 2s");
        n.status("line one\nline two");
        n.reloading();
        n.watchdog();
        n.watchdog();
        n.stopping();
    }

    #[test]
    fn without_notify_socket_nothing_is_sent() {
        let out = test_util::run("lifecycle::notify::tests::child_no_socket", |cmd| {
            cmd.env_remove("NOTIFY_SOCKET")
                .env("WATCHDOG_USEC", "10000000");
        });
        test_util::assert_passed(&out);
    }

    #[test]
    #[ignore = "runs in a child process (see without_notify_socket_nothing_is_sent)"]
    fn child_no_socket() {
        if !test_util::in_child() {
            return;
        }
        let n = Notifier::from_env();
        assert!(!n.is_enabled());
        assert_eq!(n.watchdog_interval(), None);
        n.ready();
        n.watchdog();
        n.stopping();
        assert!(!n.failing.get(), "a disabled notifier must not try to send");
    }

    #[test]
    fn watchdog_for_another_pid_is_ignored() {
        let sock = NotifySocket::bind("pid");
        let out = test_util::run("lifecycle::notify::tests::child_other_pid", |cmd| {
            cmd.env("NOTIFY_SOCKET", sock.path())
                .env("WATCHDOG_USEC", "10000000")
                .env("WATCHDOG_PID", "1");
        });
        test_util::assert_passed(&out);
        assert_eq!(sock.drain(), vec!["READY=1\n".to_string()]);
    }

    #[test]
    #[ignore = "runs in a child process (see watchdog_for_another_pid_is_ignored)"]
    fn child_other_pid() {
        if !test_util::in_child() {
            return;
        }
        let n = Notifier::from_env();
        assert_eq!(n.watchdog_interval(), None);
        n.ready();
        n.watchdog();
    }

    #[test]
    fn disabled_notifier_has_no_watchdog() {
        let n = Notifier::disabled();
        assert!(!n.is_enabled());
        assert_eq!(n.watchdog_interval(), None);
        n.watchdog();
        assert_eq!(n.last_watchdog.get(), None);
    }
}
