"""The obvious alternative to maskd, written the short way: GStreamer appsink -> numpy
preprocessing -> ONNX Runtime -> sigmoid/threshold -> RLE -> SOCK_SEQPACKET subscribers.

    pipeline.py --inputs DIR --socket PATH [--threads N] [--source "videotestsrc ..."]

It does the daemon's per-frame work the way a Python user would, so that
pipeline_compare.py can run it beside `maskd run` on the same frames:

- the same GStreamer tail maskd appends (videoconvert ! videoscale add-borders !
  videoconvert ! RGB at the model's size), an appsink that keeps only the latest frame,
  synchronised to the clock (a non-live source plays at its own rate, as in maskd);
  the capture time is when the frame reached the appsink, as maskd takes it for
  non-live sources;
- preprocessing with a per-channel lookup table into a reused NCHW array;
- the segmenter graph of DIR (`maskd bench --dump-inputs`) in ONNX Runtime, with the
  text embeddings maskd computed for the same prompts (the text encoder is not part of
  the per-frame work on either side);
- maskd's postprocessing: presence gate, bilinear sampling of the mask logits over the
  letterboxed picture into 160x120, threshold in logit space;
- maskd's RLE and FRAME messages (docs/PROTOCOL.md), so one subscriber reads both;
  sent with MSG_DONTWAIT, dropped for a client whose socket is full.

Stops on SIGTERM/SIGINT and prints one JSON line: frames, time in ONNX Runtime, time in
the whole frame, peak RSS.
"""

import argparse
import json
import math
import os
import signal
import socket
import sys
import threading
import time

import gi
import numpy as np
import onnxruntime as ort

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402

from common import (  # noqa: E402
    SUBSCRIBE, content_rect, frame_message, load_dump, message_type, proc_status, rle_encode,
    subscribed_message,
)


class LatestFrame:
    """The appsink callback's slot: one frame, a newer one replaces it (latest wins)."""

    def __init__(self):
        self.cond = threading.Condition()
        self.sample = None
        self.capture_ns = 0
        self.seq = 0
        self.dropped = 0

    def on_sample(self, sink):
        sample = sink.emit("pull-sample")
        now = time.time_ns()
        with self.cond:
            if self.sample is not None:
                self.dropped += 1
            self.sample, self.capture_ns = sample, now
            self.seq += 1
            self.cond.notify()
        return Gst.FlowReturn.OK

    def take(self, timeout):
        with self.cond:
            if self.sample is None:
                self.cond.wait(timeout)
            sample, self.sample = self.sample, None
            return sample, self.capture_ns, self.seq - 1


def taps(off, length, n_out, input_len, grid_len):
    """maskd's postprocess::taps: (i0, i1, f) for each output pixel along one axis."""
    last = grid_len - 1
    x = off + (np.arange(n_out) + 0.5) * length / n_out
    g = np.clip(x * grid_len / input_len - 0.5, 0.0, last)
    i0 = np.minimum(np.floor(g).astype(np.int64), last)
    i1 = np.minimum(i0 + 1, last)
    return i0, i1, (g - i0).astype(np.float32)


class Post:
    def __init__(self, header, mask_hw):
        self.input = (header["input_width"], header["input_height"])
        self.out = (header["mask_width"], header["mask_height"])
        self.mask_hw = mask_hw
        t = header["mask_threshold"]
        self.mask_logit = math.log(t / (1 - t))
        self.score = header["score_threshold"]
        self.rect = None

    def set_content(self, rect):
        if rect == self.rect:
            return
        self.rect = rect
        x, y, w, h = rect
        self.xs = taps(x, w, self.out[0], self.input[0], self.mask_hw[1])
        self.ys = taps(y, h, self.out[1], self.input[1], self.mask_hw[0])

    def run(self, logits, presence):
        """[(prompt index, score, coverage, rle payload)] for one frame."""
        (x0, x1, fx), (y0, y1, fy) = self.xs, self.ys
        scores = 1.0 / (1.0 + np.exp(-presence.astype(np.float64)))
        rows = logits[:, :, x0] + (logits[:, :, x1] - logits[:, :, x0]) * fx
        vals = rows[:, y0, :] + (rows[:, y1, :] - rows[:, y0, :]) * fy[:, None]
        out, n = [], self.out[0] * self.out[1]
        for i, score in enumerate(scores):
            bits = vals[i] >= self.mask_logit if score >= self.score else np.zeros(n, bool)
            out.append((i, float(score), float(np.count_nonzero(bits)) / n, rle_encode(bits)))
        return out


class Server:
    """Non-blocking SOCK_SEQPACKET listener; every client gets every frame."""

    def __init__(self, path, prompts):
        if os.path.exists(path):
            os.unlink(path)
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(path)
        self.listener.listen(16)
        self.listener.setblocking(False)
        self.clients = []
        self.ids = list(range(len(prompts)))
        self.sent = self.dropped = 0

    def service(self):
        while True:
            try:
                c, _ = self.listener.accept()
            except BlockingIOError:
                break
            c.setblocking(False)
            self.clients.append(c)
        for c in list(self.clients):
            try:
                msg = c.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                msg = b""
            if not msg:
                self.drop(c)
            elif message_type(msg) == SUBSCRIBE:
                # Every prompt of this pipeline is served; ids are their positions.
                self.send(c, subscribed_message(self.ids))

    def send(self, c, msg):
        try:
            c.send(msg, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            return True
        except BlockingIOError:
            self.dropped += 1
        except OSError:
            self.drop(c)
        return False

    def publish(self, msg):
        for c in list(self.clients):
            if self.send(c, msg):
                self.sent += 1

    def drop(self, c):
        if c in self.clients:
            self.clients.remove(c)
        c.close()

    def close(self):
        for c in self.clients:
            c.close()
        self.listener.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inputs", required=True, help="maskd bench --dump-inputs DIR")
    ap.add_argument("--socket", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--source", default="videotestsrc pattern=smpte ! "
                    "video/x-raw,width=320,height=240,framerate=200/1")
    ap.add_argument("--resize", choices=["letterbox", "stretch"], default="letterbox")
    args = ap.parse_args()

    header, tensors = load_dump(args.inputs)
    (img_in, text_in) = [t["name"] for t in header["inputs"]]
    (mask_out, score_out) = [t["name"] for t in header["outputs"]]
    text = tensors[text_in]
    mask_hw = tensors[mask_out].shape[1:]
    w, h = header["input_width"], header["input_height"]

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(header["graph"], so, providers=["CPUExecutionProvider"])

    mean, std = np.array(header["mean"], np.float32), np.array(header["std"], np.float32)
    lut = ((np.arange(256, dtype=np.float32)[None, :] / 255.0 - mean[:, None]) / std[:, None])
    lut = lut.astype(np.float32)
    image = np.zeros((1, 3, h, w), np.float32)
    post = Post(header, mask_hw)
    server = Server(args.socket, header["prompts"])

    Gst.init(None)
    borders = "true" if args.resize == "letterbox" else "false"
    desc = (f"{args.source} ! videoconvert name=peer_in ! videoscale add-borders={borders} "
            f"! videoconvert ! video/x-raw,format=RGB,width={w},height={h},pixel-aspect-ratio=1/1 "
            "! appsink name=peer_sink max-buffers=1 drop=true sync=true emit-signals=true "
            "enable-last-sample=false")
    pipeline = Gst.parse_launch(desc)
    slot = LatestFrame()
    pipeline.get_by_name("peer_sink").connect("new-sample", slot.on_sample)
    in_pad = pipeline.get_by_name("peer_in").get_static_pad("sink")
    bus = pipeline.get_bus()

    stop = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: stop.set())
    pipeline.set_state(Gst.State.PLAYING)

    frames, infer_s, frame_s, error = 0, 0.0, 0.0, None
    while not stop.is_set():
        server.service()
        msg = bus.pop_filtered(Gst.MessageType.ERROR | Gst.MessageType.EOS)
        if msg is not None:
            error = "EOS" if msg.type == Gst.MessageType.EOS else str(msg.parse_error()[0])
            break
        sample, capture_ns, seq = slot.take(0.05)
        if sample is None:
            continue
        t0 = time.perf_counter()
        buf = sample.get_buffer()
        st = sample.get_caps().get_structure(0)
        ok, info = buf.map(Gst.MapFlags.READ)
        if not ok:
            continue
        try:
            stride = info.size // h
            rgb = np.frombuffer(info.data, np.uint8, count=stride * h).reshape(h, stride)
            rgb = rgb[:, : 3 * st.get_value("width")].reshape(h, -1, 3)
            for c in range(3):
                np.take(lut[c], rgb[:, :, c], out=image[0, c])
        finally:
            buf.unmap(info)
        if post.rect is None:
            caps = in_pad.get_current_caps().get_structure(0)
            par = caps.get_fraction("pixel-aspect-ratio")
            par = (par[1], par[2]) if par[0] else (1, 1)
            src = (caps.get_value("width"), caps.get_value("height"))
            post.set_content(content_rect(src, par, (w, h)) if borders == "true"
                             else (0, 0, w, h))
            frame_size = src
        t1 = time.perf_counter()
        logits, presence = sess.run([mask_out, score_out], {img_in: image, text_in: text})
        infer_s += time.perf_counter() - t1
        masks = post.run(logits, presence)
        server.publish(frame_message(seq, capture_ns, time.time_ns(), frame_size,
                                     post.out, masks))
        frame_s += time.perf_counter() - t0
        frames += 1

    pipeline.set_state(Gst.State.NULL)
    server.close()
    rss, peak = proc_status()
    print(json.dumps({"frames": frames, "infer_s": infer_s, "frame_s": frame_s,
                      "source_dropped": slot.dropped, "sent": server.sent,
                      "publish_dropped": server.dropped, "rss_bytes": rss,
                      "peak_rss_bytes": peak, "stopped_by": error or "signal"}))
    return 1 if error and error != "EOS" else 0


if __name__ == "__main__":
    sys.exit(main())
