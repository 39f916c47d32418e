//! SIGHUP on a running daemon: what changes live, what is named for a restart, what a
//! broken edit leaves running, and that the subscribed client never notices but for
//! the masks it asked to change.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use maskd::config::MaskEncoding;
use maskd::publish::{Client, FrameMessage};

use crate::util::{config, repo, Daemon, Dir};

const LOAD_LIMIT: Duration = Duration::from_secs(120);

/// The next frame whose header satisfies `want`, failing after a minute (the client
/// must stay connected all along: a read error fails too).
fn frame_where(
    client: &mut Client,
    what: &str,
    want: impl Fn(&FrameMessage) -> bool,
) -> FrameMessage {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "no frame with {what} arrived");
        let frame = client
            .recv(Duration::from_secs(10))
            .expect("the client stays connected across the reload");
        if let Some(frame) = frame.filter(|f| want(f)) {
            return frame;
        }
    }
}

/// Rewrites the config with each `(from, to)` replacement, then sends SIGHUP.
fn edit_and_reload(daemon: &Daemon, cfg: &Path, edits: &[(&str, &str)]) {
    let mut text = fs::read_to_string(cfg).expect("reading the config");
    for (from, to) in edits {
        assert!(text.contains(from), "the config has no {from:?}");
        text = text.replace(from, to);
    }
    fs::write(cfg, text).expect("writing the config");
    daemon.signal(Signal::SIGHUP);
}

#[test]
fn sighup_applies_prompts_masks_source_and_model_and_keeps_clients() {
    let dir = Dir::new();
    let manifest = repo().join("tests/data/fixture/fixture.toml");
    let (cfg, socket) = config(
        &dir,
        "videotestsrc is-live=true pattern=ball",
        &manifest,
        &["ball"],
        4,
    );
    let daemon = Daemon::start(&dir, &cfg, &socket);
    let mut client = Client::connect(&socket).expect("connecting");
    let ids = client
        .subscribe(&["ball"], MaskEncoding::Rle)
        .expect("subscribing");
    assert_eq!(ids, [0], "the config's prompt");
    frame_where(&mut client, "64x48 masks", |f| {
        (f.header.mask_width, f.header.mask_height) == (64, 48) && f.masks.len() == 1
    });

    edit_and_reload(
        &daemon,
        &cfg,
        &[
            ("text = [\"ball\"]", "text = [\"ball\", \"circle\"]"),
            ("width = 64\nheight = 48", "width = 32\nheight = 24"),
            ("pattern=ball", "pattern=snow"),
            ("[engine]\n", "[engine]\nfused_ops = false\n"),
            ("queue_depth = 4", "queue_depth = 8"),
            ("level = \"info\"", "level = \"debug\""),
        ],
    );
    daemon.wait_for_log("the new model", LOAD_LIMIT);
    let frame = frame_where(&mut client, "32x24 masks", |f| {
        (f.header.mask_width, f.header.mask_height) == (32, 24)
    });
    assert_eq!(frame.masks.len(), 1, "still only the subscribed prompt");
    assert_eq!(frame.masks[0].prompt_id, 0, "the prompt kept its id");
    assert_eq!(frame.masks[0].bits.len(), 32 * 24);

    let log = daemon.stderr_text();
    for line in [
        "reloaded",
        "prompts.text",
        "masks.width",
        "source rebuilt: videotestsrc is-live=true pattern=snow",
        "publish.queue_depth changed",
        "engine.fused_ops",
    ] {
        assert!(log.contains(line), "the log has no {line:?}:\n{log}");
    }
    assert!(
        log.contains(" DEBUG "),
        "log.level = debug did not apply:\n{log}"
    );
    // The new pinned prompt is live: a second client gets it by its fresh id.
    let mut second = Client::connect(&socket).expect("a second client connects");
    let circle = second
        .subscribe(&["circle"], MaskEncoding::Bitmask)
        .expect("subscribing to the reloaded prompt");
    assert_eq!(circle, [1]);

    // A model that cannot load, and then a file that does not parse: the running model
    // and config stay, and the client is served throughout.
    edit_and_reload(
        &daemon,
        &cfg,
        &[(
            &format!("manifest = \"{}\"", manifest.display()),
            "manifest = \"/nonexistent/model.toml\"",
        )],
    );
    daemon.wait_for_log("the running model (", LOAD_LIMIT);
    let log = daemon.stderr_text();
    assert!(
        log.contains("/nonexistent/model.toml"),
        "the failed load is not named:\n{log}"
    );
    let seq = frame_where(&mut client, "a frame after the failed load", |_| true)
        .header
        .seq;
    fs::write(&cfg, "[source\n").expect("breaking the config");
    daemon.signal(Signal::SIGHUP);
    daemon.wait_for_log("reload rejected, keeping the running config", LOAD_LIMIT);
    frame_where(&mut client, "a later frame", |f| f.header.seq > seq);
}

/// `[pruning]` by SIGHUP: a schedule is applied without restarting (the stage graphs of
/// the same manifest are loaded beside the running model and swapped in); one the model
/// cannot take, and one no model could, leave the running schedule serving.
#[test]
fn sighup_applies_a_pruning_schedule_and_keeps_it_on_a_bad_one() {
    let dir = Dir::new();
    let manifest = repo().join("tests/data/fixture/fixture.toml");
    let (cfg, socket) = config(
        &dir,
        "videotestsrc is-live=true pattern=ball",
        &manifest,
        &["ball"],
        4,
    );
    let daemon = Daemon::start(&dir, &cfg, &socket);
    let mut client = Client::connect(&socket).expect("connecting");
    client
        .subscribe(&["ball"], MaskEncoding::Rle)
        .expect("subscribing");
    frame_where(&mut client, "a first frame", |f| f.masks.len() == 1);

    let mut text = fs::read_to_string(&cfg).expect("reading the config");
    text += "\n[pruning]\nschedule = [{ after_block = 0, keep = 0.5 }]\nscorer = \"attention\"\n";
    fs::write(&cfg, &text).expect("writing the config");
    daemon.signal(Signal::SIGHUP);
    daemon.wait_for_log("the new model", LOAD_LIMIT);
    let log = daemon.stderr_text();
    assert!(
        log.contains("pruning 0:0.5: the stage graphs run, tokens per block [16, 8]"),
        "the schedule is not running:\n{log}"
    );
    assert!(log.contains("pruning.schedule"), "{log}");
    let seq = frame_where(&mut client, "a pruned frame", |f| f.masks.len() == 1)
        .header
        .seq;

    // Beyond the fixture's depth (2 blocks): the load fails, the schedule stays.
    edit_and_reload(&daemon, &cfg, &[("after_block = 0", "after_block = 1")]);
    daemon.wait_for_log("the running model (", LOAD_LIMIT);
    let log = daemon.stderr_text();
    assert!(
        log.contains("pruning.schedule[0].after_block: 1 is beyond the model's depth"),
        "the failed schedule is not named:\n{log}"
    );
    let seq = frame_where(&mut client, "a frame after the failed load", |f| {
        f.header.seq > seq
    })
    .header
    .seq;

    // Malformed on any model: the file is rejected as a whole.
    edit_and_reload(&daemon, &cfg, &[("keep = 0.5", "keep = 0.0")]);
    daemon.wait_for_log("reload rejected, keeping the running config", LOAD_LIMIT);
    let log = daemon.stderr_text();
    assert!(
        log.contains("pruning.schedule[0].keep: 0 must be in (0, 1]"),
        "{log}"
    );
    frame_where(&mut client, "a later frame", |f| f.header.seq > seq);
}
