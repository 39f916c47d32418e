//! `maskd run` end to end: frames in, masks out to several subscribers.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use maskd::config::MaskEncoding;
use maskd::publish::Client;

use crate::util::{config, repo, Daemon, Dir};

const FRAMES: usize = 30;

fn demo_pipeline() -> String {
    let clip = repo().join("models/demo/clip.webm");
    format!("filesrc location={} ! decodebin", clip.display())
}

fn default_manifest() -> PathBuf {
    repo().join("models/default.toml")
}

fn fixture_manifest() -> PathBuf {
    repo().join("tests/data/fixture/fixture.toml")
}

/// The fixture model on a live test pattern: for tests of the socket, not of the model.
fn ball_daemon(dir: &Dir) -> Daemon {
    let (cfg, socket) = config(
        dir,
        "videotestsrc is-live=true pattern=ball",
        &fixture_manifest(),
        &["ball"],
        4,
    );
    Daemon::start(dir, &cfg, &socket)
}

/// Reads `n` frames, checking framing, sizes and order; returns (max coverage, dropped sum).
fn read_frames(client: &mut Client, ids: &[u32], n: usize) -> (f32, u64) {
    let mut last_seq = None;
    let mut max_coverage = 0.0f32;
    let mut dropped = 0u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut got = 0;
    while got < n {
        assert!(
            Instant::now() < deadline,
            "only {got} of {n} frames arrived"
        );
        let Some(frame) = client
            .recv(Duration::from_secs(10))
            .expect("receiving a frame")
        else {
            continue;
        };
        let h = &frame.header;
        if let Some(prev) = last_seq {
            assert!(h.seq > prev, "sequence went from {prev} to {}", h.seq);
        }
        last_seq = Some(h.seq);
        assert_eq!((h.mask_width, h.mask_height), (64, 48));
        assert!(h.publish_ns >= h.capture_ns, "published before captured");
        dropped += u64::from(h.dropped);
        for mask in &frame.masks {
            assert!(
                ids.contains(&mask.prompt_id),
                "got prompt {} not subscribed",
                mask.prompt_id
            );
            assert_eq!(mask.bits.len(), 64 * 48);
            let set = mask.bits.iter().filter(|&&b| b == 1).count();
            let coverage = set as f32 / mask.bits.len() as f32;
            assert!(
                (coverage - mask.coverage).abs() < 1e-3,
                "coverage field disagrees with bits"
            );
            max_coverage = max_coverage.max(coverage);
        }
        got += 1;
    }
    (max_coverage, dropped)
}

#[test]
fn two_readers_get_their_masks_while_a_stuck_subscriber_loses_only_its_own() {
    let dir = Dir::new();
    let (cfg, socket) = config(
        &dir,
        &demo_pipeline(),
        &default_manifest(),
        &["red circle", "blue square"],
        2,
    );
    let daemon = Daemon::start(&dir, &cfg, &socket);

    let mut stuck = Client::connect(&daemon.socket).expect("stuck client connects");
    stuck
        .subscribe(&["yellow star"], MaskEncoding::Bitmask)
        .expect("stuck client subscribes");

    let mut red = Client::connect(&daemon.socket).expect("reader 1 connects");
    let red_ids = red
        .subscribe(&["red circle"], MaskEncoding::Rle)
        .expect("reader 1 subscribes");
    let mut blue = Client::connect(&daemon.socket).expect("reader 2 connects");
    let blue_ids = blue
        .subscribe(&["blue square"], MaskEncoding::CocoRle)
        .expect("reader 2 subscribes");
    assert_ne!(red_ids, blue_ids);

    // Read both from two threads so neither waits on the other.
    let red_thread = std::thread::spawn(move || read_frames(&mut red, &red_ids, FRAMES));
    let (blue_cov, blue_dropped) = read_frames(&mut blue, &blue_ids, FRAMES);
    let (red_cov, red_dropped) = red_thread.join().expect("reader 1 thread");

    assert_eq!(
        red_dropped, 0,
        "reader 1 lost frames to the stuck subscriber"
    );
    assert_eq!(
        blue_dropped, 0,
        "reader 2 lost frames to the stuck subscriber"
    );
    // The clip shows red circles and blue squares: the real model must find them.
    assert!(red_cov > 0.005, "no red circle found in {FRAMES} frames");
    assert!(blue_cov > 0.005, "no blue square found in {FRAMES} frames");

    // The stuck subscriber's queue overflowed: once it reads again, a header reports drops.
    let mut stuck_dropped = 0u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while stuck_dropped == 0 && Instant::now() < deadline {
        if let Some(frame) = stuck
            .recv(Duration::from_secs(5))
            .expect("stuck client reads")
        {
            stuck_dropped += u64::from(frame.header.dropped);
        }
    }
    assert!(
        stuck_dropped > 0,
        "the stuck subscriber never had frames dropped"
    );
}

#[test]
fn malformed_client_message_gets_an_error_and_others_keep_receiving() {
    let dir = Dir::new();
    let daemon = ball_daemon(&dir);

    let mut good = Client::connect(&daemon.socket).expect("good client connects");
    let ids = good
        .subscribe(&["ball"], MaskEncoding::Rle)
        .expect("good client subscribes");

    let mut bad = Client::connect(&daemon.socket).expect("bad client connects");
    bad.send_raw(b"GET / HTTP/1.1\r\n\r\n")
        .expect("sending garbage");
    let reply = bad.recv(Duration::from_secs(10));
    match reply {
        Err(maskd::publish::ClientError::Server {
            closing, message, ..
        }) => {
            assert!(closing, "the error reply must say the connection closes");
            assert!(
                message.to_lowercase().contains("magic"),
                "reply does not say what was wrong: {message}"
            );
        }
        other => panic!("expected an error reply, got {other:?}"),
    }
    // After the error the daemon hangs up on the bad client.
    let closed = (0..20).any(|_| {
        matches!(
            bad.recv(Duration::from_millis(500)),
            Err(maskd::publish::ClientError::Closed)
        )
    });
    assert!(closed, "the bad client was not dropped");

    let (_, dropped) = read_frames(&mut good, &ids, 5);
    assert_eq!(dropped, 0);
    let pong = good.ping(7).expect("daemon still answers the good client");
    assert!(pong < Duration::from_secs(10));
}

#[test]
fn sigterm_notifies_systemd_closes_and_removes_the_socket() {
    let dir = Dir::new();
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("binding the fake NOTIFY_SOCKET");
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("setting a timeout");
    let (cfg, socket) = config(
        &dir,
        "videotestsrc is-live=true",
        &fixture_manifest(),
        &["thing"],
        4,
    );
    let notify_str = notify_path.to_string_lossy().to_string();
    let mut daemon = Daemon::start_with_env(&dir, &cfg, &socket, &[("NOTIFY_SOCKET", &notify_str)]);

    let mut messages = String::new();
    let mut buf = [0u8; 4096];
    while !messages.contains("READY=1") {
        let n = notify
            .recv(&mut buf)
            .expect("a notification before the timeout");
        messages.push_str(&String::from_utf8_lossy(&buf[..n]));
        messages.push('\n');
    }
    assert!(
        daemon.stop(),
        "maskd did not exit cleanly on SIGTERM:\n{}",
        daemon.stderr_text()
    );
    while !messages.contains("STOPPING=1") {
        let n = notify
            .recv(&mut buf)
            .expect("STOPPING=1 before the timeout");
        messages.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(!socket.exists(), "the socket file was left behind");
}

/// The clients in `docs/examples/` were written from `docs/PROTOCOL.md` alone, each by
/// someone who had read only the document (`client.py` in Python, `client.c` in C);
/// both decoding every encoding from the real daemon is the check that the document is
/// enough to write a client from.
#[test]
fn clients_from_the_protocol_document_decode_every_encoding() {
    let dir = Dir::new();
    let daemon = ball_daemon(&dir);
    let c_client = compile_c_client(&dir);
    let script = repo().join("docs/examples/client.py");
    let python = |args: &[&str]| {
        let mut cmd = std::process::Command::new("python3");
        cmd.arg(&script).args(args);
        cmd
    };
    let c = |args: &[&str]| {
        let mut cmd = std::process::Command::new(&c_client);
        cmd.args(args);
        cmd
    };
    let socket = daemon.socket.to_string_lossy().into_owned();
    for (name, client) in [
        (
            "client.py",
            &python as &dyn Fn(&[&str]) -> std::process::Command,
        ),
        ("client.c", &c),
    ] {
        check_client(name, client, &socket);
    }
}

/// Builds `docs/examples/client.c` with the command its header gives.
fn compile_c_client(dir: &Dir) -> PathBuf {
    let exe = dir.path().join("client");
    let out = std::process::Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", "-o"])
        .arg(&exe)
        .arg(repo().join("docs/examples/client.c"))
        .output()
        .expect("running cc (gcc) to build docs/examples/client.c");
    assert!(
        out.status.success(),
        "docs/examples/client.c does not build warning-free:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

fn check_client(name: &str, client: &dyn Fn(&[&str]) -> std::process::Command, socket: &str) {
    for encoding in ["rle", "coco", "bitmask"] {
        let out = client(&[
            "--socket",
            socket,
            "--prompt",
            "ball",
            "--encoding",
            encoding,
            "--count",
            "3",
        ])
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{name} --encoding {encoding} failed:\n{stdout}\n{stderr}"
        );
        let frames = stdout.lines().filter(|l| l.starts_with("seq=")).count();
        assert_eq!(frames, 3, "{name} --encoding {encoding}:\n{stdout}");
        // The decoded bits must agree with the coverage the daemon put in the header.
        for line in stdout.lines().filter(|l| l.starts_with("seq=")) {
            let field = |key: &str| -> f64 {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(key))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no {key} in {line:?}"))
            };
            let ones = field("ones=");
            let coverage = field("coverage=");
            assert!(
                (ones / (64.0 * 48.0) - coverage).abs() < 1e-3,
                "{name} --encoding {encoding}: {ones} ones disagree with coverage {coverage}: {line}"
            );
        }
    }
}
