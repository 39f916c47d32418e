//! maskd's default encoding: row-major run lengths as LEB128 varints.
//!
//! Runs alternate background, foreground, background, ...; the first run is
//! background and may be 0 (mask starts with foreground); runs sum to
//! `width * height`. A 0-pixel mask encodes as nothing. Owns only the byte
//! format; the wire framing around it lives in `publish::wire`.

use super::error::{check_encode_len, pixels_for_decode, DecodeError, EncodeError};

/// Appends the RLE encoding of `bits` (`width * height` bytes, row-major,
/// nonzero = foreground) to `out`. Allocates only if `out` must grow.
pub fn encode(bits: &[u8], width: u32, height: u32, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    check_encode_len(bits, width, height)?;
    let mut rest = bits;
    let mut foreground = false;
    while !rest.is_empty() {
        // `position` over a plain slice compiles to a tight scan; masks are mostly long runs.
        let run = if foreground {
            rest.iter().position(|&b| b == 0)
        } else {
            rest.iter().position(|&b| b != 0)
        }
        .unwrap_or(rest.len());
        push_varint(out, run as u64);
        rest = &rest[run..];
        foreground = !foreground;
    }
    Ok(())
}

/// Decodes `data` into `out` (cleared, then `width * height` bytes of 0/1).
pub fn decode(data: &[u8], width: u32, height: u32, out: &mut Vec<u8>) -> Result<(), DecodeError> {
    let len = pixels_for_decode(width, height)?;
    out.clear();
    out.reserve(len);
    let mut offset = 0;
    let mut value = 0u8;
    while offset < data.len() {
        let (run, used) = read_varint(&data[offset..]).map_err(|e| e.at(offset))?;
        let pos = out.len() as u64;
        if run > len as u64 - pos {
            return Err(DecodeError::RunPastEnd {
                offset,
                run,
                pos,
                len: len as u64,
            });
        }
        // Bounded by the check above, so the cast cannot truncate.
        out.resize(out.len() + run as usize, value);
        offset += used;
        value ^= 1;
    }
    if out.len() != len {
        return Err(DecodeError::RunsTooShort {
            covered: out.len() as u64,
            len: len as u64,
        });
    }
    Ok(())
}

/// Appends `v` as an unsigned LEB128 varint (7 bits per byte, low first, high bit = more).
pub fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A varint error before its position in the payload is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarintError {
    Truncated,
    TooLong,
}

impl VarintError {
    fn at(self, offset: usize) -> DecodeError {
        match self {
            VarintError::Truncated => DecodeError::TruncatedVarint { offset },
            VarintError::TooLong => DecodeError::VarintTooLong { offset },
        }
    }
}

/// Reads one unsigned LEB128 varint from the start of `data`: (value, bytes used).
pub fn read_varint(data: &[u8]) -> Result<(u64, usize), VarintError> {
    let mut v = 0u64;
    for (i, &b) in data.iter().enumerate() {
        let shift = 7 * i as u32;
        // The 10th byte may carry only the top bit of a u64.
        if i == 9 && b > 1 || i > 9 {
            return Err(VarintError::TooLong);
        }
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok((v, i + 1));
        }
    }
    Err(VarintError::Truncated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masks::test_util::mask_strategy;
    use proptest::prelude::*;

    fn enc(bits: &[u8], w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::new();
        encode(bits, w, h, &mut out).unwrap();
        out
    }

    #[test]
    fn known_vectors() {
        assert_eq!(enc(&[0, 0, 1, 1, 1, 0], 3, 2), [2, 3, 1]);
        assert_eq!(enc(&[1, 1, 0, 0], 2, 2), [0, 2, 2]);
        assert_eq!(enc(&[0; 4], 2, 2), [4]);
        assert_eq!(enc(&[1; 4], 4, 1), [0, 4]);
        assert_eq!(enc(&[], 0, 7), [] as [u8; 0]);
        // 300 = 0b10_0101100 -> 0xac 0x02
        let mut bits = vec![0u8; 300];
        bits.extend([1, 1]);
        assert_eq!(enc(&bits, 302, 1), [0xac, 0x02, 2]);
    }

    #[test]
    fn nonzero_bytes_are_foreground() {
        assert_eq!(enc(&[0, 7, 255, 0], 4, 1), [1, 2, 1]);
    }

    #[test]
    fn encode_appends() {
        let mut out = vec![9];
        encode(&[1], 1, 1, &mut out).unwrap();
        assert_eq!(out, [9, 0, 1]);
    }

    #[test]
    fn encode_rejects_wrong_size() {
        let err = encode(&[0; 5], 2, 2, &mut Vec::new()).unwrap_err();
        assert_eq!(
            err,
            EncodeError::SizeMismatch {
                len: 5,
                width: 2,
                height: 2,
                expected: 4
            }
        );
    }

    #[test]
    fn decode_errors() {
        let mut out = Vec::new();
        assert_eq!(
            decode(&[2, 0x80], 2, 2, &mut out),
            Err(DecodeError::TruncatedVarint { offset: 1 })
        );
        assert_eq!(
            decode(&[2, 3], 2, 2, &mut out),
            Err(DecodeError::RunPastEnd {
                offset: 1,
                run: 3,
                pos: 2,
                len: 4
            })
        );
        assert_eq!(
            decode(&[1, 2], 2, 2, &mut out),
            Err(DecodeError::RunsTooShort { covered: 3, len: 4 })
        );
        assert_eq!(
            decode(&[0xff; 11], 2, 2, &mut out),
            Err(DecodeError::VarintTooLong { offset: 0 })
        );
        assert_eq!(
            decode(&[], 10_000, 10_000, &mut out),
            Err(DecodeError::TooLarge {
                width: 10_000,
                height: 10_000,
                max: 1 << 26
            })
        );
    }

    #[test]
    fn decode_accepts_zero_runs_inside() {
        let mut out = Vec::new();
        decode(&[1, 0, 1, 2], 2, 2, &mut out).unwrap();
        assert_eq!(out, [0, 0, 1, 1]);
    }

    #[test]
    fn varint_extremes() {
        let mut out = Vec::new();
        push_varint(&mut out, u64::MAX);
        assert_eq!(out.len(), 10);
        assert_eq!(read_varint(&out), Ok((u64::MAX, 10)));
        out[9] = 2; // would be bit 64
        assert_eq!(read_varint(&out), Err(VarintError::TooLong));
    }

    proptest! {
        #[test]
        fn round_trip((w, h, bits) in mask_strategy()) {
            let data = enc(&bits, w, h);
            let mut out = vec![7; 3];
            decode(&data, w, h, &mut out).unwrap();
            prop_assert_eq!(out, bits);
        }

        #[test]
        fn varint_round_trip(v in any::<u64>()) {
            let mut out = Vec::new();
            push_varint(&mut out, v);
            prop_assert_eq!(read_varint(&out), Ok((v, out.len())));
        }

        #[test]
        fn decode_never_panics(data in prop::collection::vec(any::<u8>(), 0..64), w in 0u32..20, h in 0u32..20) {
            let mut out = Vec::new();
            if decode(&data, w, h, &mut out).is_ok() {
                prop_assert_eq!(out.len(), (w * h) as usize);
            }
        }
    }
}
