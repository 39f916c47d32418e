"""The ONNX Runtime contender of bench.rs: one exported attention, one thread.

The graph is the default model's node chain (Reshape, Transpose, three Gathers, the
query Mul, Transpose, MatMul, Softmax, MatMul, Transpose, Reshape), which ORT rewrites
as it does in the whole model (Split, FusedMatMul, MatMul, Softmax, Transposes). Per
shape it prints the median and fastest-tenth ms of session.run, and the nodes' own
kernel time from ORT's profiler (without Python's and the session's overhead). Same
shapes and columns as bench.rs; run the two in turns so other load slows both alike:

    python3 -m venv /tmp/attnvenv && /tmp/attnvenv/bin/pip install onnxruntime numpy onnx
    /tmp/attnvenv/bin/python src/engine/ops/attention/bench_ort.py
"""
import json
import os
import tempfile
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto as TP
from onnx import helper as h

HEADS, DIM = 3, 64
SHAPES = [
    ("encoder B=1 T=196", 1, 196),
    ("encoder B=1 T=98", 1, 98),
    ("encoder B=1 T=49", 1, 49),
    ("decoder B=3 T=196", 3, 196),
]


def const(name, value, dtype=TP.INT64):
    dims = [len(value)] if isinstance(value, list) else []
    vals = value if isinstance(value, list) else [value]
    return h.make_node("Constant", [], [name], value=h.make_tensor(name, dtype, dims, vals))


def graph(b, t):
    nodes = [
        const("shape5", [b, t, 3, HEADS, DIM]),
        const("i0", 0),
        const("i1", 1),
        const("i2", 2),
        const("scale", DIM**-0.5, TP.FLOAT),
        const("shape3", [b, t, HEADS * DIM]),
        h.make_node("Reshape", ["qkv", "shape5"], ["r"]),
        h.make_node("Transpose", ["r"], ["p"], perm=[2, 0, 3, 1, 4]),
        h.make_node("Gather", ["p", "i0"], ["q"], axis=0),
        h.make_node("Gather", ["p", "i1"], ["k"], axis=0),
        h.make_node("Gather", ["p", "i2"], ["v"], axis=0),
        h.make_node("Mul", ["q", "scale"], ["qs"]),
        h.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        h.make_node("MatMul", ["qs", "kt"], ["s"]),
        h.make_node("Softmax", ["s"], ["a"], axis=-1),
        h.make_node("MatMul", ["a", "v"], ["o"]),
        h.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
        h.make_node("Reshape", ["ot", "shape3"], ["out"]),
    ]
    g = h.make_graph(
        nodes,
        "attention",
        [h.make_tensor_value_info("qkv", TP.FLOAT, [b, t, 3 * HEADS * DIM])],
        [h.make_tensor_value_info("out", TP.FLOAT, [b, t, HEADS * DIM])],
    )
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def session(model, profile):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    return ort.InferenceSession(
        model.SerializeToString(), so, providers=["CPUExecutionProvider"]
    )


def kernel_ms(model, x, runs=200):
    """Median per-run sum of the nodes' kernel times, from ORT's profiler."""
    s = session(model, True)
    for _ in range(runs):
        s.run(None, {"qkv": x})
    per_op = {}
    with open(s.end_profiling()) as f:
        for e in json.load(f):
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                per_op.setdefault(e["name"], []).append(e["dur"])
    return sum(np.median(v) for v in per_op.values()) / 1e3


def main():
    slice_s = float(os.environ.get("SLICE", "0.3"))
    for name, b, t in SHAPES:
        model = graph(b, t)
        x = np.random.default_rng(11).uniform(-1, 1, (b, t, 3 * HEADS * DIM))
        x = x.astype(np.float32)
        s = session(model, False)
        for _ in range(20):
            s.run(None, {"qkv": x})
        times = []
        start = time.perf_counter()
        while time.perf_counter() - start < slice_s:
            t0 = time.perf_counter()
            s.run(None, {"qkv": x})
            times.append((time.perf_counter() - t0) * 1e3)
        times.sort()
        med, p10 = times[len(times) // 2], times[len(times) // 10]
        flops = 4 * b * t * t * HEADS * DIM
        kms = kernel_ms(model, x)
        print(
            f"{name:<20} {'ort':<8} {med:9.4f} {p10:9.4f} {flops / med / 1e6:8.1f}"
            f"   (kernels alone {kms:.4f} ms, {flops / kms / 1e6:.1f} GFLOP/s)"
        )


main()
