"""Writes docs/BENCHMARKS.md and its plot from the JSON that bench/peer/ wrote.

    report.py --model bench/results/model.json --pipeline bench/results/pipeline-1.json ...
              --doc docs/BENCHMARKS.md --plot docs/bench_threads.png [--note TEXT]

Run by bench/report.sh, which measures first. Everything in the document comes from the
JSON files, so the document and the figures never disagree.
"""

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MIB = 2**20


def fmt(v, digits=1):
    if v is None:
        return "n/a"
    return "%.*f" % (digits, v)


def goal_row(goal, measured, met):
    return "| %s | %s | %s |" % (goal, measured, "met" if met else "**not met**")


def plot(model, path):
    rows = model["threads"]
    n = [r["threads"] for r in rows]
    s = [r["summary"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ax.plot(n, [1e3 / x["dense_frame_ms"] for x in s], "o-", color="tab:blue",
            label="maskd dense (whole frame)")
    ax.plot(n, [1e3 / x["sparse_frame_ms"] for x in s], "s-", color="tab:green",
            label="maskd 2:4 (whole frame)")
    ax.plot(n, [1e3 / x["ort_ms"] for x in s], "^-", color="tab:red",
            label="ONNX Runtime dense (session.run)")
    ax.plot(n, [1e3 / x["dense_model_ms"] for x in s], "o--", color="tab:blue", alpha=0.5,
            label="maskd dense (model stage only)")
    ax.plot(n, [1e3 / x["sparse_model_ms"] for x in s], "s--", color="tab:green", alpha=0.5,
            label="maskd 2:4 (model stage only)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(n)
    ax.set_xticklabels([str(x) for x in n])
    ax.set_xlabel("threads (engine.threads = ORT intra_op_num_threads)")
    ax.set_ylabel("frames/s (median over rounds)")
    m = model["machine"]
    ax.set_title("%s, %d cores, %d prompts" % (m["cpu"], m["cores"],
                                                len(model["config"]["prompts"])), fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def model_section(model, plot_name):
    c, m, v = model["config"], model["machine"], model["versions"]
    out = []
    out.append("## 1. The segmenter graph: maskd against ONNX Runtime (`bench/peer/run.sh`)\n")
    out.append(
        "Same ONNX file (`%s` → its `[segmenter] model`), same input bytes (maskd's own "
        "preprocessed image and text embeddings, dumped by `maskd bench --dump-inputs`), "
        "%d prompts, %d timed frames per run after 3 warm-up frames, %d rounds; in each "
        "round maskd dense, maskd 2:4 (`%s`) and ONNX Runtime run one after the other in "
        "separate processes, their order rotating. ONNX Runtime: `CPUExecutionProvider`, "
        "`ORT_ENABLE_ALL`, `intra_op_num_threads` = threads, `inter_op_num_threads = 1`, "
        "sequential execution, timed around `session.run`.\n"
        % (c["dense"], len(c["prompts"]), c["frames"], c["rounds"], c["sparse"]))
    out.append("| threads | ORT ms | dense model ms | dense frame ms | dense ratio model / frame "
               "| 2:4 model ms | 2:4 frame ms | 2:4 ratio model / frame | max abs diff (mask, presence) |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for r in model["threads"]:
        s = r["summary"]
        d = s["max_abs_diff"]
        out.append("| %d | %s | %s | %s | %s / %s | %s | %s | %s / %s | %.2g, %.2g |" % (
            r["threads"], fmt(s["ort_ms"]), fmt(s["dense_model_ms"]), fmt(s["dense_frame_ms"]),
            fmt(s["dense_vs_ort_model"], 2), fmt(s["dense_vs_ort_frame"], 2),
            fmt(s["sparse_model_ms"]), fmt(s["sparse_frame_ms"]),
            fmt(s["sparse_vs_ort_model"], 2), fmt(s["sparse_vs_ort_frame"], 2),
            d.get("mask_logits", float("nan")), d.get("presence_logits", float("nan"))))
    out.append("")
    out.append("Ratio = ONNX Runtime's time / maskd's time, the median over rounds of each "
               "round's ratio (> 1: maskd is faster). *model* compares the same work "
               "(maskd's segmenter plan run against `session.run`); *frame* charges maskd "
               "its whole frame (preprocessing, model, postprocessing, encoding and "
               "publishing to a client) against ONNX Runtime's model run alone. The max abs "
               "diff is between ONNX Runtime's outputs and maskd's dense outputs for the "
               "same inputs (the 2:4 model is a different set of weights, with maskd's own "
               "`NmMatMul` op, which ONNX Runtime cannot run).\n")
    out.append("Per round (ratio model, dense | 2:4):\n")
    for r in model["threads"]:
        cells = ["%.2f \\| %.2f" % (x["dense"]["vs_ort_model"], x["sparse"]["vs_ort_model"])
                 for x in r["rounds"]]
        out.append("- %d thread(s): %s" % (r["threads"], ", ".join(cells)))
    out.append("")

    out.append("### Frames/s against threads\n")
    base = model["threads"][0]["summary"]
    out.append("| threads | ORT fps | maskd dense fps | maskd 2:4 fps | ORT scaling | dense scaling | 2:4 scaling |")
    out.append("|---|---|---|---|---|---|---|")
    for r in model["threads"]:
        s = r["summary"]
        out.append("| %d | %s | %s | %s | %s× | %s× | %s× |" % (
            r["threads"], fmt(1e3 / s["ort_ms"]), fmt(1e3 / s["dense_frame_ms"]),
            fmt(1e3 / s["sparse_frame_ms"]), fmt(base["ort_ms"] / s["ort_ms"], 2),
            fmt(base["dense_frame_ms"] / s["dense_frame_ms"], 2),
            fmt(base["sparse_frame_ms"] / s["sparse_frame_ms"], 2)))
    out.append("")
    out.append("![frames/s against threads](%s)\n" % plot_name)
    out.append("Scaling is each thread count's median frame time over the first row's. "
               "Solid lines: what a user gets per frame (maskd's whole frame, ONNX Runtime's "
               "model run alone); dashed: maskd's model stage only.\n")

    out.append("### Per frame: where maskd's time and allocations go (`maskd bench --json`)\n")
    out.append("| threads | variant | model share of frame | allocs/frame in maskd | allocs/frame inside the plan | frame p99 ms | peak RSS MiB |")
    out.append("|---|---|---|---|---|---|---|")
    for r in model["threads"]:
        s = r["summary"]
        for who, label in (("dense", "maskd dense"), ("sparse", "maskd 2:4")):
            out.append("| %d | %s | %s%% | %s | %s | %s | %s |" % (
                r["threads"], label, fmt(100 * (1 - s["%s_outside_model_share" % who])),
                fmt(s["%s_maskd_allocs_per_frame" % who]),
                fmt(s["%s_tract_allocs_per_frame" % who]), fmt(s["%s_frame_p99_ms" % who]),
                fmt(s["%s_peak_rss_bytes" % who] / MIB, 0)))
        out.append("| %d | ONNX Runtime | — | — | — | — | %s |" % (
            r["threads"], fmt(s["ort_peak_rss_bytes"] / MIB, 0)))
    out.append("")
    out.append("*allocs/frame inside the plan* are the heap allocations made while the "
               "segmenter plan runs (tract's, and maskd's ops that tract calls); *in maskd* "
               "are all the others of the frame, every thread (pre- and postprocessing, the "
               "publisher, the subscribed client). Peak RSS is the bench process's VmHWM "
               "(loading included); ONNX Runtime's is its Python process's.\n")
    return out


def pipeline_section(pipelines):
    out = ["## 2. The whole daemon against a Python pipeline (`bench/peer/pipeline.sh`)\n"]
    if not pipelines:
        out.append("Not measured in this run.\n")
        return out
    c = pipelines[0]["config"]
    out.append(
        "`maskd run` against `bench/peer/pipeline.py` (GStreamer appsink → numpy "
        "preprocessing → ONNX Runtime → sigmoid/threshold with maskd's bilinear "
        "postprocessing → maskd's RLE → FRAME messages over SOCK_SEQPACKET), each with 2 "
        "subscribers, on the same source `%s` (non-live: played at its own rate, always "
        "ahead of both, latest frame wins), letterboxed into 224², %d prompts, %d measured "
        "frames after %d warm-up frames, %d rounds alternating which side goes first.\n"
        % (c["source"], len(c["prompts"]), c["frames"], c["warmup"], c["rounds"]))
    out.append("| threads | maskd fps | Python fps | fps ratio | maskd latency p50 / p99 ms | Python latency p50 / p99 ms | maskd peak MiB | Python peak MiB | RSS ratio | Python time in ORT | mask pixels differing |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for p in pipelines:
        s = p["summary"]
        diff = max(r.get("mask_pixels_differing", float("nan")) for r in p["rounds"])
        out.append("| %d | %s | %s | %s× | %s / %s | %s / %s | %s | %s | %s× | %s%% | %.3f%% |" % (
            p["config"]["threads"], fmt(s["maskd_fps"]), fmt(s["python_fps"]),
            fmt(s["fps_ratio"], 2), fmt(s["maskd_latency_p50_ms"]),
            fmt(s["maskd_latency_p99_ms"]), fmt(s["python_latency_p50_ms"]),
            fmt(s["python_latency_p99_ms"]), fmt(s["maskd_peak_rss_bytes"] / MIB, 0),
            fmt(s["python_peak_rss_bytes"] / MIB, 0), fmt(s["rss_ratio"], 2),
            fmt(100 * s["python_infer_share"], 0), 100 * diff))
    out.append("")
    out.append("fps ratio = maskd's frames/s / Python's, the median of the rounds' ratios "
               "(> 1: maskd is faster); RSS ratio = maskd's peak / Python's (< 1: maskd is "
               "smaller). Latency is capture (the frame reaching the appsink) to publish, "
               "from each FRAME header, as each side stamps it; it includes up to one "
               "source frame interval of waiting for the engine to be free. *mask pixels "
               "differing* compares the two sides' masks for the same fixed picture: it "
               "shows they did the same work.\n")
    return out


def goals_section(model, pipelines):
    out = ["## 3. Against the goals of issue 15\n", "| goal | measured | |", "|---|---|---|"]
    by_n = {r["threads"]: r["summary"] for r in model["threads"]}
    for n in (1, 2):
        if n in by_n:
            r = by_n[n]["dense_vs_ort_model"]
            out.append(goal_row("dense engine time ≤ 1.0× ORT's, %d thread(s)" % n,
                                "%.2f× ORT's" % (1 / r), r >= 1.0))
    if 1 in by_n:
        r = by_n[1]["sparse_vs_ort_frame"]
        out.append(goal_row("2:4 ≥ 1.4× ORT-dense frames/s, 1 thread", "%.2f×" % r, r >= 1.4))
    if 1 in by_n and 2 in by_n:
        r = by_n[1]["dense_frame_ms"] / by_n[2]["dense_frame_ms"]
        out.append(goal_row("≥ 1.7× frames/s at 2 threads over 1 (dense)", "%.2f×" % r, r >= 1.7))
    for p in pipelines:
        s, n = p["summary"], p["config"]["threads"]
        out.append(goal_row("daemon ≥ 1.2× the Python pipeline's frames/s (%d thread(s))" % n,
                            "%.2f×" % s["fps_ratio"], s["fps_ratio"] >= 1.2))
        out.append(goal_row("daemon peak RSS ≤ 1.0× the Python pipeline's (%d thread(s))" % n,
                            "%.2f×" % s["rss_ratio"], s["rss_ratio"] <= 1.0))
        q = s["maskd_latency_p99_ms"] / s["maskd_latency_p50_ms"]
        out.append(goal_row("daemon latency p99 ≤ 1.5× p50 (%d frames, %d thread(s))"
                            % (p["config"]["frames"], n), "%.2f×" % q, q <= 1.5))
    if 1 in by_n:
        share = by_n[1]["dense_outside_model_share"]
        out.append(goal_row("everything but the model ≤ 5 % of frame time (dense, 1 thread, "
                            "bench frame)", "%.1f %%" % (100 * share), share <= 0.05))
        a = by_n[1]["dense_maskd_allocs_per_frame"]
        out.append(goal_row("no per-frame heap allocation in maskd's own code", "%s" % fmt(a),
                            a == 0))
    out.append("")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--pipeline", action="append", default=[])
    ap.add_argument("--doc", required=True)
    ap.add_argument("--plot", required=True)
    ap.add_argument("--note", default="")
    ap.add_argument("--command", default="bench/report.sh")
    args = ap.parse_args()

    with open(args.model) as f:
        model = json.load(f)
    pipelines = []
    for p in args.pipeline:
        with open(p) as f:
            pipelines.append(json.load(f))
    plot(model, args.plot)
    plot_name = os.path.relpath(args.plot, os.path.dirname(os.path.abspath(args.doc)))

    m, v = model["machine"], model["versions"]
    out = ["# Benchmarks: maskd against ONNX Runtime and a Python pipeline\n"]
    out.append("<!-- Written by bench/report.py from bench/results/*.json; edit the script, "
               "not this file. -->\n")
    out.append("Regenerate everything here (measurements, tables, plot) with one command "
               "from the repository root:\n")
    out.append("```\n%s\n```\n" % args.command)
    out.append("It creates `bench/peer/.venv` (onnxruntime, numpy, matplotlib) and builds "
               "`maskd` in release if needed, runs `bench/peer/run.sh` and "
               "`bench/peer/pipeline.sh`, keeps their JSON in `bench/results/` and rewrites "
               "this file and `%s`. `bench/report.sh --help` lists the knobs (threads, "
               "rounds, frames). Run it on an otherwise idle machine: every figure is a "
               "median of alternating runs, but a busy machine still moves them.\n" % plot_name)
    if args.note:
        out.append("> **Note.** %s\n" % args.note)
    out.append("## How to read it\n")
    out.append("- Trust the **ratios** more than the times: they come from runs that "
               "alternate within each round, so a machine whose speed drifts hits both "
               "sides alike. Absolute times depend on the CPU named below.\n"
               "- A **ratio > 1 is good for maskd** in every table (its speed over the other's); "
               "the RSS ratio is the exception (< 1: maskd uses less).\n"
               "- *model* rows compare like with like (the graph run). *frame* rows charge "
               "maskd its whole per-frame work against ONNX Runtime's graph run alone, so "
               "they are the harder comparison for maskd. Section 2 compares whole "
               "programs, frame source to subscribers.\n")
    out.append("## Machine and versions\n")
    out.append("| | |\n|---|---|")
    out.append("| CPU | %s |" % m["cpu"])
    out.append("| SIMD flags | %s |" % (", ".join(m["flags"]) or "none of interest"))
    out.append("| cores | %d |" % m["cores"])
    out.append("| Linux | %s |" % m["kernel"])
    out.append("| maskd | %s |" % v["maskd_commit"])
    out.append("| tract | %s |" % v["tract"])
    out.append("| rustc | %s |" % v["rustc"])
    out.append("| onnxruntime | %s (Python %s, numpy %s) |" % (v["onnxruntime"], v["python"],
                                                               v["numpy"]))
    out.append("| measured | %s |" % model["date"])
    out.append("")
    out += model_section(model, plot_name)
    out += pipeline_section(pipelines)
    out += goals_section(model, pipelines)
    out.append("## What each side does\n")
    out.append(
        "- **maskd bench** (`src/commands/bench/`): a frame is `Engine::infer_sized` "
        "(preprocess: prompt poll and normalisation into the reused image tensor; model: "
        "the segmenter plan's run; postprocess: outputs into the reused `MaskSet`) and "
        "`Publisher::publish` to one subscribed client on a real SOCK_SEQPACKET socket "
        "(the encode-and-publish stage: RLE, FRAME, send). Allocations are counted by the "
        "binary's counting allocator; those made during the plan's run are reported apart. "
        "`maskd bench --json` prints all of it per variant.\n"
        "- **ONNX Runtime** (`bench/peer/ort_bench.py`): one `InferenceSession` per run, "
        "warmed up, then `session.run` on maskd's dumped inputs.\n"
        "- **Python pipeline** (`bench/peer/pipeline.py`): the short script a user would "
        "write instead (about 200 lines of code), doing the same per-frame work as the "
        "daemon, ONNX Runtime with the same options as above.\n")
    with open(args.doc, "w") as f:
        f.write("\n".join(out))
    print("wrote %s and %s" % (args.doc, args.plot))


if __name__ == "__main__":
    main()
