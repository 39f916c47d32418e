//! Raw bitmask: row-major, 1 bit per pixel, most significant bit first, each
//! row padded to a whole byte with zero bits (decoders ignore the padding).
//!
//! Fixed size, `ceil(width / 8) * height` bytes: the encoding to pick when
//! masks are busy (RLE grows with edges) or when a client wants O(1) pixel access.

use super::error::{check_encode_len, pixels_for_decode, DecodeError, EncodeError};

/// Bytes in one encoded row.
pub fn row_bytes(width: u32) -> usize {
    (width as usize).div_ceil(8)
}

/// Appends the bitmask of `bits` (`width * height` bytes, row-major, nonzero =
/// foreground) to `out`. Allocates only if `out` must grow.
pub fn encode(bits: &[u8], width: u32, height: u32, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    check_encode_len(bits, width, height)?;
    if width == 0 {
        return Ok(());
    }
    for row in bits.chunks_exact(width as usize) {
        for chunk in row.chunks(8) {
            let mut byte = 0u8;
            for (i, &b) in chunk.iter().enumerate() {
                byte |= u8::from(b != 0) << (7 - i);
            }
            out.push(byte);
        }
    }
    Ok(())
}

/// Decodes a bitmask into `out` (cleared, then `width * height` bytes of 0/1).
pub fn decode(data: &[u8], width: u32, height: u32, out: &mut Vec<u8>) -> Result<(), DecodeError> {
    let len = pixels_for_decode(width, height)?;
    let stride = row_bytes(width);
    let expected = stride as u64 * u64::from(height);
    if data.len() as u64 != expected {
        return Err(DecodeError::BitmaskLength {
            len: data.len(),
            width,
            height,
            expected,
        });
    }
    out.clear();
    out.reserve(len);
    if stride == 0 {
        return Ok(());
    }
    for row in data.chunks_exact(stride) {
        for x in 0..width as usize {
            out.push((row[x / 8] >> (7 - x % 8)) & 1);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masks::test_util::mask_strategy;
    use proptest::prelude::*;

    #[test]
    fn known_vector() {
        // 10 wide: 2 bytes per row, last 6 bits padding.
        let bits = [
            1, 0, 0, 0, 0, 0, 0, 1, 1, 1, /* row 2 */ 0, 1, 0, 0, 0, 0, 0, 0, 0, 1,
        ];
        let mut out = Vec::new();
        encode(&bits, 10, 2, &mut out).unwrap();
        assert_eq!(out, [0b1000_0001, 0b1100_0000, 0b0100_0000, 0b0100_0000]);
        let mut back = Vec::new();
        decode(
            &[0b1000_0001, 0b1111_1111, 0b0100_0000, 0b0100_0000],
            10,
            2,
            &mut back,
        )
        .unwrap();
        assert_eq!(back, bits, "padding bits are ignored");
    }

    #[test]
    fn wrong_length_is_rejected() {
        assert_eq!(
            decode(&[0; 3], 10, 2, &mut Vec::new()),
            Err(DecodeError::BitmaskLength {
                len: 3,
                width: 10,
                height: 2,
                expected: 4
            })
        );
    }

    proptest! {
        #[test]
        fn round_trip((w, h, bits) in mask_strategy()) {
            let mut data = Vec::new();
            encode(&bits, w, h, &mut data).unwrap();
            prop_assert_eq!(data.len(), row_bytes(w) * h as usize);
            let mut out = Vec::new();
            decode(&data, w, h, &mut out).unwrap();
            prop_assert_eq!(out, bits);
        }
    }
}
