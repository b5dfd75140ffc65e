"""The `drn` command.

    drn classify IMAGE... --model NAME [--weights PATH | --pretrained] [--fused] [--json]
    drn segment  IMAGE... --model NAME --num-classes K --weights PATH --out DIR [--fused] [--ms] [--info JSON]
    drn localize IMAGE... --model NAME [--weights PATH | --pretrained] --out DIR [--threshold T]
    drn evaluate segment|classify|localize --data DIR ...       (= python -m drn.evaluate)
    drn export   --model NAME --weights PATH --onnx OUT [--task T] [--size H W]
    drn profile  ...                                            (= python -m drn.profile)
    drn bench    [PYTEST ARGS...]                               (= pytest benchmarks --benchmark-only ...)

IMAGE may be a folder (its images, recursively). Classify and localize normalise with ImageNet's mean/std; segment
with --info's (a reference-style info.json), else ImageNet's.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from . import data, predict
from .palette import draw_box, save_label_png
from .registry import IMAGENET_MEAN, IMAGENET_STD


def _model_args(p: argparse.ArgumentParser, task: str):
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    p.add_argument("--model", required=True, help="registry name (drn.list_models())")
    src = p.add_mutually_exclusive_group(required=task == "segment")
    src.add_argument("--weights", help="checkpoint path")
    if task != "segment":
        src.add_argument("--pretrained", action="store_true", help="official ImageNet weights (downloaded)")
    p.add_argument("--num-classes", type=int, required=False, help="classes (default: the checkpoint's)")
    p.add_argument("--fused", action="store_true", help="run the fused model (drn.fuse: BN folded, drn_kernels)")
    p.add_argument("--backend", default="auto", help="drn_kernels backend of the fused model (auto)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def _labels(path) -> list[str] | None:
    if path is None:
        return None
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def _name(names, c: int) -> str | None:
    return names[c] if names is not None and c < len(names) else None


def _load(args, task: str):
    return predict.load_model(args.model, task, num_classes=args.num_classes, weights=args.weights,
                              pretrained=getattr(args, "pretrained", False), fused=args.fused, backend=args.backend,
                              device=args.device)


def cmd_classify(args) -> int:
    model = _load(args, "classify")
    names = _labels(args.labels)
    for path in data.list_images(args.images):
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
    model = _load(args, "segment")
    k = predict.num_classes_of(model)
    mean, std = data.read_info(args.info) if args.info else (IMAGENET_MEAN, IMAGENET_STD)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in data.list_images(args.images):
        img = data.load_image(path)
        t = time.perf_counter()
        labels = predict.segment(model, img, mean=mean, std=std, ms=args.ms)
        ms = 1000 * (time.perf_counter() - t)
        dst = out / f"{Path(path).stem}.png"
        save_label_png(labels.numpy(), dst, k)
        print(f"{path} -> {dst}  ({img.size[0]}x{img.size[1]}, {k} classes, {ms:.0f} ms)")
    return 0


def cmd_localize(args) -> int:
    model = _load(args, "localize")
    names = _labels(args.labels)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in data.list_images(args.images):
        img = data.load_image(path)
        probs, boxes = predict.localize(model, img, threshold=args.threshold, resize=args.resize)
        cls, box = boxes[0]
        record = {"class": cls, "score": round(float(probs[cls]), 6), "box": [round(v, 2) for v in box]}
        if names is not None:
            record["name"] = _name(names, cls)
        stem = Path(path).stem
        draw_box(img, box, f"{_name(names, cls) or cls} {float(probs[cls]):.2f}").save(out / f"{stem}.png")
        (out / f"{stem}.json").write_text(json.dumps(record) + "\n")
        print(f"{path} -> {out / stem}.png/.json  {json.dumps(record)}")
    return 0


def cmd_bench(extra: list[str]) -> int:
    return subprocess.call([sys.executable, "-m", "pytest", "benchmarks", "--benchmark-only", *extra])


def cmd_profile(extra: list[str]) -> int:
    from .profile import main as profile_main

    rc = profile_main(extra)
    return 0 if rc is None else int(rc)


def build_parser() -> argparse.ArgumentParser:
    from . import evaluate, export

    parser = argparse.ArgumentParser(prog="drn", description="Dilated Residual Networks: inference, evaluation, "
                                                             "export, profiling.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("classify", help="top classes of images")
    _model_args(p, "classify")
    p.add_argument("--labels", help="class names, one a line")
    p.add_argument("--top", type=int, default=5, help="classes to show (5)")
    p.add_argument("--ten-crop", action="store_true", help="average the paper's 10 crops")
    p.add_argument("--resize", type=int, default=256, help="shorter side first (256; 0 keeps the size)")
    p.add_argument("--crop", type=int, default=224, help="centre crop (224; 0 = whole image)")
    p.add_argument("--json", action="store_true", help="one JSON line per image")
    p.set_defaults(run=cmd_classify)

    p = sub.add_parser("segment", help="label maps as palette PNGs at the input size")
    _model_args(p, "segment")
    p.add_argument("--out", required=True, help="output folder: OUT/<stem>.png")
    p.add_argument("--ms", action="store_true", help="multi-scale 0.5 ... 1.75 as the reference")
    p.add_argument("--info", help="info.json with the training set's mean/std (default ImageNet's)")
    p.set_defaults(run=cmd_segment)

    p = sub.add_parser("localize", help="weakly-supervised box of the top class (paper §5.2)")
    _model_args(p, "localize")
    p.add_argument("--out", required=True, help="output folder: OUT/<stem>.png and OUT/<stem>.json")
    p.add_argument("--threshold", type=float, default=0.5, help="cell score threshold (0.5)")
    p.add_argument("--resize", type=int, default=0, help="shorter side first (0 keeps the size)")
    p.add_argument("--labels", help="class names, one a line")
    p.set_defaults(run=cmd_localize)

    p = sub.add_parser("evaluate", help="accuracy on a dataset (= python -m drn.evaluate)")
    evaluate.add_arguments(p)
    p.set_defaults(run=evaluate.run)

    p = sub.add_parser("export", help="BN-folded model to ONNX")
    export.add_arguments(p)
    p.set_defaults(run=export.run)

    sub.add_parser("profile", help="per-layer profile (= python -m drn.profile)", add_help=False)
    sub.add_parser("bench", help="pytest benchmarks --benchmark-only [ARGS]", add_help=False)
    return parser


def run_reporting_errors(prog: str, run, args) -> int:
    """run(args), with a bad argument or a missing file (ValueError, FileNotFoundError) reported as
    "PROG: error: ..." on stderr and exit status 2, as argparse does for its own errors."""
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2


def command_main(prog: str, description: str, add_arguments, run, argv=None) -> int:
    """The main() of a stand-alone command (python -m drn.evaluate, drn.export): parse with add_arguments, run."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    return run_reporting_errors(prog, run, parser.parse_args(argv))


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
