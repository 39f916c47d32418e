"""Reference encoder for maskd's N:M weight format (spec: docs/SPARSE.md).

    values, indices = nm_compress(w, n=2, m=4)   # w: float32 [K, N_out], ONNX MatMul layout

Produces exactly what `NmMatrix::from_dense_pruned` produces in Rust for finite
weights (NaN ordering differs: keep weights finite). Needs numpy only.
"""
import numpy as np

def nm_compress(w, n, m):
    """Dense W[K, N_out] (float32) -> (values [G*n, N_out] f32, indices uint8 bytes).
    Keeps the n largest |w| per group of m rows (ties: lower row), canonical order."""
    k, cols = w.shape
    g = -(-k // m)
    wp = np.zeros((g * m, cols), np.float32)
    wp[:k] = w                                   # tail group padded with zero rows
    grp = wp.reshape(g, m, cols)                 # [G, M, N_out]
    # stable sort by descending |w|: equal magnitudes keep the lower position
    order = np.argsort(-np.abs(grp), axis=1, kind="stable")[:, :n, :]
    idx = np.sort(order, axis=1)                 # [G, n, N_out], strictly increasing
    vals = np.take_along_axis(grp, idx, axis=1)  # [G, n, N_out]
    bits = max(1, int(np.ceil(np.log2(m))))
    flat = idx.reshape(-1).astype(np.uint64)     # element order (g*n + s)*N_out + c
    stream = ((flat[:, None] >> np.arange(bits, dtype=np.uint64)) & 1).astype(np.uint8)
    packed = np.packbits(stream.reshape(-1), bitorder="little")
    return vals.reshape(g * n, cols).astype(np.float32), packed
