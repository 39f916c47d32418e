//! Errors of the mask encoders and decoders, shared by all three encodings.
//!
//! Decoders run on bytes from a socket, so every variant carries the offending
//! value and where it was found; encoders only reject a buffer of the wrong size.

/// Largest mask a decoder accepts (8192 × 8192). A decoder trusts the sizes in a
/// frame header only this far, so a corrupt header cannot make it allocate gigabytes.
pub const MAX_PIXELS: u64 = 1 << 26;

/// Why a mask could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("mask buffer has {len} bytes, {width}x{height} needs {expected}")]
    SizeMismatch {
        len: usize,
        width: u32,
        height: u32,
        expected: u64,
    },
}

/// Why a payload could not be decoded into a mask.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("mask size {width}x{height} exceeds the limit of {max} pixels")]
    TooLarge { width: u32, height: u32, max: u64 },
    #[error("varint at byte {offset} is truncated")]
    TruncatedVarint { offset: usize },
    #[error("varint at byte {offset} is longer than 10 bytes or overflows 64 bits")]
    VarintTooLong { offset: usize },
    #[error(
        "run of {run} at byte {offset} starts at pixel {pos} and goes past the mask's {len} pixels"
    )]
    RunPastEnd {
        offset: usize,
        run: u64,
        pos: u64,
        len: u64,
    },
    #[error("runs cover {covered} pixels, the mask has {len}")]
    RunsTooShort { covered: u64, len: u64 },
    #[error("byte {offset} is {byte:#04x}, not a COCO RLE character ('0'..='o')")]
    BadCocoChar { offset: usize, byte: u8 },
    #[error("COCO count starting at byte {offset} is truncated")]
    TruncatedCocoCount { offset: usize },
    #[error("COCO count starting at byte {offset} is longer than 12 characters")]
    CocoCountTooLong { offset: usize },
    #[error("COCO count {index} (starting at byte {offset}) is negative: {value}")]
    NegativeCocoCount {
        index: usize,
        offset: usize,
        value: i64,
    },
    #[error("bitmask has {len} bytes, {width}x{height} needs {expected}")]
    BitmaskLength {
        len: usize,
        width: u32,
        height: u32,
        expected: u64,
    },
}

/// `width * height`, or the error a decoder reports for an absurd size.
pub(crate) fn pixels_for_decode(width: u32, height: u32) -> Result<usize, DecodeError> {
    let n = u64::from(width) * u64::from(height);
    if n > MAX_PIXELS {
        return Err(DecodeError::TooLarge {
            width,
            height,
            max: MAX_PIXELS,
        });
    }
    // MAX_PIXELS fits every usize maskd runs on (>= 32 bits).
    Ok(n as usize)
}

/// Checks that an encoder's input holds exactly `width * height` pixels.
pub(crate) fn check_encode_len(bits: &[u8], width: u32, height: u32) -> Result<(), EncodeError> {
    let expected = u64::from(width) * u64::from(height);
    if bits.len() as u64 != expected {
        return Err(EncodeError::SizeMismatch {
            len: bits.len(),
            width,
            height,
            expected,
        });
    }
    Ok(())
}
