#!/usr/bin/env python3
"""The token-pruning table (and, with matplotlib, a plot) of docs/PRUNING.md.

Reads what these two commands print (run from the repository root, release build):

    maskd eval --json --pruning none --pruning 2:0.5 ... --scorer attention --scorer norm ... > eval.json
    maskd bench --json --pruning none --pruning 2:0.5 ... --scorer norm > bench.json

and prints a Markdown table: per setting mIoU (and its share of the first row's),
absent-ok, encoder and engine time per image (eval), and frame fps with the pruner's
share of the frame (bench, where the setting was benched). With --plot PNG it also draws
eval's images/s (1000 / engine ms per image) against held-out mIoU, one mark per scorer.

usage: bench/pruning_report.py eval.json [bench.json] [--plot docs/pruning.png]
"""

import json
import sys


def load(path):
    with open(path) as f:
        data = json.load(f)
    return data if isinstance(data, list) else [data]


def main(argv):
    plot = None
    if "--plot" in argv:
        i = argv.index("--plot")
        plot = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    evals = load(argv[0])
    bench = {}
    if len(argv) > 1:
        with open(argv[1]) as f:
            for v in json.load(f)["variants"]:
                bench[v["pruning"]] = v
    base = evals[0]
    print("| pruning | tokens per block | mIoU | % of unpruned | absent-ok | encoder ms/img | engine ms/img | select ms/img | frame fps | select % of frame |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    points = []
    for r in evals:
        b = bench.get(r["pruning"])
        fps = b["fps"] if b else None
        share = None
        if b:
            s = b["stages"]
            whole = sum(s[k]["mean_ms"] for k in ("preprocess", "model", "postprocess", "encode_and_publish"))
            share = 100 * s["select"]["mean_ms"] / whole if whole else None
        cell = lambda v, f: "-" if v is None else f.format(v)
        tokens = r.get("block_tokens")
        print("| {} | {} | {:.4f} | {:.1f} | {:.4f} | {} | {:.1f} | {} | {} | {} |".format(
            r["pruning"],
            "196 × 8" if tokens is None else ",".join(str(t) for t in tokens),
            r["miou"],
            100 * r["miou"] / base["miou"],
            r["absent_ok_rate"],
            cell(r.get("encoder_ms_per_image"), "{:.1f}"),
            r["infer_ms_per_image"],
            cell(r.get("select_ms_per_image"), "{:.3f}"),
            cell(fps, "{:.2f}"),
            cell(share, "{:.2f}"),
        ))
        points.append((r["pruning"], 1e3 / r["infer_ms_per_image"], r["miou"]))
    if plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for scorer, marker in (("none", "*"), ("attention", "o"), ("norm", "s"), ("random", "x")):
            pts = [p for p in points if p[0] == scorer or p[0].endswith(" " + scorer)]
            if pts:
                ax.scatter([p[1] for p in pts], [p[2] for p in pts], marker=marker, label=scorer)
                for p in pts:
                    ax.annotate(p[0].split(" ")[0], (p[1], p[2]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("images/s in maskd eval (every prompt of an image in one run, 1 thread)")
        ax.set_ylabel("held-out mIoU")
        ax.set_title("maskd token pruning: speed against held-out mIoU (dense model)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(plot, dpi=120)


if __name__ == "__main__":
    main(sys.argv[1:])
