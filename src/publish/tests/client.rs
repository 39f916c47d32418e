//! The client library and the Python example against a live `Publisher`
//! driven on the test thread, the client on another thread or process.

use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use crate::config::MaskEncoding;
use crate::contracts::PromptId;
use crate::publish::test_util::{config, frame, pattern, FakeDirectory, TempDir};
use crate::publish::wire::{self, ErrorCode};
use crate::publish::{Client, ClientError, FrameMessage, Publisher};

/// Upper bound on loop turns while a client finishes (a hang guard, not a timing check).
const MAX_TURNS: usize = 5_000;

/// Services and publishes frames (masks for `ids`) until `done()`.
fn drive(
    p: &mut Publisher,
    d: &mut FakeDirectory,
    ids: &[PromptId],
    mut done: impl FnMut() -> bool,
) {
    for seq in 0..MAX_TURNS as u64 {
        p.service(d);
        p.publish(&frame(seq, 24, 16, ids));
        if done() {
            p.service(d);
            return;
        }
        thread::sleep(Duration::from_millis(2));
    }
    panic!("the client did not finish");
}

type Outcome = Result<(Vec<PromptId>, Vec<FrameMessage>), ClientError>;

#[test]
fn client_subscribes_pings_receives_and_unsubscribes() {
    let dir = TempDir::new("client");
    let path = dir.join("maskd.sock");
    let mut p = Publisher::bind(&config(&path), MaskEncoding::Rle).unwrap();
    let mut d = FakeDirectory::default();
    let client_path = path.clone();
    let handle = thread::spawn(move || -> Outcome {
        let mut c = Client::connect(&client_path)?;
        let ids = c.subscribe(&["a", "b"], MaskEncoding::CocoRle)?;
        c.ping(7)?;
        let mut frames = Vec::new();
        while frames.len() < 3 {
            match c.recv(Duration::from_secs(10))? {
                Some(f) => frames.push(f),
                None => break,
            }
        }
        c.unsubscribe()?;
        Ok((ids, frames))
    });
    // FakeDirectory hands out 100, 101, ... in order of first intern.
    drive(&mut p, &mut d, &[101, 55, 100], || handle.is_finished());
    let (ids, frames) = handle.join().unwrap().unwrap();
    assert_eq!(ids, [100, 101]);
    assert_eq!(frames.len(), 3);
    for f in &frames {
        assert_eq!(f.header.encoding, MaskEncoding::CocoRle);
        let got: Vec<_> = f
            .masks
            .iter()
            .map(|m| (m.prompt_id, m.bits.clone()))
            .collect();
        assert_eq!(
            got,
            [(101, pattern(101, 24, 16)), (100, pattern(100, 24, 16))]
        );
    }
    assert_eq!(d.total_refs(), 0, "unsubscribe released both prompts");
}

#[test]
fn client_reports_a_rejected_prompt() {
    let dir = TempDir::new("client-reject");
    let path = dir.join("maskd.sock");
    let mut p = Publisher::bind(&config(&path), MaskEncoding::Rle).unwrap();
    let mut d = FakeDirectory::default();
    let client_path = path.clone();
    let handle =
        thread::spawn(move || Client::connect(&client_path)?.subscribe(&["reject me"], None));
    drive(&mut p, &mut d, &[], || handle.is_finished());
    match handle.join().unwrap() {
        Err(ClientError::Server {
            code,
            closing,
            message,
        }) => {
            assert_eq!((code, closing), (ErrorCode::PromptRejected as u16, false));
            assert!(message.contains("reject me"), "{message}");
        }
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[test]
fn connecting_to_nothing_names_the_path() {
    let dir = TempDir::new("client-none");
    let err = Client::connect(dir.join("absent.sock"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("absent.sock") && err.contains("is maskd running"),
        "{err}"
    );
}

/// A FRAME of `count` RLE masks of `width` x `height`, each one background run.
fn one_run_frame(count: u16, width: u32, height: u32) -> Vec<u8> {
    let header = wire::FrameHeader {
        seq: 1,
        capture_ns: 0,
        publish_ns: 0,
        frame_width: 640,
        frame_height: 480,
        mask_width: width,
        mask_height: height,
        mask_count: count,
        encoding: MaskEncoding::Rle,
        dropped: 0,
    };
    let mut run = Vec::new();
    crate::masks::rle::push_varint(&mut run, u64::from(width) * u64::from(height));
    let mut msg = Vec::new();
    header.write(&mut msg);
    for id in 0..u32::from(count) {
        wire::write_mask(&mut msg, id, 0.5, 0.0, &run);
    }
    msg
}

fn decode_frame(msg: &[u8]) -> Result<FrameMessage, ClientError> {
    match wire::parse_server(msg)? {
        wire::ServerMessage::Frame(header, masks) => FrameMessage::decode(header, &masks),
        other => panic!("not a FRAME: {other:?}"),
    }
}

/// 64 masks of 8192 x 8192 in a 1,336-byte FRAME each passed the decoder's per-mask
/// limit and together made the client allocate 4 GiB (libFuzzer's out-of-memory in
/// `fuzz/`, target `server_message`, seed `oom-64-masks-8192`). Beyond what a server
/// sends, a FRAME is refused before anything is decoded.
#[test]
fn a_frame_larger_than_a_server_sends_is_refused_undecoded() {
    let largest = decode_frame(&one_run_frame(32, 4096, 1)).unwrap();
    assert_eq!(largest.masks.len(), 32);
    assert!(largest.masks.iter().all(|m| m.bits.len() == 4096));
    assert!(decode_frame(&one_run_frame(0, 100_000, 100_000)).is_ok());
    for (count, width, height) in [(33, 1, 1), (1, 4097, 1), (1, 1, 4097), (64, 8192, 8192)] {
        match decode_frame(&one_run_frame(count, width, height)) {
            Err(ClientError::FrameTooLarge { .. }) => {}
            other => panic!("{count} masks of {width}x{height}: {other:?}"),
        }
    }
}

/// The example clients of `docs/examples/`, written from `docs/PROTOCOL.md` alone.
#[derive(Clone, Copy, Debug)]
enum Example {
    Python,
    C,
}

/// Builds `docs/examples/client.c` (as its header says) as `exe`; `None` without a C
/// compiler.
fn build_c_example(exe: std::path::PathBuf) -> Option<std::path::PathBuf> {
    let out = match Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", "-o"])
        .arg(&exe)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples/client.c"))
        .output()
    {
        Ok(out) => out,
        Err(_) => {
            eprintln!("cc not found: skipping the C example check");
            return None;
        }
    };
    assert!(
        out.status.success(),
        "docs/examples/client.c does not build warning-free:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(exe)
}

/// Runs an example client against a live publisher; returns its stdout.
fn run_example(example: Example, encoding: &str) -> Option<String> {
    let dir = TempDir::new("example");
    let mut cmd = match example {
        Example::Python => {
            if Command::new("python3").arg("--version").output().is_err() {
                eprintln!("python3 not found: skipping the Python example check");
                return None;
            }
            let mut cmd = Command::new("python3");
            cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples/client.py"));
            cmd
        }
        Example::C => Command::new(build_c_example(dir.join("client"))?),
    };
    let path = dir.join("maskd.sock");
    let mut p = Publisher::bind(&config(&path), MaskEncoding::Rle).unwrap();
    let mut d = FakeDirectory::default();
    let mut child = cmd
        .args([
            "--socket",
            path.to_str().unwrap(),
            "--prompt",
            "red",
            "--prompt",
            "blue circle",
        ])
        .args(["--encoding", encoding, "--count", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drive(&mut p, &mut d, &[101, 100, 7], || {
        child.try_wait().unwrap().is_some()
    });
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{example:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(stdout)
}

/// (ones, checksum) as the example clients print them.
fn summary(bits: &[u8]) -> (u64, u64) {
    let ones = bits.iter().map(|&b| u64::from(b)).sum();
    let sum = bits
        .iter()
        .enumerate()
        .filter(|(_, &b)| b != 0)
        .map(|(i, _)| i as u64)
        .sum::<u64>()
        % (1 << 32);
    (ones, sum)
}

#[test]
fn python_example_decodes_every_encoding() {
    example_decodes_every_encoding(Example::Python);
}

#[test]
fn c_example_decodes_every_encoding() {
    example_decodes_every_encoding(Example::C);
}

fn example_decodes_every_encoding(example: Example) {
    for encoding in ["default", "rle", "coco", "bitmask"] {
        let Some(stdout) = run_example(example, encoding) else {
            return;
        };
        let mut lines = stdout.lines();
        assert_eq!(
            lines.next(),
            Some("subscribed red=100 blue circle=101"),
            "{encoding}: {stdout}"
        );
        let frames: Vec<&str> = lines.collect();
        assert_eq!(frames.len(), 3, "{encoding}: {stdout}");
        for line in frames {
            let mut expected = String::new();
            for id in [101, 100] {
                let (ones, checksum) = summary(&pattern(id, 24, 16));
                let score = 0.5 + id as f32 / 1000.0;
                expected += &format!(
                    " id={id} score={score:.3} coverage=0.250 ones={ones} checksum={checksum}"
                );
            }
            assert!(
                line.ends_with(&expected),
                "{encoding}: {line}\nexpected ...{expected}"
            );
        }
    }
}

/// Runs `client.py --prompt red` against `path` while `serve` plays the server;
/// returns (exit status, stderr). `None` without python3.
fn run_python_against(
    path: &Path,
    serve: impl FnOnce(),
) -> Option<(std::process::ExitStatus, String)> {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("python3 not found: skipping the Python example check");
        return None;
    }
    let child = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples/client.py"))
        .args(["--socket", path.to_str().unwrap(), "--prompt", "red"])
        .args(["--timeout", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    serve();
    let out = child.wait_with_output().unwrap();
    Some((
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn assert_one_line(stderr: &str, wanted: &str) {
    assert!(
        !stderr.contains("Traceback") && stderr.trim().lines().count() == 1,
        "not one line:\n{stderr}"
    );
    assert!(stderr.contains(wanted), "{stderr}");
}

#[test]
fn python_example_reports_a_refusal_in_one_line() {
    let dir = TempDir::new("py-refused");
    let path = dir.join("maskd.sock");
    let mut cfg = config(&path);
    cfg.max_clients = 1;
    let mut p = Publisher::bind(&cfg, MaskEncoding::Rle).unwrap();
    let mut d = FakeDirectory::default();
    let _holder = crate::publish::test_util::RawClient::connect(&path);
    p.service(&mut d);
    let Some((status, stderr)) = run_python_against(&path, || {
        // Until the refused client has read its ERROR and hung up.
        for _ in 0..MAX_TURNS {
            p.service(&mut d);
            if p.stats().rejected == 1 && p.stats().refusing == 0 {
                return;
            }
            thread::sleep(Duration::from_millis(2));
        }
    }) else {
        return;
    };
    assert!(!status.success());
    assert_one_line(
        &stderr,
        "maskd error 11 (closing): maskd serves at most 1 clients",
    );
}

#[test]
fn python_example_reports_a_reset_in_one_line() {
    let dir = TempDir::new("py-reset");
    let path = dir.join("reset.sock");
    let listener = crate::publish::sock::seqpacket(false).unwrap();
    let addr = nix::sys::socket::UnixAddr::new(path.as_path()).unwrap();
    nix::sys::socket::bind(std::os::fd::AsRawFd::as_raw_fd(&listener), &addr).unwrap();
    nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::new(4).unwrap()).unwrap();
    let Some((status, stderr)) = run_python_against(&path, || {
        use std::os::fd::AsFd;
        let conn = nix::sys::socket::accept(&listener).unwrap();
        // Closing with the SUBSCRIBE unread resets the client's connection.
        assert!(
            crate::publish::sock::wait_readable(conn.as_fd(), Duration::from_secs(60)).unwrap()
        );
        drop(conn);
    }) else {
        return;
    };
    assert!(!status.success());
    assert_one_line(&stderr, "ECONNRESET");
}
