"""Turn benchmark JSON (pytest-benchmark's --benchmark-json, or the file a timed session writes to
benchmarks/results/<device>.json) into a table and a PNG of speedups over the baseline provider.

    python -m benchmarks.report [RESULTS.json ...] [--out DIR] [--markdown]

Without arguments: every JSON in benchmarks/results/. Writes <stem>.md and <stem>.png next to each input (or in
--out) and prints the table. Speedup = baseline median / provider median within a group (cudnn on GPU,
eager-cl on CPU); on the GPU a second column against cudnn-fused (cuDNN with BatchNorm folded and its fused
conv+bias(+add)+ReLU entry points), the fair baseline for fused kernels.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections import defaultdict

from benchmarks.harness import RESULTS_DIR


def load(path: pathlib.Path) -> list[dict]:
    """Records {group, provider, median, extra_info} from either JSON layout."""
    data = json.loads(path.read_text())
    out = []
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        return out  # not a benchmark results file (e.g. the aot tool's records)
    for b in data["benchmarks"]:
        if not isinstance(b, dict):
            continue
        info = b.get("extra_info", {})
        provider = b.get("provider") or info.get("provider") or b.get("param") or b.get("name")
        median = b.get("stats", {}).get("median")
        if median is None:
            continue
        out.append({"group": b.get("group") or "", "provider": provider, "median": median, "info": info})
    return out


def speedups(records: list[dict], baseline_key: str = "baseline") -> dict:
    """(group, provider) -> speedup over the group's provider named by extra_info[baseline_key] ("baseline", or
    "fused_baseline": cudnn-fused on the GPU)."""
    by_group = defaultdict(dict)
    for r in records:
        by_group[r["group"]][r["provider"]] = r
    out = {}
    for group, providers in by_group.items():
        baseline = next((r["info"].get(baseline_key) for r in providers.values() if r["info"].get(baseline_key)),
                        None)
        if baseline in providers:
            for p, r in providers.items():
                out[(group, p)] = providers[baseline]["median"] / r["median"]
    return out


def table(records: list[dict], markdown: bool = False) -> str:
    sp = speedups(records)
    fused = speedups(records, "fused_baseline")
    cols = ["group", "provider", "median ms", "TFLOP/s", "GB/s", "% roofline", "speedup", "peak MB", "cache MB"]
    if fused:
        cols.insert(7, "vs cudnn-fused")
    rows = []
    for r in sorted(records, key=lambda r: (not r["group"].startswith("model"), r["group"], r["provider"])):
        info = r["info"]
        flops, nbytes, t = info.get("flops", 0), info.get("bytes", 0), r["median"]
        roof = info.get("roofline")
        s = sp.get((r["group"], r["provider"]))
        rows.append([r["group"], r["provider"], f"{t * 1e3:.2f}", f"{flops / t / 1e12:.3f}" if flops else "",
                     f"{nbytes / t / 1e9:.1f}" if nbytes else "", f"{100 * roof:.1f}" if roof is not None else "",
                     f"{s:.2f}x" if s is not None else "",
                     f"{info['peak_mb']:.0f}" if info.get("peak_mb") is not None else "",
                     f"{info['cache_mb']:.0f}" if info.get("cache_mb") is not None else ""])
        if fused:
            f = fused.get((r["group"], r["provider"]))
            rows[-1].insert(7, f"{f:.2f}x" if f is not None else "")
    if markdown:
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*cols), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])


CPU_PEERS = ("eager-cl", "inductor", "onnxruntime", "openvino")  # what a CPU user would pick instead


def cpu_goals(records: list[dict]) -> list[dict]:
    """The CPU speed goals, per case of one run: the fused `cpu` provider against the fastest fp32 peer
    (eager-cl, inductor, onnxruntime, openvino) of the same model, task and input — fp32 (goal >= 1.5x) and bf16
    (goal >= 2.5x where the CPU computes bfloat16 natively; elsewhere bf16 computes in float32 and the goal is
    fused bf16 time <= 1.0x fused fp32: "bf16_vs_fp32"). Groups are "<kind>:<name>:<task>:<shape>:<dtype>": kind "goal" (test_bench_cpu_goals.py, the
    providers timed interleaved) wins over kind "model" (test_bench_models.py, timed one after another) for the
    same case."""
    medians = {(r["group"], r["provider"]): r["median"] for r in records}
    rows = {}
    for group in sorted({r["group"] for r in records}):
        kind, _, rest = group.partition(":")
        if kind not in ("goal", "model") or not rest.endswith(":float32"):
            continue
        stem = group[:-len(":float32")]
        case = rest[:-len(":float32")]
        peers = {p: medians[(group, p)] for p in CPU_PEERS if (group, p) in medians}
        if not peers or (group, "cpu") not in medians or (case in rows and kind == "model"):
            continue
        fastest = min(peers, key=peers.get)
        row = {"case": case, "timing": "interleaved" if kind == "goal" else "one after another",
               "fastest_peer": fastest, "peer_ms": peers[fastest] * 1e3,
               "fused_fp32_ms": medians[(group, "cpu")] * 1e3, "fp32_ratio": peers[fastest] / medians[(group, "cpu")]}
        if (f"{stem}:bfloat16", "cpu") in medians:
            bf16 = medians[(f"{stem}:bfloat16", "cpu")]
            row.update(fused_bf16_ms=bf16 * 1e3, bf16_ratio=peers[fastest] / bf16,
                       bf16_vs_fp32=bf16 / medians[(group, "cpu")])
        rows[case] = row
    return [rows[c] for c in sorted(rows)]


def goals_markdown(rows: list[dict]) -> str:
    lines = ["| model, task, input | fastest fp32 peer | fused fp32 | ratio (goal 1.5) | fused bf16 | ratio (goal 2.5 "
             "native bf16) | bf16 / fp32 time (goal <= 1.0 without) | timing |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bf16 = (f"{r['fused_bf16_ms']:.1f} ms | {r['bf16_ratio']:.2f}x | {r['bf16_vs_fp32']:.2f}x"
                if "bf16_ratio" in r else " | | ")
        lines.append(f"| {r['case']} | {r['fastest_peer']} {r['peer_ms']:.1f} ms | {r['fused_fp32_ms']:.1f} ms | "
                     f"{r['fp32_ratio']:.2f}x | {bf16} | {r['timing']} |")
    return "\n".join(lines)


def plot(records: list[dict], path: pathlib.Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sp = speedups(records)
    groups = sorted({g for g, _ in sp}, key=lambda g: (not g.startswith("model"), g))
    providers = sorted({p for _, p in sp})
    if not groups:
        return False
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(groups) * max(1, len(providers)) / 2), 5))
    width = 0.8 / max(1, len(providers))
    for i, p in enumerate(providers):
        xs = [j + i * width for j, g in enumerate(groups) if (g, p) in sp]
        ys = [sp[(g, p)] for g in groups if (g, p) in sp]
        ax.bar(xs, ys, width, label=p)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))])
    ax.set_xticklabels([g.split(":", 1)[1] for g in groups], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("speedup over baseline (median)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", type=pathlib.Path)
    p.add_argument("--out", type=pathlib.Path, default=None, help="directory for the .md and .png")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = p.parse_args(argv)
    files = args.files or sorted(RESULTS_DIR.glob("*.json"))
    if not files:
        print(f"no results in {RESULTS_DIR}", file=sys.stderr)
        return 1
    for f in files:
        records = load(f)
        if not records:
            continue
        out_dir = args.out or f.parent
        out_dir.mkdir(parents=True, exist_ok=True)
        print(f"== {f.name}: {len(records)} benchmarks")
        print(table(records, args.markdown))
        goals = cpu_goals(records)
        md = table(records, markdown=True) + "\n"
        if goals:
            print(goals_markdown(goals))
            md += "\nCPU goals (fused `cpu` vs the fastest fp32 peer of the same case, one run):\n\n" + \
                goals_markdown(goals) + "\n"
        (out_dir / f"{f.stem}.md").write_text(md)
        if plot(records, out_dir / f"{f.stem}.png", f.stem):
            print(f"wrote {out_dir / (f.stem + '.md')} and {out_dir / (f.stem + '.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
