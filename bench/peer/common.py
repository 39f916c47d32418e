"""Shared by the peer scripts: maskd's dumped inputs, its wire format, RLE, process facts.

Nothing here imports onnxruntime or GStreamer, so the drivers load fast and the
pieces can be checked on their own (bench/peer/test_common.py).
"""

import json
import math
import os
import platform
import re
import socket
import struct
import subprocess
import time

# --- maskd's wire format (docs/PROTOCOL.md), the part the pipelines speak ---------------
MAGIC = b"MSKD"
VERSION = 1
FRAME, SUBSCRIBED, ERROR = 0x0001, 0x0002, 0x0005
SUBSCRIBE = 0x0101
ENCODING_RLE = 1
PREFIX = struct.Struct("<4sHH")
FRAME_HEADER = struct.Struct("<4sHHQQQIIIIHBBI")  # 56 bytes
MASK_HEADER = struct.Struct("<IffI")
MAX_MESSAGE_LEN = 16 * 1024 * 1024


def subscribe_message(prompts, encoding=ENCODING_RLE):
    out = bytearray(PREFIX.pack(MAGIC, VERSION, SUBSCRIBE))
    out += struct.pack("<BBH", encoding, 0, len(prompts))
    for text in prompts:
        data = text.encode("utf-8")
        out += struct.pack("<H", len(data)) + data
    return bytes(out)


def subscribed_message(ids, encoding=ENCODING_RLE):
    out = bytearray(PREFIX.pack(MAGIC, VERSION, SUBSCRIBED))
    out += struct.pack("<BBH", encoding, 0, len(ids))
    for i in ids:
        out += struct.pack("<I", i)
    return bytes(out)


def frame_message(seq, capture_ns, publish_ns, frame_size, mask_size, masks):
    """`masks`: (prompt_id, score, coverage, payload bytes) per mask."""
    out = bytearray(
        FRAME_HEADER.pack(
            MAGIC, VERSION, FRAME, seq, capture_ns, publish_ns,
            frame_size[0], frame_size[1], mask_size[0], mask_size[1],
            len(masks), ENCODING_RLE, 0, 0,
        )
    )
    for prompt_id, score, coverage, payload in masks:
        out += MASK_HEADER.pack(prompt_id, score, coverage, len(payload))
        out += payload
    return bytes(out)


def message_type(msg):
    if len(msg) < PREFIX.size:
        return None
    magic, _version, kind = PREFIX.unpack_from(msg)
    return kind if magic == MAGIC else None


def parse_frame(msg):
    """(seq, capture_ns, publish_ns, [(prompt_id, score, coverage, payload)])."""
    (_m, _v, _t, seq, capture_ns, publish_ns, _fw, _fh, _mw, _mh,
     count, _enc, _r, _dropped) = FRAME_HEADER.unpack_from(msg)
    pos, masks = FRAME_HEADER.size, []
    for _ in range(count):
        pid, score, coverage, length = MASK_HEADER.unpack_from(msg, pos)
        pos += MASK_HEADER.size
        masks.append((pid, score, coverage, bytes(msg[pos:pos + length])))
        pos += length
    return seq, capture_ns, publish_ns, masks


# --- maskd's RLE: LEB128 run lengths, background first ----------------------------------
def varint(v, out):
    while True:
        byte = v & 0x7F
        v >>= 7
        if v:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def rle_encode(bits):
    """`bits`: flat numpy bool/uint8 array. The same bytes as maskd's `masks::rle::encode`."""
    import numpy as np

    flat = np.asarray(bits, dtype=np.uint8).ravel()
    if flat.size == 0:
        return b""
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], edges, [flat.size])))
    out = bytearray()
    if flat[0]:
        out.append(0)  # the first run is background, here of length 0
    for r in runs.tolist():
        varint(r, out)
    return bytes(out)


def rle_decode(data, n):
    out, value, pos = [], 0, 0
    while pos < len(data):
        run, shift = 0, 0
        while True:
            byte = data[pos]
            pos += 1
            run |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        out.extend([value] * run)
        value ^= 1
    if len(out) != n:
        raise ValueError("runs cover %d of %d pixels" % (len(out), n))
    return out


# --- maskd's dumped segmenter inputs (maskd bench --dump-inputs) ------------------------
def load_dump(directory):
    import numpy as np

    with open(os.path.join(directory, "inputs.json")) as f:
        header = json.load(f)
    tensors = {}
    for t in header["inputs"] + header["outputs"]:
        a = np.load(os.path.join(directory, t["file"]))
        if list(a.shape) != t["shape"] or a.dtype != np.float32:
            raise ValueError("%s: %s %s, inputs.json says %s float32"
                             % (t["file"], a.dtype, a.shape, t["shape"]))
        tensors[t["name"]] = a
    return header, tensors


# --- the letterbox rectangle, as maskd's source/geometry.rs computes it ----------------
def content_rect(src, par, out):
    (sw, sh), (pn, pd), (ow, oh) = src, par, out
    if 0 in (sw, sh, pn, pd):
        return (0, 0, ow, oh)
    n, d = sw * pn, sh * pd
    if n * oh == d * ow:
        return (0, 0, ow, oh)
    to_h = ow * d // n
    if to_h <= oh:
        return (0, (oh - to_h) // 2, ow, to_h)
    to_w = min(oh * n // d, ow)
    return ((ow - to_w) // 2, 0, to_w, oh)


# --- statistics and process facts --------------------------------------------------------
def percentile(values, q):
    """Nearest rank, as `maskd bench`."""
    if not values:
        return float("nan")
    v = sorted(values)
    ix = min(max(math.ceil(len(v) * q), 1), len(v)) - 1
    return v[ix]


def median(values):
    """The true median (the mean of the middle two for an even count)."""
    v = sorted(x for x in values if x is not None and not math.isnan(x))
    if not v:
        return float("nan")
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def proc_status(pid="self"):
    """(VmRSS, VmHWM) in bytes; (0, 0) where /proc is missing or the process is gone."""
    try:
        with open("/proc/%s/status" % pid) as f:
            text = f.read()
    except OSError:
        return 0, 0

    def field(key):
        m = re.search(r"^%s:\s+(\d+) kB" % key, text, re.M)
        return int(m.group(1)) * 1024 if m else 0

    return field("VmRSS"), field("VmHWM")


def realtime_ns():
    return time.time_ns()


def machine():
    """CPU model, the SIMD flags that matter for these kernels, cores."""
    model, flags = platform.processor() or "unknown", []
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                model = value.strip()
            if key.strip() == "Flags":
                flags = value.split()
    except OSError:
        pass
    wanted = ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
              "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "asimd", "sve"]
    return {
        "cpu": model,
        "flags": [f for f in wanted if f in flags],
        "cores": os.cpu_count(),
        "kernel": platform.release(),
    }


def connect_seqpacket(path, timeout_s):
    """Connects to a SOCK_SEQPACKET socket, retrying until it accepts or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
