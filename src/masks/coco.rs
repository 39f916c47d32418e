//! COCO compressed RLE, byte for byte what pycocotools' `rleToString` makes.
//!
//! Runs are counted in column-major (Fortran) order, first run background;
//! from the fourth count on (pycocotools' `i > 2`), each count is stored as the
//! difference to the count two places before. Each value is written as 5-bit
//! groups, low first, as characters `'0' + (group | 0x20 if more follow)`; the
//! last group's bit 0x10 is its sign. `pycocotools.mask.decode({'size': [h, w],
//! 'counts': s})` reproduces the mask. The string is ASCII with no terminator.

use super::error::{check_encode_len, pixels_for_decode, DecodeError, EncodeError};

/// More than 12 groups (60 bits) cannot come from a mask within `MAX_PIXELS`
/// and would overflow the sign extension.
const MAX_GROUPS: usize = 12;

/// Appends the COCO RLE string of `bits` (`width * height` bytes, row-major,
/// nonzero = foreground) to `out`. Allocates only if `out` must grow.
pub fn encode(bits: &[u8], width: u32, height: u32, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    check_encode_len(bits, width, height)?;
    let (w, h) = (width as usize, height as usize);
    let mut counts = CountWriter::default();
    let mut value = 0u8;
    let mut run = 0u64;
    for x in 0..w {
        for y in 0..h {
            let b = u8::from(bits[y * w + x] != 0);
            if b != value {
                counts.push(out, run);
                run = 0;
                value = b;
            }
            run += 1;
        }
    }
    // pycocotools always writes the last run, so a 0-pixel mask is "0".
    counts.push(out, run);
    Ok(())
}

/// Delta state of `rleToString`: the count index and the two counts before it.
#[derive(Default)]
struct CountWriter {
    index: usize,
    prev: [u64; 2],
}

impl CountWriter {
    fn push(&mut self, out: &mut Vec<u8>, count: u64) {
        let mut x = count as i64;
        if self.index > 2 {
            x -= self.prev[0] as i64;
        }
        loop {
            let mut c = (x & 0x1f) as u8;
            x >>= 5; // arithmetic shift, as C's `long >>=` on the platforms pycocotools runs on
            let more = if c & 0x10 != 0 { x != -1 } else { x != 0 };
            if more {
                c |= 0x20;
            }
            out.push(c + b'0');
            if !more {
                break;
            }
        }
        self.prev = [self.prev[1], count];
        self.index += 1;
    }
}

/// Decodes a COCO RLE string into `out` (cleared, then `width * height` bytes
/// of 0/1, row-major). Stricter than pycocotools: counts must sum to the size.
pub fn decode(data: &[u8], width: u32, height: u32, out: &mut Vec<u8>) -> Result<(), DecodeError> {
    let len = pixels_for_decode(width, height)?;
    let (w, h) = (width as usize, height as usize);
    out.clear();
    out.resize(len, 0);
    let mut prev = [0i64; 2];
    let mut index = 0;
    let mut pos = 0u64;
    let mut p = 0;
    while p < data.len() {
        let start = p;
        let mut x = 0i64;
        let mut k = 0;
        loop {
            let Some(&byte) = data.get(p) else {
                return Err(DecodeError::TruncatedCocoCount { offset: start });
            };
            if !(b'0'..=b'o').contains(&byte) {
                return Err(DecodeError::BadCocoChar { offset: p, byte });
            }
            if k == MAX_GROUPS {
                return Err(DecodeError::CocoCountTooLong { offset: start });
            }
            let c = i64::from(byte - b'0');
            x |= (c & 0x1f) << (5 * k);
            p += 1;
            k += 1;
            if c & 0x20 == 0 {
                if c & 0x10 != 0 {
                    x |= -1i64 << (5 * k);
                }
                break;
            }
        }
        if index > 2 {
            x += prev[0];
        }
        if x < 0 {
            return Err(DecodeError::NegativeCocoCount {
                index,
                offset: start,
                value: x,
            });
        }
        let run = x as u64;
        if run > len as u64 - pos {
            return Err(DecodeError::RunPastEnd {
                offset: start,
                run,
                pos,
                len: len as u64,
            });
        }
        if index % 2 == 1 {
            // pos..pos+run are within len, checked above; column-major to row-major.
            for q in pos as usize..(pos + run) as usize {
                out[(q % h) * w + q / h] = 1;
            }
        }
        pos += run;
        prev = [prev[1], x];
        index += 1;
    }
    if pos != len as u64 {
        return Err(DecodeError::RunsTooShort {
            covered: pos,
            len: len as u64,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masks::test_util::mask_strategy;
    use proptest::prelude::*;

    fn enc(bits: &[u8], w: u32, h: u32) -> String {
        let mut out = Vec::new();
        encode(bits, w, h, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// Row-major mask of `h` rows and `w` columns with `rects` (y0..y1, x0..x1) set.
    fn rects(h: usize, w: usize, rects: &[(usize, usize, usize, usize)]) -> Vec<u8> {
        let mut bits = vec![0; w * h];
        for &(y0, y1, x0, x1) in rects {
            for y in y0..y1 {
                for x in x0..x1 {
                    bits[y * w + x] = 1;
                }
            }
        }
        bits
    }

    /// (height, width, mask, string) computed with pycocotools 2.0
    /// (`mask.encode(np.asfortranarray(m))['counts']`) and checked to decode back.
    fn pycocotools_vectors() -> Vec<(u32, u32, Vec<u8>, &'static str)> {
        let mut eye = vec![0; 16];
        for i in 0..4 {
            eye[i * 4 + i] = 1;
        }
        vec![
            (3, 4, vec![0; 12], "<"),
            (3, 4, vec![1; 12], "0<"),
            (4, 4, eye, "01400000"),
            (
                3,
                5,
                vec![1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 1],
                "01111OO040",
            ),
            (
                64,
                48,
                rects(64, 48, &[(10, 40, 5, 30), (50, 60, 40, 47)]),
                "Z:n0R100000000000000000000000000000000000000000000000Xe0\\O\\[O00000000000>",
            ),
            (
                300,
                200,
                rects(
                    300,
                    200,
                    &[(0, 300, 0, 3), (100, 105, 150, 151), (0, 300, 199, 200)],
                ),
                "0Tl0XU[1QTOkRSOW9",
            ),
        ]
    }

    #[test]
    fn matches_pycocotools() {
        for (h, w, bits, expected) in pycocotools_vectors() {
            assert_eq!(enc(&bits, w, h), expected, "{w}x{h}");
            let mut out = Vec::new();
            decode(expected.as_bytes(), w, h, &mut out).unwrap();
            assert_eq!(out, bits, "{w}x{h}");
        }
    }

    #[test]
    fn zero_pixels_is_a_single_zero() {
        assert_eq!(enc(&[], 0, 5), "0");
        let mut out = vec![1];
        decode(b"0", 0, 5, &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn decode_errors() {
        let mut out = Vec::new();
        assert_eq!(
            decode(b"4p", 2, 2, &mut out),
            Err(DecodeError::BadCocoChar {
                offset: 1,
                byte: b'p'
            })
        );
        // 0x20 set: another group must follow.
        assert_eq!(
            decode(b"1P", 2, 2, &mut out),
            Err(DecodeError::TruncatedCocoCount { offset: 1 })
        );
        // 0x10 set on the last group: -16.
        assert_eq!(
            decode(b"@", 2, 2, &mut out),
            Err(DecodeError::NegativeCocoCount {
                index: 0,
                offset: 0,
                value: -16
            })
        );
        assert_eq!(
            decode(b"5", 2, 2, &mut out),
            Err(DecodeError::RunPastEnd {
                offset: 0,
                run: 5,
                pos: 0,
                len: 4
            })
        );
        assert_eq!(
            decode(b"12", 2, 2, &mut out),
            Err(DecodeError::RunsTooShort { covered: 3, len: 4 })
        );
        assert_eq!(
            decode(&[b'P'; 13], 2, 2, &mut out),
            Err(DecodeError::CocoCountTooLong { offset: 0 })
        );
    }

    proptest! {
        #[test]
        fn round_trip((w, h, bits) in mask_strategy()) {
            let data = enc(&bits, w, h);
            let mut out = Vec::new();
            decode(data.as_bytes(), w, h, &mut out).unwrap();
            prop_assert_eq!(out, bits);
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
