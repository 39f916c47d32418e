"""maskd (dense and 2:4) against ONNX Runtime on the same graph, inputs and frames.

Run by bench/peer/run.sh, which sets up the venv and builds maskd first. For each
thread count, R rounds; in each round maskd dense (`maskd bench --json --rounds 1`),
maskd 2:4 and ONNX Runtime (ort_bench.py) run one after the other, each in its own
process, their order rotating from round to round so that drift on a shared machine
hits them alike. Each round's ratio is ORT's time over maskd's in that round (> 1:
maskd is faster), for maskd's model stage (the segmenter plan's run, the same work as
ORT's `session.run`) and for maskd's whole frame; the summary is the median of the
rounds' ratios.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys

from common import machine, median

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def run_json(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    if out.returncode != 0:
        sys.exit("%s failed:\n%s" % (" ".join(cmd), out.stderr.strip()))
    try:
        return json.loads(out.stdout)
    except json.JSONDecodeError:
        sys.exit("%s printed no JSON:\n%s" % (" ".join(cmd), out.stdout[-2000:]))


def maskd_round(args, manifest, threads):
    report = run_json([
        args.maskd, "bench", "--json", "--rounds", "1", "--frames", str(args.frames),
        "--threads", str(threads), "--manifest", manifest, "--image", args.image,
    ] + sum((["--prompt", p] for p in args.prompt), []))
    v = report["variants"][0]
    return {
        "frame_ms": v["p50_ms"],
        "frame_p99_ms": v["p99_ms"],
        "model_ms": v["stages"]["model"]["p50_ms"],
        "stages_mean_ms": {k: s["mean_ms"] for k, s in v["stages"].items()},
        "maskd_allocs_per_frame": v["maskd_allocs_per_frame"],
        "tract_allocs_per_frame": v["tract_allocs_per_frame"],
        "rss_bytes": v["rss_bytes"],
        "peak_rss_bytes": v["peak_rss_bytes"],
    }


def ort_round(args, threads):
    r = run_json([sys.executable, os.path.join(HERE, "ort_bench.py"), "--inputs", args.dump,
                  "--threads", str(threads), "--frames", str(args.frames)])
    return r


def versions(ort_version):
    def cmd(c):
        try:
            return subprocess.run(c, capture_output=True, text=True, cwd=REPO,
                                  check=False).stdout.strip()
        except OSError:
            return "unknown"

    tract = "unknown"
    try:
        with open(os.path.join(REPO, "Cargo.lock")) as f:
            lock = f.read().split("[[package]]")
        for pkg in lock:
            if 'name = "tract-core"' in pkg:
                tract = pkg.split('version = "')[1].split('"')[0]
    except (OSError, IndexError):
        pass
    import numpy

    return {
        "maskd_commit": cmd(["git", "describe", "--always", "--dirty"]),
        "rustc": cmd(["rustc", "--version"]),
        "tract": tract,
        "onnxruntime": ort_version,
        "numpy": numpy.__version__,
        "python": sys.version.split()[0],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--maskd", default=os.path.join(REPO, "target/release/maskd"))
    ap.add_argument("--dense", default="models/default.toml")
    ap.add_argument("--sparse", default="models/sparse24.toml")
    ap.add_argument("--threads", default="1 2", help="thread counts, e.g. '1 2 4'")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--frames", type=int, default=20, help="timed frames per run")
    ap.add_argument("--image", default="models/eval/images/0000.jpg")
    ap.add_argument("--prompt", action="append",
                    help="repeat; default: maskd bench's three prompts")
    ap.add_argument("--work", default=os.path.join(HERE, "work"))
    ap.add_argument("--out", help="write the results here as JSON")
    args = ap.parse_args()
    args.prompt = args.prompt or ["red circle", "blue square", "yellow star"]
    threads = [int(t) for t in args.threads.split()]

    # One dump serves every thread count: maskd's inputs do not depend on it.
    args.dump = os.path.join(args.work, "inputs")
    dumped = subprocess.run(
        [args.maskd, "bench", "--manifest", args.dense, "--image", args.image,
         "--dump-inputs", args.dump] + sum((["--prompt", p] for p in args.prompt), []),
        cwd=REPO, capture_output=True, text=True, check=False)
    if dumped.returncode != 0:
        sys.exit("maskd bench --dump-inputs failed:\n" + dumped.stderr.strip())

    results = []
    ort_version = None
    print("maskd vs ONNX Runtime, %d frames per run, %d rounds, %d prompts; "
          "ratio = ORT ms / maskd ms (> 1: maskd faster)" % (args.frames, args.rounds,
                                                            len(args.prompt)))
    for n in threads:
        rounds = []
        for r in range(args.rounds):
            order = ["dense", "sparse", "ort"]
            order = order[r % 3:] + order[:r % 3]
            row = {}
            for who in order:
                if who == "ort":
                    row["ort"] = ort_round(args, n)
                    ort_version = row["ort"]["onnxruntime"]
                else:
                    row[who] = maskd_round(args, args.dense if who == "dense" else args.sparse, n)
            ort_ms = row["ort"]["p50_ms"]
            for who in ("dense", "sparse"):
                row[who]["vs_ort_model"] = ort_ms / row[who]["model_ms"]
                row[who]["vs_ort_frame"] = ort_ms / row[who]["frame_ms"]
            rounds.append(row)
            print("threads %d round %d/%d: ORT %.1f ms | dense model %.1f frame %.1f ms "
                  "(ratio %.2f model, %.2f frame) | 2:4 model %.1f frame %.1f ms "
                  "(ratio %.2f, %.2f) | max |diff| %.2g"
                  % (n, r + 1, args.rounds, ort_ms,
                     row["dense"]["model_ms"], row["dense"]["frame_ms"],
                     row["dense"]["vs_ort_model"], row["dense"]["vs_ort_frame"],
                     row["sparse"]["model_ms"], row["sparse"]["frame_ms"],
                     row["sparse"]["vs_ort_model"], row["sparse"]["vs_ort_frame"],
                     max(row["ort"]["max_abs_diff"].values())), flush=True)

        def med(who, key):
            return median([row[who][key] for row in rounds])

        summary = {
            "ort_ms": med("ort", "p50_ms"),
            "ort_peak_rss_bytes": max(row["ort"]["peak_rss_bytes"] for row in rounds),
            "max_abs_diff": {k: max(row["ort"]["max_abs_diff"][k] for row in rounds)
                             for k in rounds[0]["ort"]["max_abs_diff"]},
        }
        for who in ("dense", "sparse"):
            for key in ("model_ms", "frame_ms", "frame_p99_ms", "vs_ort_model", "vs_ort_frame",
                        "maskd_allocs_per_frame", "tract_allocs_per_frame"):
                summary["%s_%s" % (who, key)] = med(who, key)
            summary["%s_peak_rss_bytes" % who] = max(row[who]["peak_rss_bytes"] for row in rounds)
            outside = [1 - row[who]["stages_mean_ms"]["model"] / sum(row[who]["stages_mean_ms"].values())
                       for row in rounds]
            summary["%s_outside_model_share" % who] = median(outside)
        results.append({"threads": n, "rounds": rounds, "summary": summary})
        s = summary
        print("threads %d median: ORT %.1f ms; dense %.1f ms model / %.1f ms frame -> ratio "
              "%.2f model, %.2f frame; 2:4 %.1f / %.1f ms -> %.2f, %.2f; max |diff| %s"
              % (n, s["ort_ms"], s["dense_model_ms"], s["dense_frame_ms"],
                 s["dense_vs_ort_model"], s["dense_vs_ort_frame"], s["sparse_model_ms"],
                 s["sparse_frame_ms"], s["sparse_vs_ort_model"], s["sparse_vs_ort_frame"],
                 ", ".join("%s %.2g" % kv for kv in s["max_abs_diff"].items())), flush=True)

    if args.out:
        doc = {
            "kind": "model",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(),
            "versions": versions(ort_version),
            "config": {"rounds": args.rounds, "frames": args.frames, "prompts": args.prompt,
                       "dense": args.dense, "sparse": args.sparse, "image": args.image},
            "threads": results,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)
        print("wrote %s" % args.out)


if __name__ == "__main__":
    main()
