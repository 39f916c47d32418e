//! Publisher tests over real sockets in temp dirs, single-threaded: a Unix
//! socket delivers at once, so what `service`/`publish` sent is readable when
//! they return and no test waits on time.

use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use crate::config::MaskEncoding;
use crate::contracts::PromptId;
use crate::masks;
use crate::publish::test_util::{config, frame, pattern, FakeDirectory, Got, RawClient, TempDir};
use crate::publish::wire::{self, ErrorCode, MessageType, ServerMessage};
use crate::publish::Publisher;

fn bind(dir: &TempDir) -> Publisher {
    Publisher::bind(&config(&dir.join("maskd.sock")), MaskEncoding::Rle).unwrap()
}

/// Reads the SUBSCRIBED reply and returns its ids.
fn subscribed(c: &mut RawClient) -> Vec<PromptId> {
    match c.try_recv() {
        Got::Msg(ServerMessage::Subscribed { ids, .. }) => ids.iter().collect(),
        Got::Msg(other) => panic!("expected SUBSCRIBED, got {other:?}"),
        _ => panic!("expected SUBSCRIBED, got nothing"),
    }
}

/// Reads one FRAME: (seq, dropped, [(id, bits)]).
fn frame_of(c: &mut RawClient) -> (u64, u32, Vec<(PromptId, Vec<u8>)>) {
    match c.try_recv() {
        Got::Msg(ServerMessage::Frame(h, ms)) => {
            let masks = ms
                .iter()
                .map(|m| {
                    let mut bits = Vec::new();
                    masks::decode(
                        h.encoding,
                        m.payload,
                        h.mask_width,
                        h.mask_height,
                        &mut bits,
                    )
                    .unwrap();
                    (m.prompt_id, bits)
                })
                .collect();
            (h.seq, h.dropped, masks)
        }
        Got::Msg(other) => panic!("expected FRAME, got {other:?}"),
        _ => panic!("expected FRAME, got nothing"),
    }
}

fn is_empty(c: &mut RawClient) -> bool {
    matches!(c.try_recv(), Got::Nothing)
}

/// Reads an ERROR and then expects the connection closed; returns its code and text.
fn error_then_closed(c: &mut RawClient) -> (u16, String) {
    let got = match c.try_recv() {
        Got::Msg(ServerMessage::Error {
            code,
            closing,
            message,
        }) => {
            assert!(closing, "a fatal error says it closes");
            (code, String::from_utf8_lossy(message).into_owned())
        }
        Got::Msg(other) => panic!("expected ERROR, got {other:?}"),
        _ => panic!("expected ERROR, got nothing"),
    };
    assert!(
        matches!(c.try_recv(), Got::Closed),
        "closed after the ERROR"
    );
    got
}

#[test]
fn subscribers_get_only_their_prompts_in_their_encoding() {
    let dir = TempDir::new("only-theirs");
    let mut p = bind(&dir);
    let mut d = FakeDirectory::default();
    let mut a = RawClient::connect(&dir.join("maskd.sock"));
    let mut b = RawClient::connect(&dir.join("maskd.sock"));
    a.subscribe(None, &["red", "blue"]);
    b.subscribe(Some(MaskEncoding::Bitmask), &["green"]);
    p.service(&mut d);
    let ids_a = subscribed(&mut a);
    let ids_b = subscribed(&mut b);
    assert_eq!(ids_a.len(), 2);
    assert_eq!(ids_b.len(), 1);

    let all = [ids_a[0], ids_b[0], ids_a[1]];
    p.publish(&frame(7, 20, 10, &all));
    let (seq, dropped, got_a) = frame_of(&mut a);
    assert_eq!((seq, dropped), (7, 0));
    assert_eq!(
        got_a,
        vec![
            (ids_a[0], pattern(ids_a[0], 20, 10)),
            (ids_a[1], pattern(ids_a[1], 20, 10))
        ]
    );
    let (_, _, got_b) = frame_of(&mut b);
    assert_eq!(got_b, vec![(ids_b[0], pattern(ids_b[0], 20, 10))]);
    assert!(is_empty(&mut a) && is_empty(&mut b));
    assert_eq!(p.stats().sent, 2);
}

#[test]
fn frame_header_carries_the_set_and_the_encoding() {
    let dir = TempDir::new("header");
    let mut p = bind(&dir);
    let mut d = FakeDirectory::default();
    let mut a = RawClient::connect(&dir.join("maskd.sock"));
    a.subscribe(Some(MaskEncoding::CocoRle), &["x"]);
    p.service(&mut d);
    let ids = subscribed(&mut a);
    p.publish(&frame(3, 8, 4, &ids));
    let Got::Msg(ServerMessage::Frame(h, masks)) = a.try_recv() else {
        panic!("no frame")
    };
    assert_eq!(h.encoding, MaskEncoding::CocoRle);
    assert_eq!((h.seq, h.capture_ns), (3, 3_000_000_000));
    assert_eq!(
        (h.frame_width, h.frame_height, h.mask_width, h.mask_height),
        (640, 480, 8, 4)
    );
    assert!(
        h.publish_ns > 1_600_000_000_000_000_000,
        "publish time is CLOCK_REALTIME"
    );
    let m = masks.iter().next().unwrap();
    assert_eq!((m.prompt_id, m.coverage), (ids[0], 0.25));
}

#[test]
fn prompts_not_in_the_frame_are_absent_and_unsubscribed_clients_get_nothing() {
    let dir = TempDir::new("absent");
    let mut p = bind(&dir);
    let mut d = FakeDirectory::default();
    let mut a = RawClient::connect(&dir.join("maskd.sock"));
    let mut idle = RawClient::connect(&dir.join("maskd.sock"));
    a.subscribe(None, &["not yet encoded"]);
    p.service(&mut d);
    subscribed(&mut a);
    p.publish(&frame(1, 4, 4, &[5, 6]));
    assert_eq!(frame_of(&mut a), (1, 0, vec![]));
    assert!(is_empty(&mut idle));

    let mut unsub = Vec::new();
    wire::write_unsubscribe(&mut unsub);
    a.send(&unsub);
    p.service(&mut d);
    assert!(matches!(
        a.try_recv(),
        Got::Msg(ServerMessage::Unsubscribed)
    ));
    assert_eq!(d.total_refs(), 0, "unsubscribe releases");
    p.publish(&frame(2, 4, 4, &[5, 6]));
    assert!(is_empty(&mut a));
    assert_eq!(p.stats().subscribers, 0);
}

#[test]
fn a_client_that_never_reads_loses_frames_and_no_one_else_does() {
    let dir = TempDir::new("slow");
    let mut p = bind(&dir);
    let mut d = FakeDirectory::default();
    let mut slow = RawClient::connect(&dir.join("maskd.sock"));
    let mut fast = RawClient::connect(&dir.join("maskd.sock"));
    // Bitmask of 256×256: ~8 KB frames, well above the kernel's buffer floor.
    slow.subscribe(Some(MaskEncoding::Bitmask), &["a"]);
    fast.subscribe(Some(MaskEncoding::Bitmask), &["a"]);
    p.service(&mut d);
    let ids = subscribed(&mut slow);
    subscribed(&mut fast);
    let frames = 40u64;
    for seq in 0..frames {
        p.publish(&frame(seq, 256, 256, &ids));
        p.service(&mut d);
        let (got, dropped, masks) = frame_of(&mut fast);
        assert_eq!((got, dropped, masks.len()), (seq, 0, 1));
    }
    // The slow one's queue holds about queue_depth (2) frames, the oldest ones.
    let mut queued = 0u64;
    while !is_empty_after_frame(&mut slow, queued) {
        queued += 1;
    }
    assert!(
        (2..=3).contains(&queued),
        "{queued} frames queued for queue_depth 2"
    );
    let stats = p.stats();
    assert_eq!(stats.dropped, frames - queued);
    assert_eq!(stats.sent, frames + queued);
    // Its next delivered frame reports exactly what it missed.
    p.publish(&frame(frames, 256, 256, &ids));
    let (seq, dropped, _) = frame_of(&mut slow);
    assert_eq!((seq, u64::from(dropped)), (frames, frames - queued));
    frame_of(&mut fast);
    p.publish(&frame(frames + 1, 256, 256, &ids));
    assert_eq!(
        frame_of(&mut slow).1,
        0,
        "the count restarts after a delivery"
    );
}

/// Reads one queued frame, checking it is frame `seq`; true when none is left.
fn is_empty_after_frame(c: &mut RawClient, seq: u64) -> bool {
    match c.try_recv() {
        Got::Nothing => true,
        Got::Msg(ServerMessage::Frame(h, _)) => {
            assert_eq!(h.seq, seq, "the oldest frames are the ones kept");
            false
        }
        _ => panic!("unexpected message"),
    }
}

/// A SUBSCRIBE with raw prompt bytes.
fn raw_subscribe(enc: u8, texts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    wire::write_prefix(&mut out, MessageType::Subscribe);
    out.extend_from_slice(&[enc, 0]);
    out.extend_from_slice(&(texts.len() as u16).to_le_bytes());
    for t in texts {
        out.extend_from_slice(&(t.len() as u16).to_le_bytes());
        out.extend_from_slice(t);
    }
    out
}

#[test]
fn each_malformed_message_gets_an_error_and_a_close_and_others_carry_on() {
    let long = vec![b'a'; wire::MAX_PROMPT_BYTES + 1];
    let many = vec![&b"x"[..]; wire::MAX_PROMPTS + 1];
    let cases: Vec<(&str, Vec<u8>, ErrorCode, &str)> = vec![
        (
            "bad magic",
            b"MASK\x01\x00\x03\x01\0\0\0\0\0\0\0\0".to_vec(),
            ErrorCode::BadMagic,
            "magic",
        ),
        (
            "version",
            b"MSKD\x09\x00\x03\x01\0\0\0\0\0\0\0\0".to_vec(),
            ErrorCode::UnsupportedVersion,
            "version 9",
        ),
        (
            "unknown type",
            b"MSKD\x01\x00\x77\x01".to_vec(),
            ErrorCode::UnknownType,
            "0x0177",
        ),
        (
            "server type",
            b"MSKD\x01\x00\x04\x00\0\0\0\0\0\0\0\0".to_vec(),
            ErrorCode::UnknownType,
            "0x0004",
        ),
        ("short", b"MSK".to_vec(), ErrorCode::Malformed, "shorter"),
        (
            "truncated ping",
            b"MSKD\x01\x00\x03\x01\x01".to_vec(),
            ErrorCode::Malformed,
            "PING",
        ),
        (
            "bad utf-8",
            raw_subscribe(1, &[b"ok", b"\xc3\x28"]),
            ErrorCode::BadUtf8,
            "prompt 1",
        ),
        (
            "too many",
            raw_subscribe(1, &many),
            ErrorCode::TooManyPrompts,
            "33 prompts",
        ),
        (
            "too long",
            raw_subscribe(1, &[&long]),
            ErrorCode::PromptTooLong,
            "257 bytes",
        ),
        (
            "empty",
            raw_subscribe(1, &[b""]),
            ErrorCode::EmptyPrompt,
            "empty",
        ),
        (
            "encoding",
            raw_subscribe(9, &[b"ok"]),
            ErrorCode::UnknownEncoding,
            "encoding 9",
        ),
        (
            "too large",
            vec![0; wire::MAX_CONTROL_LEN + 100],
            ErrorCode::MessageTooLarge,
            "exceeds",
        ),
    ];
    let dir = TempDir::new("malformed");
    let mut p = bind(&dir);
    let mut d = FakeDirectory::default();
    let mut good = RawClient::connect(&dir.join("maskd.sock"));
    good.subscribe(None, &["kept"]);
    p.service(&mut d);
    let ids = subscribed(&mut good);
    for (seq, (name, msg, code, text)) in cases.into_iter().enumerate() {
        let mut bad = RawClient::connect(&dir.join("maskd.sock"));
        bad.subscribe(None, &["held by the bad one"]);
        bad.send(&msg);
        p.service(&mut d);
        subscribed(&mut bad);
        let (got, message) = error_then_closed(&mut bad);
        assert_eq!(got, code as u16, "{name}: {message}");
        assert!(message.contains(text), "{name}: {message:?} lacks {text:?}");
        p.service(&mut d);
        assert_eq!(
            d.refs("held by the bad one"),
            0,
            "{name}: its prompts were released"
        );
        assert_eq!(p.stats().clients, 1, "{name}");
        p.publish(&frame(seq as u64, 4, 4, &ids));
        assert_eq!(
            frame_of(&mut good).0,
            seq as u64,
            "{name}: the good client is still served"
        );
    }
}

#[test]
fn ping_gets_pong_with_the_same_token() {
    let dir = TempDir::new("ping");
    let mut p = bind(&dir);
    let mut c = RawClient::connect(&dir.join("maskd.sock"));
    let mut msg = Vec::new();
    wire::write_ping(&mut msg, 0x1234_5678_9abc_def0);
    c.send(&msg);
    p.service(&mut FakeDirectory::default());
    assert!(matches!(
        c.try_recv(),
        Got::Msg(ServerMessage::Pong {
            token: 0x1234_5678_9abc_def0
        })
    ));
}

#[test]
fn clients_beyond_max_clients_are_told_and_closed() {
    let dir = TempDir::new("max");
    let mut cfg = config(&dir.join("maskd.sock"));
    cfg.max_clients = 1;
    let mut p = Publisher::bind(&cfg, MaskEncoding::Rle).unwrap();
    let mut d = FakeDirectory::default();
    let mut first = RawClient::connect(&cfg.socket);
    p.service(&mut d);
    let mut second = RawClient::connect(&cfg.socket);
    p.service(&mut d);
    let (code, _) = error_then_closed(&mut second);
    assert_eq!(code, ErrorCode::TooManyClients as u16);
    assert_eq!((p.stats().clients, p.stats().rejected), (1, 1));
    first.subscribe(None, &["a"]);
    p.service(&mut d);
    subscribed(&mut first);
}

#[test]
fn prompts_are_released_on_resubscribe_and_disconnect() {
    let dir = TempDir::new("release");
    let mut p = bind(&dir);
    let mut d = FakeDirectory::default();
    let mut a = RawClient::connect(&dir.join("maskd.sock"));
    a.subscribe(None, &["cat", "dog", "cat"]);
    p.service(&mut d);
    let ids = subscribed(&mut a);
    assert_eq!(ids[0], ids[2], "the same text is the same id");
    assert_eq!((d.refs("cat"), d.refs("dog")), (2, 1));
    a.subscribe(None, &["dog", "bird"]);
    p.service(&mut d);
    subscribed(&mut a);
    assert_eq!((d.refs("cat"), d.refs("dog"), d.refs("bird")), (0, 1, 1));
    drop(a);
    p.service(&mut d);
    p.service(&mut d);
    assert_eq!(d.total_refs(), 0);
    assert_eq!(p.stats().clients, 0);
}

#[test]
fn a_rejected_prompt_keeps_the_old_subscription_and_the_client() {
    let dir = TempDir::new("rejected");
    let mut p = bind(&dir);
    let mut d = FakeDirectory::default();
    let mut a = RawClient::connect(&dir.join("maskd.sock"));
    a.subscribe(None, &["old"]);
    p.service(&mut d);
    let ids = subscribed(&mut a);
    a.subscribe(None, &["new", "reject me"]);
    p.service(&mut d);
    let Got::Msg(ServerMessage::Error {
        code,
        closing,
        message,
    }) = a.try_recv()
    else {
        panic!("no error")
    };
    assert_eq!((code, closing), (ErrorCode::PromptRejected as u16, false));
    assert!(String::from_utf8_lossy(message).contains("the directory is full"));
    assert_eq!((d.refs("old"), d.refs("new")), (1, 0));
    p.publish(&frame(9, 4, 4, &ids));
    assert_eq!(
        frame_of(&mut a).2.len(),
        1,
        "still subscribed to the old prompt"
    );
}

#[test]
fn bind_creates_the_directory_and_applies_the_mode_and_group() {
    let dir = TempDir::new("mode");
    let mut cfg = config(&dir.join("run/sub/maskd.sock"));
    cfg.mode = 0o640;
    cfg.group = Some("root".into());
    let p = Publisher::bind(&cfg, MaskEncoding::Rle).unwrap();
    let meta = std::fs::metadata(&cfg.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), 0);
    p.close();
    assert!(!cfg.socket.exists(), "close unlinks the socket");
}

#[test]
fn an_unknown_group_is_named_and_leaves_no_socket() {
    let dir = TempDir::new("group");
    let mut cfg = config(&dir.join("maskd.sock"));
    cfg.group = Some("no-such-group-maskd".into());
    let err = format!(
        "{:#}",
        Publisher::bind(&cfg, MaskEncoding::Rle).err().unwrap()
    );
    assert!(
        err.contains("publish.group") && err.contains("no-such-group-maskd"),
        "{err}"
    );
    assert!(!cfg.socket.exists());
}

#[test]
fn a_stale_socket_is_replaced() {
    let dir = TempDir::new("stale");
    let path = dir.join("maskd.sock");
    {
        let fd = crate::publish::sock::seqpacket(false).unwrap();
        let addr = nix::sys::socket::UnixAddr::new(path.as_path()).unwrap();
        nix::sys::socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).unwrap();
    } // closed without unlinking, like a crashed daemon
    assert!(path.exists());
    let mut p = Publisher::bind(&config(&path), MaskEncoding::Rle).unwrap();
    let mut c = RawClient::connect(&path);
    c.subscribe(None, &["a"]);
    p.service(&mut FakeDirectory::default());
    subscribed(&mut c);
}

#[test]
fn a_live_socket_is_refused_and_keeps_working() {
    let dir = TempDir::new("live");
    let mut first = bind(&dir);
    let err = format!(
        "{:#}",
        Publisher::bind(&config(&dir.join("maskd.sock")), MaskEncoding::Rle)
            .err()
            .unwrap()
    );
    assert!(err.contains("in use"), "{err}");
    // The refused bind stopped at the lock; the first daemon serves on regardless.
    let mut d = FakeDirectory::default();
    first.service(&mut d);
    first.service(&mut d);
    let mut c = RawClient::connect(&dir.join("maskd.sock"));
    c.subscribe(None, &["a"]);
    first.service(&mut d);
    subscribed(&mut c);
}

#[test]
fn a_file_in_the_way_is_not_replaced() {
    let dir = TempDir::new("file");
    let path = dir.join("maskd.sock");
    std::fs::write(&path, b"precious").unwrap();
    let err = format!(
        "{:#}",
        Publisher::bind(&config(&path), MaskEncoding::Rle)
            .err()
            .unwrap()
    );
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

#[test]
fn close_says_goodbye() {
    let dir = TempDir::new("close");
    let mut p = bind(&dir);
    let mut c = RawClient::connect(&dir.join("maskd.sock"));
    p.service(&mut FakeDirectory::default());
    p.close();
    let (code, _) = error_then_closed(&mut c);
    assert_eq!(code, ErrorCode::ShuttingDown as u16);
}

#[test]
fn from_fd_serves_a_passed_listener_and_leaves_its_path() {
    let dir = TempDir::new("fromfd");
    let path = dir.join("activated.sock");
    let fd = crate::publish::sock::seqpacket(false).unwrap();
    let addr = nix::sys::socket::UnixAddr::new(path.as_path()).unwrap();
    nix::sys::socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).unwrap();
    nix::sys::socket::listen(&fd, nix::sys::socket::Backlog::new(4).unwrap()).unwrap();
    let mut p =
        Publisher::from_fd(fd, &config(&dir.join("unused")), MaskEncoding::Bitmask).unwrap();
    assert_eq!(p.socket_path(), None);
    let mut c = RawClient::connect(&path);
    c.subscribe(None, &["a"]);
    p.service(&mut FakeDirectory::default());
    let Got::Msg(ServerMessage::Subscribed { encoding, .. }) = c.try_recv() else {
        panic!("no reply")
    };
    assert_eq!(
        encoding,
        MaskEncoding::Bitmask,
        "the default encoding applies"
    );
    drop(c);
    p.close();
    assert!(
        path.exists(),
        "a passed socket's path is systemd's to remove"
    );
}

#[test]
fn from_fd_rejects_a_stream_socket() {
    let fd = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Stream,
        nix::sys::socket::SockFlag::empty(),
        None,
    )
    .unwrap();
    let dir = TempDir::new("stream");
    let err = format!(
        "{:#}",
        Publisher::from_fd(fd, &config(&dir.join("x")), MaskEncoding::Rle)
            .err()
            .unwrap()
    );
    assert!(err.contains("SOCK_SEQPACKET"), "{err}");
}

#[test]
fn the_listener_fd_polls_readable_when_a_client_waits() {
    let dir = TempDir::new("pollable");
    let p = bind(&dir);
    assert!(!crate::publish::sock::wait_readable(p.as_fd(), std::time::Duration::ZERO).unwrap());
    let _c = RawClient::connect(&dir.join("maskd.sock"));
    assert!(crate::publish::sock::wait_readable(p.as_fd(), std::time::Duration::ZERO).unwrap());
}
