//! The server's parser of client->server control messages (`wire::parse_control`),
//! the first code that sees a client's bytes. Any input must give `Ok` or a
//! `WireError`, never a panic; an accepted message must survive a round trip
//! through the client's writers unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use maskd::publish::wire::{self, Control};

fuzz_target!(|data: &[u8]| {
    let Ok(control) = wire::parse_control(data) else {
        return;
    };
    let mut out = Vec::new();
    match &control {
        Control::Subscribe { encoding, prompts } => {
            let texts: Vec<&str> = prompts.iter().collect();
            assert_eq!(texts.len(), prompts.len());
            if let Err(e) = wire::write_subscribe(&mut out, *encoding, &texts) {
                panic!("accepted SUBSCRIBE does not re-encode: {e}");
            }
        }
        Control::Unsubscribe => wire::write_unsubscribe(&mut out),
        Control::Ping { token } => wire::write_ping(&mut out, *token),
    }
    // The reserved byte of SUBSCRIBE (offset 9) is ignored on reading, written as 0.
    let mut expected = data.to_vec();
    if matches!(control, Control::Subscribe { .. }) {
        expected[9] = 0;
    }
    assert_eq!(out, expected, "re-encoded message differs");
    assert_eq!(wire::parse_control(&out).ok(), Some(control));
});
