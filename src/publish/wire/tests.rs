//! Layout tests: byte offsets fixed by docs/PROTOCOL.md, and every rejection.

use super::*;
use crate::config::MaskEncoding;

fn header() -> FrameHeader {
    FrameHeader {
        seq: 0x0102030405060708,
        capture_ns: 11,
        publish_ns: 12,
        frame_width: 640,
        frame_height: 480,
        mask_width: 160,
        mask_height: 120,
        mask_count: 0,
        encoding: MaskEncoding::CocoRle,
        dropped: 7,
    }
}

#[test]
fn frame_layout_matches_the_document() {
    let mut out = Vec::new();
    header().write(&mut out);
    assert_eq!(out.len(), FRAME_HEADER_LEN);
    assert_eq!(&out[0..4], b"MSKD");
    assert_eq!(out[4..6], [1, 0]);
    assert_eq!(out[6..8], [1, 0]);
    assert_eq!(out[8..16], 0x0102030405060708u64.to_le_bytes());
    assert_eq!(out[32..36], 640u32.to_le_bytes());
    assert_eq!(out[44..48], 120u32.to_le_bytes());
    assert_eq!(out[MASK_COUNT_OFFSET..50], [0, 0]);
    assert_eq!(out[50], 2, "coco");
    assert_eq!(out[52..56], 7u32.to_le_bytes());
}

#[test]
fn frame_round_trip() {
    let mut out = Vec::new();
    let mut h = header();
    h.mask_count = 2;
    h.write(&mut out);
    write_mask(&mut out, 5, 0.5, 0.25, b"abc");
    write_mask(&mut out, 9, 1.0, 0.0, b"");
    assert_eq!(
        out[FRAME_HEADER_LEN..FRAME_HEADER_LEN + 4],
        5u32.to_le_bytes()
    );
    assert_eq!(
        out[FRAME_HEADER_LEN + 12..FRAME_HEADER_LEN + 16],
        3u32.to_le_bytes()
    );
    let ServerMessage::Frame(parsed, masks) = parse_server(&out).unwrap() else {
        panic!("not a frame");
    };
    assert_eq!(parsed, h);
    let masks: Vec<_> = masks.iter().collect();
    assert_eq!(
        masks,
        [
            WireMask {
                prompt_id: 5,
                score: 0.5,
                coverage: 0.25,
                payload: b"abc"
            },
            WireMask {
                prompt_id: 9,
                score: 1.0,
                coverage: 0.0,
                payload: b""
            },
        ]
    );
}

#[test]
fn frame_with_short_mask_is_truncated() {
    let mut out = Vec::new();
    let mut h = header();
    h.mask_count = 1;
    h.write(&mut out);
    write_mask(&mut out, 5, 0.5, 0.25, b"abc");
    out.pop();
    assert_eq!(
        parse_server(&out),
        Err(WireError::Truncated {
            what: "mask",
            offset: 72,
            end: 75,
            len: 74
        })
    );
}

#[test]
fn replies_round_trip() {
    let mut out = Vec::new();
    write_subscribed(&mut out, MaskEncoding::Bitmask, &[3, 1, 3]);
    let ServerMessage::Subscribed { encoding, ids } = parse_server(&out).unwrap() else {
        panic!("not subscribed");
    };
    assert_eq!(encoding, MaskEncoding::Bitmask);
    assert_eq!(ids.iter().collect::<Vec<_>>(), [3, 1, 3]);

    write_pong(&mut out, 0xdead_beef);
    assert_eq!(
        parse_server(&out),
        Ok(ServerMessage::Pong { token: 0xdead_beef })
    );
    write_unsubscribed(&mut out);
    assert_eq!(parse_server(&out), Ok(ServerMessage::Unsubscribed));
}

#[test]
fn error_text_is_cut_at_a_char_boundary() {
    let mut out = Vec::new();
    let text = "é".repeat(MAX_ERROR_TEXT); // 2 bytes each
    write_error(&mut out, ErrorCode::PromptRejected, false, &text);
    let Ok(ServerMessage::Error {
        code,
        closing,
        message,
    }) = parse_server(&out)
    else {
        panic!("not an error");
    };
    assert_eq!((code, closing), (ErrorCode::PromptRejected as u16, false));
    assert_eq!(message.len(), MAX_ERROR_TEXT);
    assert!(std::str::from_utf8(message).is_ok());
}

#[test]
fn error_of_another_version_is_readable() {
    let mut out = Vec::new();
    write_error(&mut out, ErrorCode::UnsupportedVersion, true, "speak 7");
    out[4] = 7;
    out.extend_from_slice(b"future field");
    let Ok(ServerMessage::Error { message, .. }) = parse_server(&out) else {
        panic!("not an error");
    };
    assert_eq!(message, b"speak 7");
    out[6] = MessageType::Pong as u8;
    assert_eq!(
        parse_server(&out),
        Err(WireError::UnsupportedVersion { found: 7 })
    );
}

#[test]
fn subscribe_round_trip() {
    let mut out = Vec::new();
    write_subscribe(&mut out, Some(MaskEncoding::Rle), &["red circle", "ß"]).unwrap();
    assert_eq!(out[8..12], [1, 0, 2, 0]);
    let Ok(Control::Subscribe { encoding, prompts }) = parse_control(&out) else {
        panic!("not subscribe");
    };
    assert_eq!(encoding, Some(MaskEncoding::Rle));
    assert_eq!(prompts.iter().collect::<Vec<_>>(), ["red circle", "ß"]);

    write_subscribe(&mut out, None, &[]).unwrap();
    let Ok(Control::Subscribe {
        encoding: None,
        prompts,
    }) = parse_control(&out)
    else {
        panic!("not subscribe with default encoding");
    };
    assert!(prompts.is_empty());
}

#[test]
fn ping_and_unsubscribe_parse() {
    let mut out = Vec::new();
    write_ping(&mut out, 42);
    assert_eq!(parse_control(&out), Ok(Control::Ping { token: 42 }));
    write_unsubscribe(&mut out);
    assert_eq!(parse_control(&out), Ok(Control::Unsubscribe));
}

/// A SUBSCRIBE with one prompt of raw bytes `text` and encoding byte `enc`.
fn raw_subscribe(enc: u8, texts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    write_prefix(&mut out, MessageType::Subscribe);
    out.extend_from_slice(&[enc, 0]);
    out.extend_from_slice(&(texts.len() as u16).to_le_bytes());
    for t in texts {
        out.extend_from_slice(&(t.len() as u16).to_le_bytes());
        out.extend_from_slice(t);
    }
    out
}

#[test]
fn control_rejections() {
    assert_eq!(parse_control(b"MSKD"), Err(WireError::TooShort { len: 4 }));
    assert_eq!(
        parse_control(b"MASK\x01\x00\x03\x01"),
        Err(WireError::BadMagic { found: *b"MASK" })
    );
    assert_eq!(
        parse_control(b"MSKD\x02\x00\x03\x01"),
        Err(WireError::UnsupportedVersion { found: 2 })
    );
    assert_eq!(
        parse_control(b"MSKD\x01\x00\x99\x01"),
        Err(WireError::UnknownType { found: 0x0199 })
    );
    assert_eq!(
        parse_control(b"MSKD\x01\x00\x01\x00"),
        Err(WireError::UnknownType { found: 1 }),
        "FRAME is server->client only"
    );
    assert_eq!(
        parse_control(b"MSKD\x01\x00\x03\x01\x01\x02"),
        Err(WireError::Truncated {
            what: "PING",
            offset: 8,
            end: 16,
            len: 10
        })
    );
    assert_eq!(
        parse_control(b"MSKD\x01\x00\x02\x01x"),
        Err(WireError::TrailingBytes {
            what: "UNSUBSCRIBE",
            extra: 1
        })
    );
    assert_eq!(
        parse_control(&raw_subscribe(4, &[])),
        Err(WireError::UnknownEncoding { found: 4 })
    );
    assert_eq!(
        parse_control(&raw_subscribe(1, &[b"ok", b""])),
        Err(WireError::EmptyPrompt { index: 1 })
    );
    assert_eq!(
        parse_control(&raw_subscribe(1, &[b"ok", b"\xffx"])),
        Err(WireError::BadUtf8 {
            index: 1,
            valid_up_to: 0
        })
    );
    let long = [b'a'; MAX_PROMPT_BYTES + 1];
    assert_eq!(
        parse_control(&raw_subscribe(1, &[&long])),
        Err(WireError::PromptTooLong {
            index: 0,
            len: MAX_PROMPT_BYTES + 1
        })
    );
    let many = vec![&b"x"[..]; MAX_PROMPTS + 1];
    assert_eq!(
        parse_control(&raw_subscribe(1, &many)),
        Err(WireError::TooManyPrompts {
            count: MAX_PROMPTS + 1
        })
    );
    let mut truncated = raw_subscribe(1, &[b"abc"]);
    truncated.pop();
    assert_eq!(
        parse_control(&truncated),
        Err(WireError::Truncated {
            what: "SUBSCRIBE",
            offset: 14,
            end: 17,
            len: 16
        })
    );
    let huge = vec![0; MAX_CONTROL_LEN + 1];
    assert_eq!(
        parse_control(&huge),
        Err(WireError::MessageTooLarge {
            len: MAX_CONTROL_LEN + 1,
            max: MAX_CONTROL_LEN
        })
    );
}

#[test]
fn the_largest_valid_subscribe_fits_the_control_limit() {
    let text = "a".repeat(MAX_PROMPT_BYTES);
    let prompts = vec![text.as_str(); MAX_PROMPTS];
    let mut out = Vec::new();
    write_subscribe(&mut out, None, &prompts).unwrap();
    assert!(out.len() <= MAX_CONTROL_LEN, "{}", out.len());
    assert!(parse_control(&out).is_ok());
}

#[test]
fn write_subscribe_checks_limits() {
    let mut out = Vec::new();
    assert_eq!(
        write_subscribe(&mut out, None, &[""]),
        Err(WireError::EmptyPrompt { index: 0 })
    );
    let many = vec!["x"; MAX_PROMPTS + 1];
    assert_eq!(
        write_subscribe(&mut out, None, &many),
        Err(WireError::TooManyPrompts {
            count: MAX_PROMPTS + 1
        })
    );
}

#[test]
fn codes_round_trip() {
    for e in [
        MaskEncoding::Rle,
        MaskEncoding::CocoRle,
        MaskEncoding::Bitmask,
    ] {
        assert_eq!(encoding_from_code(encoding_code(e)), Some(e));
    }
    assert_eq!(encoding_from_code(0), None);
    for code in 1..=13 {
        assert_eq!(ErrorCode::from_u16(code).map(|c| c as u16), Some(code));
    }
    for ty in [
        0x0001, 0x0002, 0x0003, 0x0004, 0x0005, 0x0101, 0x0102, 0x0103,
    ] {
        assert_eq!(MessageType::from_u16(ty).map(|t| t as u16), Some(ty));
    }
}
