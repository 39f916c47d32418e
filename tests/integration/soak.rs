//! Soak: the daemon on the looping demo clip with the bundled model, four subscribers
//! that connect, subscribe, read a while and leave again without end, and a SIGHUP
//! that changes a threshold every minute. Samples the daemon's RSS and open fds and
//! prints their slopes; fails if either grows past warm-up.
//!
//! Ignored in the normal run (it takes minutes). One command runs it:
//!
//! ```sh
//! MASKD_SOAK_SECS=1800 cargo test --release --test integration soak -- --ignored --nocapture
//! ```
//!
//! CI runs it for 180 s (the default).

use std::fs;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use maskd::config::MaskEncoding;
use maskd::publish::Client;

use crate::util::{config, repo, Daemon, Dir};

const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const RELOAD_EVERY: Duration = Duration::from_secs(60);
/// What each churning subscriber asks for, in turn: the config's prompts, one of its
/// own (interned and released again on every round) and none (heartbeat frames).
const SUBSCRIPTIONS: [&[&str]; 4] = [
    &["red circle"],
    &["blue square", "yellow star"],
    &["green triangle"],
    &[],
];
const ENCODINGS: [MaskEncoding; 3] = [
    MaskEncoding::Rle,
    MaskEncoding::CocoRle,
    MaskEncoding::Bitmask,
];

/// (RSS in KiB, open fds) of `pid`.
fn sample(pid: u32) -> (u64, usize) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss, fds)
}

/// Least-squares slope of `ys` over `xs` (per unit of x).
fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    let mx = xs.iter().sum::<f64>() / n;
    let my = ys.iter().sum::<f64>() / n;
    let cov: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    if var == 0.0 {
        0.0
    } else {
        cov / var
    }
}

/// One churning subscriber: rounds of connect, subscribe, read 5..60 frames, leave
/// (alternately with UNSUBSCRIBE and by just closing). Returns frames read.
fn churn(
    socket: std::path::PathBuf,
    worker: usize,
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
) -> u64 {
    let mut frames = 0u64;
    let mut round = worker;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let Ok(mut client) = Client::connect(&socket) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let prompts = SUBSCRIPTIONS[round % SUBSCRIPTIONS.len()];
        if client
            .subscribe(prompts, ENCODINGS[round % ENCODINGS.len()])
            .is_err()
        {
            continue;
        }
        let want = 5 + (round * 7) % 56;
        for _ in 0..want {
            match client.recv(Duration::from_secs(10)) {
                Ok(Some(_)) => frames += 1,
                Ok(None) => {}
                Err(_) => break,
            }
        }
        if round.is_multiple_of(2) {
            let _ = client.unsubscribe();
        }
        rounds.fetch_add(1, Ordering::Relaxed);
    }
    frames
}

#[test]
#[ignore = "a soak of minutes: run with --ignored (MASKD_SOAK_SECS, default 180)"]
fn soak_keeps_rss_and_fds_flat_under_churn_and_reloads() {
    let secs: u64 = std::env::var("MASKD_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180);
    let dir = Dir::new();
    let clip = repo().join("models/demo/clip.webm");
    let (cfg, socket) = config(
        &dir,
        &format!("filesrc location={} ! decodebin", clip.display()),
        &repo().join("models/default.toml"),
        &["red circle", "blue square"],
        4,
    );
    let daemon = Daemon::start(&dir, &cfg, &socket);
    let pid = daemon.pid();

    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (socket, stop, rounds) = (socket.clone(), stop.clone(), rounds.clone());
            std::thread::spawn(move || churn(socket, w, stop, rounds))
        })
        .collect();

    let start = Instant::now();
    let warmup = Duration::from_secs((secs / 3).min(60));
    let mut next_reload = start + RELOAD_EVERY;
    let mut reloads = 0u32;
    let mut samples: Vec<(f64, u64, usize)> = Vec::new();
    let text = fs::read_to_string(&cfg).expect("reading the config");
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(SAMPLE_EVERY);
        let (rss, fds) = sample(pid);
        let t = start.elapsed().as_secs_f64();
        println!(
            "soak: {t:6.0} s  rss {:7.1} MiB  fds {fds}",
            rss as f64 / 1024.0
        );
        samples.push((t, rss, fds));
        if Instant::now() >= next_reload {
            reloads += 1;
            // A reload that changes something every time, so it is applied, not skipped.
            let threshold = if !reloads.is_multiple_of(2) {
                "0.3"
            } else {
                "0.25"
            };
            let edited = text.replace(
                "[prompts]\n",
                &format!("[prompts]\nscore_threshold = {threshold}\n"),
            );
            fs::write(&cfg, edited).expect("writing the config");
            daemon.signal(Signal::SIGHUP);
            next_reload += RELOAD_EVERY;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let frames: u64 = workers
        .into_iter()
        .map(|w| w.join().expect("a subscriber thread"))
        .sum();

    let steady: Vec<&(f64, u64, usize)> = samples
        .iter()
        .filter(|(t, _, _)| *t >= warmup.as_secs_f64())
        .collect();
    assert!(steady.len() >= 2, "too few samples after warm-up");
    let xs: Vec<f64> = steady.iter().map(|s| s.0 / 3600.0).collect();
    let rss: Vec<f64> = steady.iter().map(|s| s.1 as f64 / 1024.0).collect();
    let fds: Vec<f64> = steady.iter().map(|s| s.2 as f64).collect();
    let (first, last) = (steady[0], steady[steady.len() - 1]);
    println!(
        "soak: {secs} s, {} subscriber rounds, {frames} frames read, {reloads} reloads; \
         after {} s warm-up: rss {:.1} -> {:.1} MiB (slope {:+.1} MiB/h), fds {} -> {} \
         (slope {:+.1}/h)",
        rounds.load(Ordering::Relaxed),
        warmup.as_secs(),
        first.1 as f64 / 1024.0,
        last.1 as f64 / 1024.0,
        slope(&xs, &rss),
        first.2,
        last.2,
        slope(&xs, &fds),
    );

    let log = daemon.stderr_text();
    assert_eq!(
        log.matches("reloaded ").count(),
        reloads as usize,
        "every SIGHUP applied:\n{log}"
    );
    assert!(frames > 0, "the subscribers read no frames");
    assert!(
        rounds.load(Ordering::Relaxed) >= 8,
        "the subscribers barely churned"
    );
    // At most the four churning clients can be mid-connection at either sample.
    let max_fds = steady.iter().map(|s| s.2).max().unwrap_or(0);
    assert!(
        max_fds <= first.2 + 4,
        "open fds grew from {} to {max_fds}",
        first.2
    );
    let grown_mib = (last.1 as f64 - first.1 as f64) / 1024.0;
    assert!(
        grown_mib < (first.1 as f64 / 1024.0 * 0.10).max(16.0),
        "RSS grew by {grown_mib:.1} MiB after warm-up"
    );
}
