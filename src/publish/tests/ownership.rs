//! Who owns the socket path: the lock beside it, rebinding a socket file that
//! vanished or was replaced under a running publisher, and removing only our own.

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::config::MaskEncoding;
use crate::publish::lock::lock_path;
use crate::publish::sock;
use crate::publish::test_util::{config, FakeDirectory, Got, RawClient, TempDir};
use crate::publish::wire::ServerMessage;
use crate::publish::Publisher;

/// Services `p` until a client can connect to `path` and subscribe (the path
/// is checked once a second); panics after a minute.
fn serve_until_reachable(p: &mut Publisher, path: &Path) {
    let mut d = FakeDirectory::default();
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < give_up,
            "{} never served again",
            path.display()
        );
        p.service(&mut d);
        if let Ok(fd) = sock::connect(path, false) {
            let mut c = RawClient {
                fd,
                buf: Vec::new(),
            };
            c.subscribe(None, &["a"]);
            p.service(&mut d);
            // Anything else: not served by `p` yet; keep going.
            if let Got::Msg(ServerMessage::Subscribed { .. }) = c.try_recv() {
                return;
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A bound socket node at `path`, listening or not, that is not the publisher's.
fn foreign_socket(path: &Path, listen: bool) -> std::os::fd::OwnedFd {
    let fd = sock::seqpacket(false).unwrap();
    let addr = nix::sys::socket::UnixAddr::new(path).unwrap();
    nix::sys::socket::bind(fd.as_raw_fd(), &addr).unwrap();
    if listen {
        nix::sys::socket::listen(&fd, nix::sys::socket::Backlog::new(4).unwrap()).unwrap();
    }
    fd
}

#[test]
fn a_second_publisher_on_the_same_path_is_refused_naming_the_path_and_the_holder() {
    let dir = TempDir::new("lock");
    let path = dir.join("maskd.sock");
    let mut first = Publisher::bind(&config(&path), MaskEncoding::Rle).unwrap();
    let lock = lock_path(&path);
    assert_eq!(
        std::fs::read_to_string(&lock).unwrap().trim(),
        std::process::id().to_string(),
        "the lock file names its holder"
    );
    let err = format!(
        "{:#}",
        Publisher::bind(&config(&path), MaskEncoding::Rle)
            .err()
            .unwrap()
    );
    assert!(
        err.contains(&path.display().to_string())
            && err.contains(&format!("pid {}", std::process::id()))
            && err.contains("maskd.sock.lock"),
        "{err}"
    );
    // The refused one touched nothing: the first still serves the same node.
    serve_until_reachable(&mut first, &path);
    first.close();
    assert!(
        !path.exists() && !lock.exists(),
        "close removes the socket and its lock"
    );
    let again = Publisher::bind(&config(&path), MaskEncoding::Rle);
    assert!(again.is_ok(), "the path is free again after close");
}

#[test]
fn a_live_socket_of_another_program_is_refused_though_no_lock_is_held() {
    let dir = TempDir::new("foreign-live");
    let path = dir.join("maskd.sock");
    let _other = foreign_socket(&path, true);
    let err = format!(
        "{:#}",
        Publisher::bind(&config(&path), MaskEncoding::Rle)
            .err()
            .unwrap()
    );
    assert!(err.contains("in use"), "{err}");
    assert!(path.exists(), "another program's socket is left alone");
    assert!(
        !lock_path(&path).exists(),
        "a failed bind leaves no lock file"
    );
}

#[test]
fn a_deleted_socket_file_is_bound_again() {
    let dir = TempDir::new("vanished");
    let path = dir.join("maskd.sock");
    let mut p = Publisher::bind(&config(&path), MaskEncoding::Rle).unwrap();
    let before = std::fs::metadata(&path).unwrap().ino();
    std::fs::remove_file(&path).unwrap();
    serve_until_reachable(&mut p, &path);
    assert_ne!(
        std::fs::metadata(&path).unwrap().ino(),
        before,
        "a new node"
    );
    p.close();
    assert!(!path.exists(), "close removes the rebound node too");
}

#[test]
fn a_socket_replaced_by_a_dead_one_is_bound_again() {
    let dir = TempDir::new("replaced-dead");
    let path = dir.join("maskd.sock");
    let mut p = Publisher::bind(&config(&path), MaskEncoding::Rle).unwrap();
    std::fs::remove_file(&path).unwrap();
    drop(foreign_socket(&path, false));
    serve_until_reachable(&mut p, &path);
}

#[test]
fn a_socket_replaced_by_a_live_one_is_left_to_its_owner() {
    let dir = TempDir::new("replaced-live");
    let path = dir.join("maskd.sock");
    let mut p = Publisher::bind(&config(&path), MaskEncoding::Rle).unwrap();
    std::fs::remove_file(&path).unwrap();
    let other = foreign_socket(&path, true);
    let theirs = std::fs::metadata(&path).unwrap().ino();
    let mut d = FakeDirectory::default();
    // Past one check interval, so the publisher has looked at least once.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        p.service(&mut d);
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        std::fs::metadata(&path).unwrap().ino(),
        theirs,
        "not taken over"
    );
    p.close();
    assert!(path.exists(), "close removes only its own socket");
    drop(other);
}
