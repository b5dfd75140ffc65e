"""What benchmarks.device_check reports: the goals as measured ratios, the tables (terminal and Markdown), the PNG,
the replay of the plan. Reads only the results dict the check writes (device_check-<tag>.json), so a saved JSON can
be reported again: `python -c "import json, benchmarks.device_report as r; print(r.markdown(json.load(open(F))))"`.
"""
from __future__ import annotations

import math
import pathlib

LAYER_PROVIDERS = ("cudnn", "cudnn-fused", "triton", "cuda")
SANITIZER_TOOLS = ("memcheck", "racecheck", "synccheck")
GOALS = {"layer_vs_cudnn": 1.15, "layer_vs_cudnn_fused": 1.0, "model_vs_eager": 1.3, "head_speed": 10.0,
         "head_memory": 50.0}


def rehearsal_lines(rows: list[dict], budget: float) -> list[str]:
    lines = [f"plan replayed against the cost model, budget {budget:.0f} s:"]
    for r in rows:
        when = f"{r['start_s']:6.1f} -> {r['end_s']:6.1f} s" if "start_s" in r else " " * 19
        lines.append(f"  {r['key']:<16} {when}  {r['status']}" + (f" ({r['reason']})" if "reason" in r else ""))
    return lines


def layer_cases(results: dict) -> list[dict]:
    """The per-layer cases of every layers_* step, in the order they ran."""
    return [c for key, rec in results["steps"].items() if key.startswith("layers_") for c in rec.get("cases", [])]


def model_cases(results: dict) -> list[dict]:
    return [rec["case"] for key, rec in results["steps"].items() if key.startswith("model_") and "case" in rec]


def _geomean(values):
    values = [v for v in values if v and v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def dilated_rates(layers: list[dict], provider: str) -> dict:
    """TFLOP/s at d=2 and d=4 over d=1 on the 512-channel 28x28 layers (the same work at each dilation)."""
    rates = {d: _geomean(c["providers"].get(provider, {}).get("tflops") for c in layers
                         if f"_d{d}" in c["layer"] and c["layer"].startswith("n8_c512_28x28_k512")) for d in (1, 2, 4)}
    return {f"d{d}": rates[d] / rates[1] for d in (2, 4) if rates[d] and rates[1]}


def goal_ratios(results: dict) -> dict:
    """The speed goals as measured ratios (geometric means over the layers); reported, never asserted. cuDNN's
    own dilated rates sit beside ours: a goal "at the d=1 rate" means little if cuDNN does not reach it either."""
    out = {}
    layers = layer_cases(results)
    cudnn_rates = dilated_rates(layers, "cudnn")
    if cudnn_rates:
        out["cudnn"] = {"dilated_rate_vs_d1": cudnn_rates}
    for provider in ("triton", "cuda"):
        entries = [c["providers"].get(provider, {}) for c in layers]
        vs = _geomean(e.get("vs_cudnn") for e in entries)
        vs_fused = _geomean(e.get("vs_cudnn_fused") for e in entries)
        if vs is None:
            continue
        out[provider] = {
            "layer_vs_cudnn": {"measured": vs, "goal": GOALS["layer_vs_cudnn"], "met": vs >= GOALS["layer_vs_cudnn"]},
            "layer_vs_cudnn_fused": {"measured": vs_fused, "goal": GOALS["layer_vs_cudnn_fused"],
                                     "met": vs_fused is not None and vs_fused >= GOALS["layer_vs_cudnn_fused"]},
            "dilated_rate_vs_d1": dilated_rates(layers, provider),
            "all_layers_correct": all(e.get("ok", True) for e in entries),
        }
    for case in model_cases(results):
        for provider in ("fused-triton", "fused-cuda"):
            entry = case["providers"].get(provider, {})
            if entry.get("vs_eager"):
                d = out.setdefault(provider.split("-")[1], {})
                d[f"model_{case['model']}_vs_eager"] = {"measured": entry["vs_eager"], "goal": GOALS["model_vs_eager"],
                                                        "met": entry["vs_eager"] >= GOALS["model_vs_eager"]}
                if entry.get("host_us_per_conv") is not None:
                    d[f"model_{case['model']}_host_us_per_conv"] = entry["host_us_per_conv"]
    for provider, entry in results["steps"].get("head", {}).get("providers", {}).items():
        if entry.get("speedup"):
            d = out.setdefault(provider.split("-")[1], {})
            d["head_speed"] = {"measured": entry["speedup"], "goal": GOALS["head_speed"],
                               "met": entry["speedup"] >= GOALS["head_speed"]}
            if entry.get("working_memory_ratio"):
                d["head_working_memory"] = {"measured": entry["working_memory_ratio"], "goal": GOALS["head_memory"],
                                            "met": entry["working_memory_ratio"] >= GOALS["head_memory"]}
    return out


def _fmt(v, spec=".3g"):
    return "" if v is None else (f"{v:{spec}}" if isinstance(v, (int, float)) else str(v))


def layer_table(results: dict, markdown_style: bool) -> list[str]:
    cols = ["layer"] + [f"{p} ms" for p in LAYER_PROVIDERS] + ["triton x", "cuda x", "ok"]
    rows = []
    for c in layer_cases(results):
        pv = c["providers"]
        ms = [_fmt(pv.get(p, {}).get("median_ms"), ".3f") or ("err" if "error" in pv.get(p, {}) else "-")
              for p in LAYER_PROVIDERS]
        ratios = [_fmt(pv.get(p, {}).get("vs_cudnn"), ".2f") for p in ("triton", "cuda")]
        ok = "yes" if all(e.get("ok", True) and "error" not in e for e in pv.values()) else "NO"
        rows.append([c["layer"], *ms, *ratios, ok])
    return _render(cols, rows, markdown_style)


def _render(cols, rows, markdown_style: bool) -> list[str]:
    if markdown_style:
        return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + ["| " + " | ".join(r) + " |" for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*cols)] + [fmt.format(*r) for r in rows]


def summary_lines(results: dict, markdown_style: bool = False) -> list[str]:
    lines = []
    head = "##" if markdown_style else "=="
    env = results.get("env", {})
    steps = results["steps"]
    lines.append(f"{head} drn-kernels device check{' (DRY RUN on the CPU)' if results['dry_run'] else ''}: "
                 f"{env.get('device', '?')}; python {env.get('python', '?')}, torch {env.get('torch', '?')}, "
                 f"triton {env.get('triton', '?')}; {results.get('elapsed_s', 0):.0f} s of {results['budget_s']:.0f}")
    b = results["build"]
    lines.append(f"build: {b.get('status')}" + (f" in {b.get('seconds', '?')} s ({b.get('arch')}); cuda backend: "
                                                 f"{b.get('cuda_backend', '?')}" if "seconds" in b else ""))
    lines.append("steps: " + ", ".join(f"{k} {v.get('status')}" + (f" ({v['seconds']:.0f}/{v['expected_s']:.0f} s)"
                                                                   if 'seconds' in v else "")
                                       for k, v in steps.items()))
    if steps.get("device", {}).get("ceilings"):
        lines.append("ceilings: " + ", ".join(f"{k} {v:.4g}" for k, v in steps["device"]["ceilings"].items()))
    for key in ("smoke_triton", "smoke_cuda"):
        p = steps.get(key, {}).get("pytest")
        if p:
            lines.append(f"{key}: {p['counts']}{' CUT' if p['cut'] else ''}"
                         + (f"; failed: {', '.join(p['failed'][:4])}" if p['failed'] else ""))
    san = steps.get("sanitizers", {})
    for tool in ("payload",) + SANITIZER_TOOLS:
        if tool in san:
            s = san[tool]
            lines.append(f"{tool}: {s.get('status') or s.get('skipped') or ''}"
                         + ("" if "skipped" in s else f" payload {'OK' if s.get('payload_ok') else 'NOT OK'}"))
    layer_lines = layer_table(results, markdown_style)
    if len(layer_lines) > (2 if markdown_style else 1):
        lines += ["", f"{head} per layer (median ms; x = speedup over cudnn)" if markdown_style
                  else "per layer (median ms; x = speedup over cudnn):"]
        lines += layer_lines
    rows = []
    for c in model_cases(results):
        for p, e in c["providers"].items():
            rows.append([f"{c['model']} {c['task']}", p, _fmt(e.get("median_ms"), ".2f"), _fmt(e.get("peak_mb"), ".0f"),
                         _fmt(e.get("vs_eager"), ".2f"),
                         _fmt(e.get("rel_err", e.get("label_agreement")), ".3g"),
                         (e.get("skipped") or e.get("error") or e.get("cut") or
                          (f"host {e['host_us_per_conv']:.0f} us/conv" if e.get("host_us_per_conv") is not None
                           else ""))[:60]])
    for p, e in steps.get("head", {}).get("providers", {}).items():
        rows.append(["head 19 cls x8", p, _fmt(e.get("median_ms"), ".2f"), _fmt(e.get("peak_mb"), ".0f"),
                     _fmt(e.get("speedup"), ".2f"), _fmt(e.get("label_agreement"), ".4g"),
                     (e.get("skipped") or e.get("error") or
                      (f"working {e['working_mb']:.1f} MB beyond {e['outputs_mb']:.1f} MB of outputs"
                       if e.get("working_mb") is not None else ""))[:60]])
    if rows:
        lines += ["", f"{head} models and head" if markdown_style else "models and head:"]
        lines += _render(["case", "provider", "ms", "peak MB", "x eager", "err / agree", "note"], rows,
                         markdown_style)
    goals = results.get("goals", {})
    if goals:
        lines += ["", f"{head} goals (reported, not asserted)" if markdown_style else "goals (reported, not asserted):"]
        for provider, d in goals.items():
            parts = []
            for k, v in d.items():
                if isinstance(v, dict) and "measured" in v:
                    parts.append(f"{k} {_fmt(v['measured'], '.2f')}/{v['goal']} {'met' if v['met'] else 'MISSED'}")
                elif isinstance(v, dict) and v:
                    parts.append(f"{k} " + " ".join(f"{a}={b:.2f}" for a, b in v.items()))
                elif isinstance(v, bool):
                    parts.append(f"{k} {'yes' if v else 'NO'}")
                elif isinstance(v, float):
                    parts.append(f"{k} {v:.1f}")
            lines.append(f"{'- ' if markdown_style else '  '}{provider}: " + "; ".join(parts))
    if results.get("rehearsal"):
        lines += ["", *rehearsal_lines(results["rehearsal"], results.get("rehearsal_budget_s", 0))]
    return lines


def markdown(results: dict) -> str:
    return "\n".join(summary_lines(results, markdown_style=True)) + "\n"


def plot(results: dict, path: pathlib.Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = layer_cases(results)
    fig, axes = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [3, 1]})
    ax = axes[0]
    width = 0.25
    for j, p in enumerate(("cudnn-fused", "triton", "cuda")):
        xs, ys = [], []
        for i, c in enumerate(cases):
            base = c["providers"].get("cudnn", {}).get("median_ms")
            t = c["providers"].get(p, {}).get("median_ms")
            if base and t:
                xs.append(i + (j - 1) * width)
                ys.append(base / t)
        ax.bar(xs, ys, width, label=p)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(GOALS["layer_vs_cudnn"], color="r", lw=0.8, ls="--", label="goal 1.15x")
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([c["layer"] for c in cases], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("speedup over eager cuDNN (median)")
    ax.set_title("per layer" + (" (DRY RUN: CPU stand-ins)" if results["dry_run"] else ""))
    ax.legend(fontsize=8)
    ax = axes[1]
    labels, values = [], []
    for c in model_cases(results):
        for p, e in c["providers"].items():
            if e.get("vs_eager"):
                labels.append(f"{c['model']}\n{p}")
                values.append(e["vs_eager"])
    for p, e in results["steps"].get("head", {}).get("providers", {}).items():
        if e.get("speedup"):
            labels.append(f"head\n{p}")
            values.append(e["speedup"])
    ax.bar(range(len(values)), values)
    ax.set_xticks(range(len(values)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_title("models and head: speedup over eager")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
