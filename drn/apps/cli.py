"""The `drn` command.

    drn classify IMAGE... --model NAME (--weights PATH | --pretrained | --random-weights) [--fused] [--json]
    drn segment  IMAGE... --model NAME (--weights PATH | --random-weights) [--num-classes K] --out DIR [--ms]
    drn localize IMAGE... --model NAME (--weights PATH | --pretrained | --random-weights) --out DIR
    drn evaluate segment|classify|localize --data DIR ...       (= python -m drn.evaluate)
    drn evaluate segment --images DIR --labels DIR ...          (generated images vs label maps)
    drn weights  [--json] | drn weights import FILE...            (released checkpoints; see drn.apps.weights)
    drn export   --model NAME (--weights PATH | --pretrained | --random-weights) --onnx OUT [--task T] [--size H W]
    drn profile  ...                                            (= python -m drn.profile)
    drn bench    [-h] [PYTEST ARGS...]                          (pytest on the benchmarks, --benchmark-only)

IMAGE may be a folder (its images, recursively). Classify and localize normalise with ImageNet's mean/std; segment
with --info's (a reference-style info.json), else ImageNet's. Weights are always named: a checkpoint, the official
ones, or --random-weights (then a warning: the outputs mean nothing). Classify names ImageNet's classes
(drn/apps/assets/imagenet_classes.txt) for a 1000-class model; --labels overrides.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..zoo.registry import IMAGENET_MEAN, IMAGENET_STD
from . import data, evaluate, export, predict, weights
from .commands import (add_model_args, add_run_args, non_negative_int, positive_int,  # noqa: F401 (re-exported)
                       report_cpu_choices, run_reporting_errors, warn_if_random)
from .palette import draw_box, save_label_png


IMAGENET_CLASSES = Path(__file__).resolve().parent / "assets" / "imagenet_classes.txt"


def _model_args(p: argparse.ArgumentParser, task: str):
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    add_model_args(p, pretrained=task != "segment")
    p.add_argument("--num-classes", type=positive_int, required=False,
                   help="classes (default: the checkpoint's" + ("; needed with --random-weights)" if task == "segment"
                                                                 else "; 1000 otherwise)"))
    add_run_args(p)


def _labels(path) -> list[str] | None:
    if path is None:
        return None
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def _class_names(path, num_classes: int) -> list[str] | None:
    """--labels' names, else ImageNet's for a 1000-class model, else None (classes shown as indices)."""
    if path is not None:
        return _labels(path)
    return _labels(IMAGENET_CLASSES) if num_classes == 1000 else None


def _name(names, c: int) -> str | None:
    return names[c] if names is not None and c < len(names) else None


def _load(args, task: str):
    warn_if_random(f"drn {task}", args)
    return predict.load_model(args.model, task, num_classes=args.num_classes, weights=args.weights,
                              pretrained=getattr(args, "pretrained", False), fused=args.fused, backend=args.backend,
                              device=args.device, cpu_choices=getattr(args, "cpu_choices", None))


def cmd_classify(args) -> int:
    images = data.list_images(args.images)
    model = _load(args, "classify")
    names = _class_names(args.labels, predict.num_classes_of(model))
    for path in images:
        t = time.perf_counter()
        probs = predict.classify(model, data.load_image(path), resize=args.resize, crop=args.crop,
                                 ten_crop=args.ten_crop)
        ms = 1000 * (time.perf_counter() - t)
        top = torch.argsort(probs, descending=True, stable=True)[:args.top].tolist()
        if args.json:
            print(json.dumps({"image": str(path), "top": [{"class": c, "name": _name(names, c),
                                                          "prob": round(float(probs[c]), 6)} for c in top]}))
        else:
            best = ", ".join(f"{_name(names, c) or c} {100 * float(probs[c]):.1f}%" for c in top)
            print(f"{path}: {best}  ({ms:.0f} ms)")
    return 0


def cmd_segment(args) -> int:
    images = data.list_images(args.images)
    model = _load(args, "segment")
    k = predict.num_classes_of(model)
    mean, std = data.read_info(args.info) if args.info else (IMAGENET_MEAN, IMAGENET_STD)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in images:
        img = data.load_image(path)
        t = time.perf_counter()
        labels = predict.segment(model, img, mean=mean, std=std, ms=args.ms)
        ms = 1000 * (time.perf_counter() - t)
        dst = out / f"{Path(path).stem}.png"
        save_label_png(labels.numpy(), dst, k)
        print(f"{path} -> {dst}  ({img.size[0]}x{img.size[1]}, {k} classes, {ms:.0f} ms)")
    report_cpu_choices(model, args)
    return 0


def cmd_localize(args) -> int:
    images = data.list_images(args.images)
    model = _load(args, "localize")
    names = _class_names(args.labels, predict.num_classes_of(model))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in images:
        img = data.load_image(path)
        probs, boxes = predict.localize(model, img, threshold=args.threshold, resize=args.resize)
        cls, box = boxes[0]
        record = {"class": cls, "score": round(float(probs[cls]), 6), "box": [round(v, 2) for v in box]}
        if names is not None:
            record["name"] = _name(names, cls)
        png, js = out / f"{Path(path).stem}.png", out / f"{Path(path).stem}.json"
        draw_box(img, box, f"{_name(names, cls) or cls} {float(probs[cls]):.2f}").save(png)
        js.write_text(json.dumps(record) + "\n")
        print(f"{path} -> {png}, {js}  {json.dumps(record)}")
    return 0


BENCH_HELP = """usage: drn bench [-h] [PYTEST ARGS...]

Runs the benchmark suite (pytest-benchmark, --benchmark-only) of the source checkout drn is installed from,
from any folder. Every other argument goes to pytest. Examples:

  drn bench -m quick                          the subset that runs on a 2-core CPU in minutes
  drn bench -k "test_layer and cpu"           drn_kernels' CPU conv on every DRN layer shape
  drn bench -k "drn_d_22 and classify"        one model, one task, every backend
  drn bench --collect-only -q                 list the benchmark ids (to pick a -k expression)
  drn bench -m quick --benchmark-json out.json

Benchmarks: {where}
"""


def benchmarks_dir() -> Path | None:
    """The benchmarks/ folder next to the drn package (a source checkout or an editable install), or None."""
    folder = Path(__file__).resolve().parents[2] / "benchmarks"
    return folder if (folder / "conftest.py").is_file() else None


def cmd_bench(extra: list[str]) -> int:
    where = benchmarks_dir()
    if extra and extra[0] in ("-h", "--help"):
        print(BENCH_HELP.format(where=where or "not shipped with this install"), end="")
        return 0
    if where is None:
        print("drn bench: error: the benchmarks are not shipped with this install: they live in the source "
              "checkout (benchmarks/); install from a clone with `pip install -e .` to run them",
              file=sys.stderr)
        return 2
    root = where.parent  # its pyproject.toml holds the pytest settings (markers, pythonpath)
    return subprocess.call([sys.executable, "-m", "pytest", "--rootdir", str(root), "-c", str(root / "pyproject.toml"),
                            str(where), "--benchmark-only", *extra])


def cmd_profile(extra: list[str]) -> int:
    from ..tools.profile import main as profile_main

    rc = profile_main(extra)
    return 0 if rc is None else int(rc)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drn", description="Dilated Residual Networks: inference, evaluation, "
                                                             "export, profiling.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("classify", help="top classes of images")
    _model_args(p, "classify")
    p.add_argument("--labels", help="class names, one a line (default: ImageNet's for 1000 classes)")
    p.add_argument("--top", type=positive_int, default=5, help="classes to show (5)")
    p.add_argument("--ten-crop", action="store_true", help="average the paper's 10 crops")
    p.add_argument("--resize", type=non_negative_int, default=256, help="shorter side first (256; 0 keeps the size)")
    p.add_argument("--crop", type=non_negative_int, default=224, help="centre crop (224; 0 = whole image)")
    p.add_argument("--json", action="store_true", help="one JSON line per image")
    p.set_defaults(run=cmd_classify)

    p = sub.add_parser("segment", help="label maps as palette PNGs at the input size")
    _model_args(p, "segment")
    p.add_argument("--out", required=True, help="output folder: OUT/<stem>.png")
    p.add_argument("--ms", action="store_true",
                   help="the reference's multi-scale protocol exactly (scales 1, 0.5, 0.75, 1.25, 1.5, 1.75; "
                        "docs/evaluation.md)")
    p.add_argument("--info", help="info.json with the training set's mean/std (default ImageNet's)")
    p.set_defaults(run=cmd_segment)

    p = sub.add_parser("localize", help="weakly-supervised box of the top class (paper §5.2)")
    _model_args(p, "localize")
    p.add_argument("--out", required=True, help="output folder: OUT/<stem>.png and OUT/<stem>.json")
    p.add_argument("--threshold", type=float, default=0.5, help="cell score threshold (0.5)")
    p.add_argument("--resize", type=non_negative_int, default=0, help="shorter side first (0 keeps the size)")
    p.add_argument("--labels", help="class names, one a line (default: ImageNet's for 1000 classes)")
    p.set_defaults(run=cmd_localize)

    p = sub.add_parser("evaluate", help="accuracy on a dataset (= python -m drn.evaluate)")
    evaluate.add_arguments(p)
    p.set_defaults(run=evaluate.run)

    p = sub.add_parser("weights", help="released checkpoints: list (file, sha256, cached) or import FILE")
    weights.add_arguments(p)
    p.set_defaults(run=weights.run)

    p = sub.add_parser("export", help="BN-folded model to ONNX")
    export.add_arguments(p)
    p.set_defaults(run=export.run)

    sub.add_parser("profile", help="per-layer profile (= python -m drn.profile)", add_help=False)
    sub.add_parser("bench", help="the benchmark suite (drn bench -h)", add_help=False)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "profile":
        return cmd_profile(argv[1:])
    if argv and argv[0] == "bench":
        return cmd_bench(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_reporting_errors(f"drn {args.command}", args.run, args)


if __name__ == "__main__":
    sys.exit(main())
