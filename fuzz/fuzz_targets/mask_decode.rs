//! The mask decoders (`masks::rle`, `masks::coco`, `masks::bitmask`) on any payload and
//! size. Input: encoding selector (1 byte), width and height (u16 LE each), payload.
//! A decoded mask must have `width * height` pixels of 0/1 and re-encode to a payload
//! that decodes to the same mask.

#![no_main]

use libfuzzer_sys::fuzz_target;
use maskd::config::MaskEncoding;
use maskd::masks;

fuzz_target!(|data: &[u8]| {
    let Some((head, payload)) = data.split_at_checked(5) else {
        return;
    };
    let encoding = match head[0] % 3 {
        0 => MaskEncoding::Rle,
        1 => MaskEncoding::CocoRle,
        _ => MaskEncoding::Bitmask,
    };
    let width = u32::from(u16::from_le_bytes([head[1], head[2]]));
    let height = u32::from(u16::from_le_bytes([head[3], head[4]]));
    let pixels = u64::from(width) * u64::from(height);
    let mut bits = Vec::new();
    // u16 sides reach past MAX_PIXELS: those sizes must be refused, whatever the payload.
    if pixels > masks::MAX_PIXELS {
        let refused = masks::decode(encoding, payload, width, height, &mut bits);
        assert!(matches!(refused, Err(masks::DecodeError::TooLarge { .. })));
        return;
    }
    // Below it the decoders do the same arithmetic at every size, and a mask of tens of
    // millions of pixels takes milliseconds to fill: such inputs would slow the fuzzer
    // ten times over and test nothing new.
    if pixels > 1 << 20 {
        return;
    }
    if masks::decode(encoding, payload, width, height, &mut bits).is_err() {
        return;
    }
    assert_eq!(bits.len() as u64, u64::from(width) * u64::from(height));
    assert!(bits.iter().all(|&b| b <= 1));
    let mut encoded = Vec::new();
    if let Err(e) = masks::encode(encoding, &bits, width, height, &mut encoded) {
        panic!("decoded mask does not re-encode: {e}");
    }
    let mut again = Vec::new();
    if let Err(e) = masks::decode(encoding, &encoded, width, height, &mut again) {
        panic!("re-encoded mask does not decode: {e}");
    }
    assert_eq!(again, bits, "round trip changed the mask");
});
