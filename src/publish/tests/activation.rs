//! Socket activation as systemd does it: the variables are read for this
//! process only, and taken out of the environment once read.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::publish::activation::{self, passed_count, SD_LISTEN_FDS_START};
use crate::publish::test_util::TempDir;

#[test]
fn the_variables_count_only_for_the_process_they_name() {
    let me = 4242;
    assert_eq!(passed_count(Some("4242"), Some("1"), me).unwrap(), 1);
    assert_eq!(
        passed_count(Some("4241"), Some("1"), me).unwrap(),
        0,
        "a parent's"
    );
    assert_eq!(passed_count(None, Some("1"), me).unwrap(), 0);
    assert_eq!(passed_count(Some("4242"), None, me).unwrap(), 0);
    assert_eq!(passed_count(Some("4242"), Some("0"), me).unwrap(), 0);
    assert_eq!(passed_count(Some("x"), Some("1"), me).unwrap(), 0);
    let err = passed_count(Some("4242"), Some("2"), me)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("2 sockets") && err.contains("exactly one"),
        "{err}"
    );
}

/// Runs as a child of `take_listener_unsets_the_variables_and_keeps_the_fd_private`
/// (and does nothing in a normal test run).
#[test]
fn activation_child() {
    if std::env::var_os("MASKD_ACTIVATION_CHILD").is_none() {
        return;
    }
    let fd = activation::take_listener()
        .unwrap()
        .expect("a passed socket");
    assert_eq!(fd.as_raw_fd(), SD_LISTEN_FDS_START);
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        assert!(std::env::var_os(var).is_none(), "{var} left for children");
    }
    let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
    assert!(
        nix::fcntl::FdFlag::from_bits_truncate(flags).contains(nix::fcntl::FdFlag::FD_CLOEXEC),
        "children must not inherit the socket"
    );
    println!("activation child ok");
}

#[test]
fn take_listener_unsets_the_variables_and_keeps_the_fd_private() {
    let dir = TempDir::new("activation");
    let listener = crate::publish::sock::seqpacket(false).unwrap();
    let addr = nix::sys::socket::UnixAddr::new(dir.join("a.sock").as_path()).unwrap();
    nix::sys::socket::bind(listener.as_raw_fd(), &addr).unwrap();
    nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::new(4).unwrap()).unwrap();
    let raw = listener.as_raw_fd();
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new("sh");
    // LISTEN_PID must be the pid that reads it: the shell's, kept by exec.
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(&exe)
        .args([
            "--exact",
            "publish::tests::activation::activation_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MASKD_ACTIVATION_CHILD", "1")
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "maskd.socket");
    // SAFETY: dup2 and fcntl are async-signal-safe; the closure touches no
    // memory of the parent beyond the copied fd number.
    unsafe {
        cmd.pre_exec(move || {
            if raw != SD_LISTEN_FDS_START
                && nix::libc::dup2(raw, SD_LISTEN_FDS_START) != SD_LISTEN_FDS_START
            {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 clears close-on-exec on the copy, but not when raw is already 3.
            if nix::libc::fcntl(SD_LISTEN_FDS_START, nix::libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("activation child ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
