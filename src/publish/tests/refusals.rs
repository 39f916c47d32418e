//! Turned-away clients always read why: whatever they sent first, and however
//! many arrive at once (`refusals.rs`, `access.rs`).

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use crate::config::MaskEncoding;
use crate::publish::access::{Access, Peer};
use crate::publish::sock;
use crate::publish::test_util::{config, FakeDirectory, Got, RawClient, TempDir};
use crate::publish::wire::{self, ErrorCode, ServerMessage};
use crate::publish::Publisher;

/// Reads an ERROR (a reset first fails the test), then end of file.
fn refusal(c: &mut RawClient) -> (u16, String) {
    let got = match sock::recv_message(c.fd.as_fd(), &mut c.buf, true) {
        Ok(Some(_)) => match wire::parse_server(&c.buf) {
            Ok(ServerMessage::Error {
                code,
                closing,
                message,
            }) => {
                assert!(closing, "a refusal says it closes");
                (code, String::from_utf8_lossy(message).into_owned())
            }
            other => panic!("expected ERROR, got {other:?}"),
        },
        other => panic!("expected ERROR, got {other:?} (ECONNRESET: closed with unread input)"),
    };
    assert!(
        matches!(c.try_recv(), Got::Closed),
        "end of file after the ERROR"
    );
    got
}

/// A publisher that holds refusals for a minute: steps of a test on a loaded
/// machine must not race the real one-second deadline.
fn publisher(dir: &TempDir, max_clients: usize) -> Publisher {
    let mut cfg = config(&dir.join("maskd.sock"));
    cfg.max_clients = max_clients;
    let mut p = Publisher::bind(&cfg, MaskEncoding::Rle).unwrap();
    p.hold_refusals_for(Duration::from_secs(60));
    p
}

#[test]
fn a_client_that_subscribed_before_its_refusal_reads_error_11() {
    let dir = TempDir::new("refused-early");
    let mut p = publisher(&dir, 1);
    let mut d = FakeDirectory::default();
    let _first = RawClient::connect(&dir.join("maskd.sock"));
    p.service(&mut d);
    let mut second = RawClient::connect(&dir.join("maskd.sock"));
    second.subscribe(None, &["a"]);
    second.subscribe(None, &["b"]);
    p.service(&mut d);
    let (code, text) = refusal(&mut second);
    assert_eq!(code, ErrorCode::TooManyClients as u16);
    assert!(text.contains("at most 1 clients"), "{text}");
    assert_eq!(
        d.total_refs(),
        0,
        "a refused client's SUBSCRIBE is never read"
    );
}

#[test]
fn a_client_that_subscribes_after_its_refusal_can_send_and_reads_error_11() {
    let dir = TempDir::new("refused-late");
    let mut p = publisher(&dir, 1);
    let mut d = FakeDirectory::default();
    let _first = RawClient::connect(&dir.join("maskd.sock"));
    p.service(&mut d);
    let mut second = RawClient::connect(&dir.join("maskd.sock"));
    p.service(&mut d);
    assert_eq!(p.stats().refusing, 1, "held open after the ERROR");
    // Closed at once, this send would fail with EPIPE (or the read below with ECONNRESET).
    second.subscribe(None, &["a"]);
    p.service(&mut d);
    let (code, _) = refusal(&mut second);
    assert_eq!(code, ErrorCode::TooManyClients as u16);
    drop(second);
    p.service(&mut d);
    assert_eq!(p.stats().refusing, 0, "let go once the client hung up");
    assert_eq!(p.stats().rejected, 1);
}

#[test]
fn a_refused_client_that_never_hangs_up_is_let_go_after_the_deadline() {
    let dir = TempDir::new("refused-deadline");
    let mut cfg = config(&dir.join("maskd.sock"));
    cfg.max_clients = 1;
    let mut p = Publisher::bind(&cfg, MaskEncoding::Rle).unwrap();
    let mut d = FakeDirectory::default();
    let _first = RawClient::connect(&dir.join("maskd.sock"));
    p.service(&mut d);
    let mut lingering = RawClient::connect(&dir.join("maskd.sock"));
    p.service(&mut d);
    assert_eq!(p.stats().refusing, 1);
    let give_up = Instant::now() + Duration::from_secs(60);
    while p.stats().refusing > 0 {
        assert!(
            Instant::now() < give_up,
            "a refused connection is held forever"
        );
        lingering.subscribe(None, &["still here"]);
        thread::sleep(Duration::from_millis(20));
        p.service(&mut d);
    }
    // Drained right before the close: the ERROR is still readable, not a reset.
    let (code, _) = refusal(&mut lingering);
    assert_eq!(code, ErrorCode::TooManyClients as u16);
}

#[test]
fn a_full_ring_leaves_newcomers_waiting_in_the_backlog_not_dropped() {
    let dir = TempDir::new("refused-ring");
    let mut p = publisher(&dir, 1);
    let mut d = FakeDirectory::default();
    let path = dir.join("maskd.sock");
    let _first = RawClient::connect(&path);
    p.service(&mut d);
    let cap = crate::publish::refusals::REFUSED_CAPACITY;
    let mut held: Vec<RawClient> = (0..cap).map(|_| RawClient::connect(&path)).collect();
    for _ in 0..cap {
        if p.stats().refusing == cap {
            break;
        }
        p.service(&mut d);
    }
    assert_eq!(p.stats().refusing, cap, "refused connections are held");
    let mut waiting = RawClient::connect(&path);
    waiting.subscribe(None, &["a"]);
    p.service(&mut d);
    assert!(
        matches!(waiting.try_recv(), Got::Nothing),
        "not accepted while the ring is full"
    );
    let (code, _) = refusal(&mut held[0]);
    assert_eq!(code, ErrorCode::TooManyClients as u16);
    drop(held.remove(0));
    p.service(&mut d);
    let (code, _) = refusal(&mut waiting);
    assert_eq!(code, ErrorCode::TooManyClients as u16);
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Subscribed,
    Refused(u16),
    Failed(String),
}

/// One storm client: connect, SUBSCRIBE at once, read the reply. Returns the
/// connection too, so that a subscribed one keeps its slot.
fn storm_client(path: &std::path::Path) -> (Outcome, Option<std::os::fd::OwnedFd>) {
    let fd = match sock::connect(path, false) {
        Ok(fd) => fd,
        Err(e) => return (Outcome::Failed(format!("connect: {e}")), None),
    };
    let outcome = storm_outcome(&fd);
    (outcome, Some(fd))
}

fn storm_outcome(fd: &std::os::fd::OwnedFd) -> Outcome {
    let mut msg = Vec::new();
    if wire::write_subscribe(&mut msg, None, &["storm"]).is_err() {
        return Outcome::Failed("building SUBSCRIBE".into());
    }
    if let Err(e) = sock::send_blocking(fd.as_fd(), &msg) {
        return Outcome::Failed(format!("send: {e}"));
    }
    let mut buf = Vec::new();
    loop {
        match sock::wait_readable(fd.as_fd(), Duration::from_secs(60)) {
            Ok(true) => {}
            other => return Outcome::Failed(format!("no reply ({other:?})")),
        }
        match sock::recv_message(fd.as_fd(), &mut buf, true) {
            Ok(Some(_)) => {}
            Ok(None) => return Outcome::Failed("end of file before any reply".into()),
            Err(Errno::EAGAIN) => continue,
            Err(e) => return Outcome::Failed(format!("recv: {e}")),
        }
        return match wire::parse_server(&buf) {
            Ok(ServerMessage::Subscribed { .. }) => Outcome::Subscribed,
            Ok(ServerMessage::Error { code, .. }) => {
                // And then end of file, not a reset.
                match sock::wait_readable(fd.as_fd(), Duration::from_secs(60))
                    .map(|_| sock::recv_message(fd.as_fd(), &mut buf, true))
                {
                    Ok(Ok(None)) => Outcome::Refused(code),
                    other => Outcome::Failed(format!("after ERROR {code}: {other:?}")),
                }
            }
            other => Outcome::Failed(format!("unexpected reply {other:?}")),
        };
    }
}

#[test]
fn a_storm_of_clients_subscribing_at_once_all_read_error_11() {
    const CLIENTS: usize = 200;
    const MAX: usize = 8;
    let dir = TempDir::new("storm");
    let mut p = publisher(&dir, MAX);
    let mut d = FakeDirectory::default();
    let path = dir.join("maskd.sock");
    let finished = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (path, finished, release) = (path.clone(), finished.clone(), release.clone());
            thread::spawn(move || {
                let (outcome, connection) = storm_client(&path);
                finished.fetch_add(1, Ordering::SeqCst);
                // The subscribed keep their slots, so that the rest are refused.
                while outcome == Outcome::Subscribed && !release.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(5));
                }
                drop(connection);
                outcome
            })
        })
        .collect();
    let give_up = Instant::now() + Duration::from_secs(300);
    while finished.load(Ordering::SeqCst) < CLIENTS && Instant::now() < give_up {
        p.service(&mut d);
        thread::sleep(Duration::from_millis(1));
    }
    release.store(true, Ordering::SeqCst);
    let outcomes: Vec<Outcome> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let subscribed = outcomes
        .iter()
        .filter(|o| **o == Outcome::Subscribed)
        .count();
    let refused = outcomes
        .iter()
        .filter(|o| **o == Outcome::Refused(ErrorCode::TooManyClients as u16))
        .count();
    let failed: Vec<_> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Failed(why) => Some(why.as_str()),
            _ => None,
        })
        .collect();
    eprintln!(
        "storm: {CLIENTS} clients, {subscribed} subscribed, {refused} read ERROR 11, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} clients got no readable refusal: {failed:?}",
        failed.len()
    );
    assert_eq!((subscribed, refused), (MAX, CLIENTS - MAX));
    assert_eq!(p.stats().rejected, (CLIENTS - MAX) as u64);
}

fn me() -> Peer {
    Peer {
        pid: std::process::id() as i32,
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
    }
}

#[test]
fn access_passes_a_listed_uid_or_a_listed_gid_and_nothing_else() {
    let mut cfg = config(&TempDir::new("access-rule").join("x"));
    let peer = Peer {
        pid: 1,
        uid: 1000,
        gid: 44,
    };
    assert!(
        Access::new(&cfg).check(Some(peer)).is_ok(),
        "no lists: everyone"
    );
    assert!(Access::new(&cfg).check(None).is_ok());
    cfg.allow_uids = Some(vec![0, 1000]);
    assert!(Access::new(&cfg).check(Some(peer)).is_ok());
    cfg.allow_uids = Some(vec![0]);
    let why = Access::new(&cfg).check(Some(peer)).unwrap_err();
    assert!(why.contains("uid 1000") && why.contains("gid 44"), "{why}");
    cfg.allow_gids = Some(vec![44]);
    assert!(
        Access::new(&cfg).check(Some(peer)).is_ok(),
        "the gid list alone suffices"
    );
    cfg.allow_uids = None;
    cfg.allow_gids = Some(vec![45]);
    assert!(Access::new(&cfg).check(Some(peer)).is_err());
    assert!(
        Access::new(&cfg).check(None).is_err(),
        "unknown credentials fail a rule"
    );
}

#[test]
fn a_client_whose_uid_is_not_allowed_reads_error_14_and_others_connect() {
    let dir = TempDir::new("access");
    let mut cfg = config(&dir.join("maskd.sock"));
    let me = me();
    cfg.allow_uids = Some(vec![me.uid.wrapping_add(1)]);
    let mut p = Publisher::bind(&cfg, MaskEncoding::Rle).unwrap();
    let mut d = FakeDirectory::default();
    let mut denied = RawClient::connect(&cfg.socket);
    denied.subscribe(None, &["a"]);
    p.service(&mut d);
    let (code, text) = refusal(&mut denied);
    assert_eq!(code, ErrorCode::AccessDenied as u16);
    assert!(
        text.contains(&format!("uid {}", me.uid)) && text.contains("publish.allow_uids"),
        "{text}"
    );
    assert_eq!((p.stats().denied, p.stats().clients), (1, 0));
    drop(p);

    cfg.allow_gids = Some(vec![me.gid]);
    let mut p = Publisher::bind(&cfg, MaskEncoding::Rle).unwrap();
    let mut allowed = RawClient::connect(&cfg.socket);
    allowed.subscribe(None, &["a"]);
    p.service(&mut d);
    assert!(
        matches!(
            allowed.try_recv(),
            Got::Msg(ServerMessage::Subscribed { .. })
        ),
        "allowed by its gid"
    );
}
