//! The client library's side: `wire::parse_server` on a server->client message, then,
//! for a FRAME, `FrameMessage::decode` (what `Client::recv` does) through the three
//! mask decoders. A corrupt or hostile message must give an error, never a panic or
//! an allocation beyond what the message's limits allow.

#![no_main]

use libfuzzer_sys::fuzz_target;
use maskd::publish::wire::{self, ServerMessage};
use maskd::publish::FrameMessage;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = wire::parse_server(data) else {
        return;
    };
    match msg {
        ServerMessage::Frame(header, masks) => {
            assert_eq!(masks.iter().count(), usize::from(header.mask_count));
            if let Ok(frame) = FrameMessage::decode(header, &masks) {
                let pixels = header.mask_width as usize * header.mask_height as usize;
                for m in &frame.masks {
                    assert_eq!(m.bits.len(), pixels);
                    assert!(m.bits.iter().all(|&b| b <= 1));
                }
            }
        }
        ServerMessage::Subscribed { ids, .. } => {
            let _ = ids.iter().count();
        }
        ServerMessage::Unsubscribed | ServerMessage::Pong { .. } | ServerMessage::Error { .. } => {}
    }
});
