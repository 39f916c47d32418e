#!/usr/bin/env python3
"""A maskd client in plain Python (standard library only), written from docs/PROTOCOL.md.

    python3 client.py --socket /run/maskd/maskd.sock --prompt "red circle" --prompt person
    python3 client.py --prompt person --encoding bitmask --count 10

Prints one line per frame:
    seq=42 dropped=0 latency_ms=14.2 id=3 score=0.91 coverage=0.123 ones=2361 checksum=123456789 ...
`ones` is the number of foreground pixels of the decoded mask, `checksum` the sum of
their row-major indices mod 2**32 (the maskd tests compare both with what was sent).
Needs Linux (AF_UNIX SOCK_SEQPACKET).
"""

import argparse
import socket
import struct
import sys
import time

MAGIC = b"MSKD"
VERSION = 1

# message types
FRAME, SUBSCRIBED, UNSUBSCRIBED, PONG, ERROR = 0x0001, 0x0002, 0x0003, 0x0004, 0x0005
SUBSCRIBE, UNSUBSCRIBE, PING = 0x0101, 0x0102, 0x0103

# encodings
ENCODINGS = {"default": 0, "rle": 1, "coco": 2, "bitmask": 3}

PREFIX = struct.Struct("<4sHH")  # magic, version, type
FRAME_HEADER = struct.Struct("<4sHHQQQIIIIHBBI")  # 56 bytes
MASK_HEADER = struct.Struct("<IffI")  # prompt id, score, coverage, payload length

# A message is never longer than this (MAX_MESSAGE_LEN); SEQPACKET would
# silently cut a longer one, so the receive buffer is this big.
MAX_MESSAGE_LEN = 16 * 1024 * 1024


class ProtocolError(Exception):
    pass


def prefix(msg_type):
    return PREFIX.pack(MAGIC, VERSION, msg_type)


def subscribe_message(prompts, encoding):
    out = bytearray(prefix(SUBSCRIBE))
    out += struct.pack("<BBH", ENCODINGS[encoding], 0, len(prompts))
    for text in prompts:
        data = text.encode("utf-8")
        out += struct.pack("<H", len(data)) + data
    return bytes(out)


def parse_prefix(msg):
    if len(msg) < PREFIX.size:
        raise ProtocolError("message shorter than the 8-byte prefix")
    magic, version, msg_type = PREFIX.unpack_from(msg)
    if magic != MAGIC:
        raise ProtocolError("bad magic %r" % magic)
    if msg_type == ERROR:  # readable in any version: the layout is frozen
        code, closing, _, length = struct.unpack_from("<HBBH", msg, 8)
        text = msg[14:14 + length].decode("utf-8", "replace")
        raise ProtocolError("maskd error %d%s: %s" % (code, " (closing)" if closing else "", text))
    if version != VERSION:
        raise ProtocolError("maskd speaks protocol version %d, this client %d" % (version, VERSION))
    return msg_type


def read_varint(data, pos):
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise ProtocolError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def decode_rle(payload, width, height):
    """Row-major runs, background first, as LEB128 varints."""
    n = width * height
    bits = bytearray(n)
    pos, at, value = 0, 0, 0
    while pos < len(payload):
        run, pos = read_varint(payload, pos)
        if at + run > n:
            raise ProtocolError("run past the end of the mask")
        if value:
            bits[at:at + run] = b"\x01" * run
        at += run
        value ^= 1
    if at != n:
        raise ProtocolError("runs cover %d of %d pixels" % (at, n))
    return bits


def decode_coco(payload, width, height):
    """COCO compressed RLE (pycocotools rleFrString), column-major runs."""
    counts, p = [], 0
    while p < len(payload):
        x, k, more = 0, 0, True
        while more:
            c = payload[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = c & 0x20
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    n = width * height
    bits = bytearray(n)
    at, value = 0, 0
    for run in counts:
        if value:
            for q in range(at, at + run):  # column-major index -> row-major
                bits[(q % height) * width + q // height] = 1
        at += run
        value ^= 1
    if at != n:
        raise ProtocolError("runs cover %d of %d pixels" % (at, n))
    return bits


def decode_bitmask(payload, width, height):
    stride = (width + 7) // 8
    if len(payload) != stride * height:
        raise ProtocolError("bitmask length")
    bits = bytearray(width * height)
    for y in range(height):
        row = payload[y * stride:(y + 1) * stride]
        for x in range(width):
            bits[y * width + x] = (row[x >> 3] >> (7 - (x & 7))) & 1
    return bits


DECODERS = {1: decode_rle, 2: decode_coco, 3: decode_bitmask}


def parse_frame(msg):
    (_, _, _, seq, capture_ns, publish_ns, frame_w, frame_h, mask_w, mask_h,
     count, encoding, _, dropped) = FRAME_HEADER.unpack_from(msg)
    masks, pos = [], FRAME_HEADER.size
    for _ in range(count):
        prompt_id, score, coverage, length = MASK_HEADER.unpack_from(msg, pos)
        pos += MASK_HEADER.size
        payload = msg[pos:pos + length]
        pos += length
        masks.append((prompt_id, score, coverage, DECODERS[encoding](payload, mask_w, mask_h)))
    return {"seq": seq, "capture_ns": capture_ns, "publish_ns": publish_ns, "dropped": dropped,
            "frame_size": (frame_w, frame_h), "mask_size": (mask_w, mask_h), "masks": masks}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--socket", default="/run/maskd/maskd.sock")
    ap.add_argument("--prompt", action="append", required=True)
    ap.add_argument("--encoding", choices=sorted(ENCODINGS), default="default")
    ap.add_argument("--count", type=int, default=0, help="stop after N frames (0: never)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for any message")
    args = ap.parse_args()

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(args.timeout)
    try:
        sock.connect(args.socket)
    except OSError as e:
        sys.exit("cannot connect to %s: %s (is maskd running?)" % (args.socket, e))
    buf = bytearray(MAX_MESSAGE_LEN)
    view = memoryview(buf)

    def recv():
        try:
            n = sock.recv_into(buf)
        except ConnectionResetError:
            # The ERROR saying why may still be queued behind the reset
            # (PROTOCOL.md 2.4, 13 item 13): one more read reports it.
            timeout = sock.gettimeout()
            sock.settimeout(0.5)
            try:
                n = sock.recv_into(buf)
            except (OSError, socket.timeout):
                n = 0
            sock.settimeout(timeout)
            if n == 0:
                raise ProtocolError("maskd reset the connection (ECONNRESET)")
        if n == 0:
            raise ProtocolError("maskd closed the connection")
        return bytes(view[:n])

    try:
        sock.send(subscribe_message(args.prompt, args.encoding))
    except (BrokenPipeError, ConnectionResetError) as e:
        # Refused before we could send: the ERROR may still be readable.
        reason = "EPIPE" if isinstance(e, BrokenPipeError) else "ECONNRESET"
        try:
            parse_prefix(recv())
        except ProtocolError as err:
            raise ProtocolError("%s (on sending SUBSCRIBE: %s)" % (err, reason))
        raise ProtocolError("maskd dropped the connection (%s)" % reason)

    # Frames of an earlier subscription may precede the reply; skip them.
    while True:
        msg = recv()
        if parse_prefix(msg) == SUBSCRIBED:
            _, _, count = struct.unpack_from("<BBH", msg, 8)
            ids = struct.unpack_from("<%dI" % count, msg, 12)
            print("subscribed " + " ".join("%s=%d" % (t, i) for t, i in zip(args.prompt, ids)), flush=True)
            break

    received = 0
    while args.count == 0 or received < args.count:
        msg = recv()
        if parse_prefix(msg) != FRAME:
            continue
        frame = parse_frame(msg)
        received += 1
        latency_ms = (time.time_ns() - frame["capture_ns"]) / 1e6
        parts = ["seq=%d dropped=%d latency_ms=%.1f" % (frame["seq"], frame["dropped"], latency_ms)]
        for prompt_id, score, coverage, bits in frame["masks"]:
            ones = sum(bits)
            checksum = sum(i for i, b in enumerate(bits) if b) % 2**32
            parts.append("id=%d score=%.3f coverage=%.3f ones=%d checksum=%d"
                         % (prompt_id, score, coverage, ones, checksum))
        print(" ".join(parts), flush=True)


if __name__ == "__main__":
    try:
        main()
    except (ProtocolError, socket.timeout) as e:
        sys.exit("error: %s" % e)
    except (ConnectionError, OSError) as e:  # anything else the socket says: one line
        sys.exit("error: connection to maskd failed: %s" % e)
    except KeyboardInterrupt:
        sys.exit(130)
