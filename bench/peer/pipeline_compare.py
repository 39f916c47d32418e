"""`maskd run` against pipeline.py on the same frames, model and prompts.

Run by bench/peer/pipeline.sh. Each round starts one side, connects two subscribers
that speak maskd's protocol (SUBSCRIBE, then FRAME messages), takes --warmup frames
and then --frames measured frames on the first subscriber, reads the process's peak
RSS (VmHWM, which includes loading the model) and stops it with SIGTERM; then the other
side, the order alternating from round to round.

Both read the same source: a non-live GStreamer fragment (default: a fixed SMPTE
pattern at 320x240, 200 frames/s, so a frame is always waiting and neither side waits
for the camera), through the same conversion and letterbox tail, an appsink that keeps
only the latest frame. Frames/s is published frames over the measured window;
latency is publish time minus capture time from each FRAME header (the time the
frame reached the appsink to the time it was sent, both on CLOCK_REALTIME in the
publishing process), and also to when the subscriber received it.
"""

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time

from common import (
    FRAME, connect_seqpacket, machine, median, message_type, parse_frame, percentile,
    proc_status, rle_decode, subscribe_message,
)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
START_TIMEOUT_S = 300


class Subscriber(threading.Thread):
    def __init__(self, path, prompts, want):
        super().__init__(daemon=True)
        self.path, self.prompts, self.want = path, prompts, want
        self.frames = []  # (seq, capture_ns, publish_ns, recv_ns, mask count)
        self.last_masks = []  # (prompt_id, score, coverage, payload) of the last frame
        self.error = None
        self.done = threading.Event()

    def run(self):
        try:
            s = connect_seqpacket(self.path, START_TIMEOUT_S)
            s.settimeout(START_TIMEOUT_S)
            s.send(subscribe_message(self.prompts))
            while len(self.frames) < self.want:
                msg = s.recv(16 * 1024 * 1024)
                now = time.time_ns()
                if not msg:
                    raise RuntimeError("the server closed the connection")
                if message_type(msg) != FRAME:
                    continue
                seq, capture, publish, masks = parse_frame(msg)
                self.frames.append((seq, capture, publish, now, len(masks)))
                self.last_masks = masks
            s.close()
        except Exception as e:  # reported by the round, which then fails
            self.error = "%s: %s" % (type(e).__name__, e)
        finally:
            self.done.set()


def run_side(name, cmd, socket_path, args, log_path):
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)
    subs = [Subscriber(socket_path, args.prompt, args.warmup + args.frames) for _ in range(2)]
    for s in subs:
        s.start()
    deadline = time.monotonic() + START_TIMEOUT_S + 10 * (args.warmup + args.frames)
    while not all(s.done.is_set() for s in subs):
        if proc.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    _rss, peak = proc_status(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    failed = [s.error for s in subs if s.error] or (
        [] if all(s.done.is_set() for s in subs) else ["timed out"])
    if failed:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        sys.exit("%s: %s\n%s" % (name, "; ".join(failed), tail))
    measured = subs[0].frames[args.warmup:]
    publish = [f[2] for f in measured]
    span_s = (publish[-1] - publish[0]) / 1e9 if len(publish) > 1 else float("nan")
    lat = [(f[2] - f[1]) / 1e6 for f in measured]
    recv = [(f[3] - f[1]) / 1e6 for f in measured]
    result = {
        "fps": (len(publish) - 1) / span_s if span_s > 0 else float("nan"),
        "latency_p50_ms": percentile(lat, 0.5),
        "latency_p99_ms": percentile(lat, 0.99),
        "received_p50_ms": percentile(recv, 0.5),
        "received_p99_ms": percentile(recv, 0.99),
        "peak_rss_bytes": peak,
        "frames": len(measured),
        "second_subscriber_frames": len(subs[1].frames),
        "masks_per_frame": measured[0][4] if measured else 0,
        "last_masks": [(pid, score, payload.hex()) for pid, score, _c, payload in
                       subs[0].last_masks],
    }
    last = (out or "").strip().splitlines()
    if name == "python" and last:
        try:
            result["pipeline"] = json.loads(last[-1])
        except json.JSONDecodeError:
            pass
    return result


def mask_difference(a, b):
    """Share of mask pixels that differ between the two sides' last frames, prompt by
    prompt in subscription order: both see the same fixed picture, so this checks that
    they did the same work (ONNX Runtime and tract differ by ~1e-5 in the logits)."""
    n = 160 * 120
    differ = total = 0
    for (_, _, pa), (_, _, pb) in zip(a["last_masks"], b["last_masks"]):
        ma, mb = rle_decode(bytes.fromhex(pa), n), rle_decode(bytes.fromhex(pb), n)
        differ += sum(x != y for x, y in zip(ma, mb))
        total += n
    if len(a["last_masks"]) != len(b["last_masks"]) or total == 0:
        return 1.0
    return differ / total


def maskd_config(args, work, socket_path):
    manifest = os.path.abspath(os.path.join(REPO, args.manifest))
    prompts = ", ".join(json.dumps(p) for p in args.prompt)
    text = f"""# Written by bench/peer/pipeline_compare.py.
[source]
pipeline = {json.dumps(args.source)}
loop = false
resize = "letterbox"
frame_timeout_ms = 10000

[engine]
manifest = {json.dumps(manifest)}
threads = {args.threads}
sparse_kernel = "auto"
device = "cpu"

[prompts]
text = [{prompts}]

[masks]
width = 160
height = 120
encoding = "rle"

[publish]
socket = {json.dumps(socket_path)}
mode = "0600"

[log]
level = "warn"
"""
    path = os.path.join(work, "maskd.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--maskd", default=os.path.join(REPO, "target/release/maskd"))
    ap.add_argument("--manifest", default="models/default.toml")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=200, help="measured frames per run")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--source", default="videotestsrc pattern=smpte ! "
                    "video/x-raw,width=320,height=240,framerate=200/1")
    ap.add_argument("--prompt", action="append")
    ap.add_argument("--work", default=os.path.join(HERE, "work"))
    ap.add_argument("--out")
    args = ap.parse_args()
    args.prompt = args.prompt or ["red circle", "blue square", "yellow star"]
    os.makedirs(args.work, exist_ok=True)
    dump = os.path.join(args.work, "inputs")
    d = subprocess.run([args.maskd, "bench", "--manifest", args.manifest, "--dump-inputs", dump]
                       + sum((["--prompt", p] for p in args.prompt), []),
                       cwd=REPO, capture_output=True, text=True, check=False)
    if d.returncode != 0:
        sys.exit("maskd bench --dump-inputs failed:\n" + d.stderr.strip())

    sock = os.path.join(args.work, "pipeline.sock")
    sides = {
        "maskd": [args.maskd, "run", "--config", maskd_config(args, args.work, sock)],
        "python": [sys.executable, os.path.join(HERE, "pipeline.py"), "--inputs", dump,
                   "--socket", sock, "--threads", str(args.threads), "--source", args.source],
    }
    print("maskd run vs pipeline.py, %d thread(s), %d measured frames per run, 2 subscribers, "
          "source: %s" % (args.threads, args.frames, args.source))
    rounds = []
    for r in range(args.rounds):
        row = {}
        for name in (["maskd", "python"] if r % 2 == 0 else ["python", "maskd"]):
            row[name] = run_side(name, sides[name], sock, args,
                                 os.path.join(args.work, "%s.log" % name))
        row["mask_pixels_differing"] = mask_difference(row["maskd"], row["python"])
        row["fps_ratio"] = row["maskd"]["fps"] / row["python"]["fps"]
        row["rss_ratio"] = row["maskd"]["peak_rss_bytes"] / row["python"]["peak_rss_bytes"]
        rounds.append(row)
        m, p = row["maskd"], row["python"]
        print("round %d/%d: maskd %.1f fps, latency p50 %.1f p99 %.1f ms, peak %.0f MiB | "
              "python %.1f fps, p50 %.1f p99 %.1f ms, peak %.0f MiB | fps x%.2f, RSS x%.2f"
              % (r + 1, args.rounds, m["fps"], m["latency_p50_ms"], m["latency_p99_ms"],
                 m["peak_rss_bytes"] / 2**20, p["fps"], p["latency_p50_ms"],
                 p["latency_p99_ms"], p["peak_rss_bytes"] / 2**20, row["fps_ratio"],
                 row["rss_ratio"]), flush=True)
        print("  same frames, same model: %.3f%% of mask pixels differ between the two"
              % (100 * row["mask_pixels_differing"]), flush=True)

    summary = {"fps_ratio": median([r["fps_ratio"] for r in rounds]),
               "rss_ratio": median([r["rss_ratio"] for r in rounds])}
    for name in ("maskd", "python"):
        for key in ("fps", "latency_p50_ms", "latency_p99_ms", "received_p50_ms",
                    "received_p99_ms"):
            summary["%s_%s" % (name, key)] = median([r[name][key] for r in rounds])
        summary["%s_peak_rss_bytes" % name] = max(r[name]["peak_rss_bytes"] for r in rounds)
    infer = [r["python"]["pipeline"]["infer_s"] / r["python"]["pipeline"]["frame_s"]
             for r in rounds if r["python"].get("pipeline", {}).get("frame_s")]
    summary["python_infer_share"] = median(infer)
    s = summary
    print("median: maskd %.1f fps (p50 %.1f, p99 %.1f ms, peak %.0f MiB), python %.1f fps "
          "(p50 %.1f, p99 %.1f ms, peak %.0f MiB, %.0f%% of its frame in ONNX Runtime); "
          "maskd/python fps x%.2f, peak RSS x%.2f"
          % (s["maskd_fps"], s["maskd_latency_p50_ms"], s["maskd_latency_p99_ms"],
             s["maskd_peak_rss_bytes"] / 2**20, s["python_fps"], s["python_latency_p50_ms"],
             s["python_latency_p99_ms"], s["python_peak_rss_bytes"] / 2**20,
             100 * s["python_infer_share"], s["fps_ratio"], s["rss_ratio"]))
    if args.out:
        doc = {
            "kind": "pipeline",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(),
            "config": {"threads": args.threads, "rounds": args.rounds, "frames": args.frames,
                       "warmup": args.warmup, "source": args.source, "prompts": args.prompt,
                       "manifest": args.manifest},
            "rounds": rounds,
            "summary": summary,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)
        print("wrote %s" % args.out)


if __name__ == "__main__":
    main()
