"""ONNX Runtime on maskd's segmenter graph and maskd's exact inputs; prints one JSON line.

    ort_bench.py --inputs DIR --threads N --frames F

DIR is what `maskd bench --dump-inputs DIR` wrote: the graph's path, its input tensors
and maskd's outputs for them. The timed work is `InferenceSession.run` on those inputs,
which is what maskd's "model" stage times (the segmenter plan's run); the session is
built once and warmed up before the clock starts, as maskd's plan is.
"""

import argparse
import json
import sys
import time

import numpy as np
import onnxruntime as ort

from common import load_dump, percentile, proc_status


def session(graph, threads):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inputs", required=True, help="maskd bench --dump-inputs DIR")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()

    header, tensors = load_dump(args.inputs)
    load_start = time.perf_counter()
    sess = session(header["graph"], args.threads)
    load_s = time.perf_counter() - load_start
    feeds = {t["name"]: tensors[t["name"]] for t in header["inputs"]}
    names = [t["name"] for t in header["outputs"]]

    for _ in range(args.warmup):
        outputs = sess.run(names, feeds)
    times = []
    for _ in range(max(args.frames, 1)):
        start = time.perf_counter_ns()
        outputs = sess.run(names, feeds)
        times.append((time.perf_counter_ns() - start) / 1e6)

    diffs = {}
    for name, got in zip(names, outputs):
        want = tensors[name]
        if got.shape != want.shape:
            print("ort_bench: %s has shape %s, maskd's %s" % (name, got.shape, want.shape),
                  file=sys.stderr)
            sys.exit(1)
        diffs[name] = float(np.max(np.abs(got.astype(np.float64) - want)))
    rss, peak = proc_status()
    p50 = percentile(times, 0.5)
    print(json.dumps({
        "onnxruntime": ort.__version__,
        "threads": args.threads,
        "frames": len(times),
        "p50_ms": p50,
        "p90_ms": percentile(times, 0.9),
        "p99_ms": percentile(times, 0.99),
        "mean_ms": sum(times) / len(times),
        "fps": 1e3 / p50,
        "max_abs_diff": diffs,
        "rss_bytes": rss,
        "peak_rss_bytes": peak,
        "load_s": load_s,
    }))


if __name__ == "__main__":
    main()
