//! Masks: their encodings for the wire.
//!
//! Owns the pure encode/decode functions (row-major varint RLE, COCO RLE, bitmask) of
//! the engine's masks (`crate::contracts::Mask`). Knows nothing of sockets.
//! Encoders append to a caller's reused buffer; decoders clear and fill one.

pub mod bitmask;
pub mod coco;
mod error;
pub mod rle;
#[cfg(test)]
pub(crate) mod test_util;

pub use error::{DecodeError, EncodeError, MAX_PIXELS};

use crate::config::MaskEncoding;

/// Appends `bits` (`width * height` bytes, row-major, nonzero = foreground)
/// to `out` in `encoding`.
pub fn encode(
    encoding: MaskEncoding,
    bits: &[u8],
    width: u32,
    height: u32,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    match encoding {
        MaskEncoding::Rle => rle::encode(bits, width, height, out),
        MaskEncoding::CocoRle => coco::encode(bits, width, height, out),
        MaskEncoding::Bitmask => bitmask::encode(bits, width, height, out),
    }
}

/// Decodes a payload in `encoding` into `out` (cleared, then `width * height` bytes of 0/1).
pub fn decode(
    encoding: MaskEncoding,
    data: &[u8],
    width: u32,
    height: u32,
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    match encoding {
        MaskEncoding::Rle => rle::decode(data, width, height, out),
        MaskEncoding::CocoRle => coco::decode(data, width, height, out),
        MaskEncoding::Bitmask => bitmask::decode(data, width, height, out),
    }
}
