"""Checks of the peer scripts' own pieces; run.sh and pipeline.sh run it first.

    bench/peer/.venv/bin/python bench/peer/test_common.py
"""

import sys
import unittest

import numpy as np

from common import (
    content_rect, frame_message, median, parse_frame, percentile, rle_decode, rle_encode,
)


class Rle(unittest.TestCase):
    def test_runs_start_with_background(self):
        # 3 off, 2 on, 1 off: maskd's masks::rle gives varints 3, 2, 1.
        self.assertEqual(rle_encode(np.array([0, 0, 0, 1, 1, 0])), bytes([3, 2, 1]))
        # Starting on: an empty background run first.
        self.assertEqual(rle_encode(np.array([1, 1, 0])), bytes([0, 2, 1]))
        self.assertEqual(rle_encode(np.zeros(5)), bytes([5]))

    def test_long_runs_are_leb128(self):
        self.assertEqual(rle_encode(np.zeros(300)), bytes([0xAC, 0x02]))

    def test_round_trip(self):
        rng = np.random.default_rng(1)
        bits = (rng.random(160 * 120) < 0.3).astype(np.uint8)
        self.assertEqual(rle_decode(rle_encode(bits), bits.size), bits.tolist())
        with self.assertRaises(ValueError):
            rle_decode(bytes([3]), 4)


class Geometry(unittest.TestCase):
    def test_letterbox_as_maskd(self):
        # 4:3 into a square: bars top and bottom, the odd pixel at the bottom.
        self.assertEqual(content_rect((320, 240), (1, 1), (224, 224)), (0, 28, 224, 168))
        self.assertEqual(content_rect((240, 320), (1, 1), (224, 224)), (28, 0, 168, 224))
        self.assertEqual(content_rect((224, 224), (1, 1), (224, 224)), (0, 0, 224, 224))


class Wire(unittest.TestCase):
    def test_frame_round_trip(self):
        masks = [(0, 0.5, 0.25, b"\x03\x02"), (7, 0.75, 0.0, b"")]
        msg = frame_message(42, 10, 20, (320, 240), (160, 120), masks)
        self.assertEqual(msg[:4], b"MSKD")
        self.assertEqual(parse_frame(msg), (42, 10, 20, masks))


class Stats(unittest.TestCase):
    def test_percentile_is_nearest_rank_like_maskd(self):
        v = [5.0, 1.0, 3.0, 2.0, 4.0]
        self.assertEqual(percentile(v, 0.5), 3.0)
        self.assertEqual(percentile(v, 0.9), 5.0)
        self.assertEqual(median([1.0, 2.0, 4.0, 10.0]), 3.0)


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=0).result
    sys.exit(0 if result.wasSuccessful() else 1)
