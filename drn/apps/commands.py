"""What every command line of drn shares (drn.apps.cli, drn.apps.evaluate, drn.apps.export): argument types, the
model, weights and run options declared once, and the main() of a stand-alone command. Imports no command module,
so none of them imports another back.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import drn_kernels


def positive_int(text: str) -> int:
    value = int(text) if text.lstrip("+-").isdigit() else None
    if value is None or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text) if text.lstrip("+-").isdigit() else None
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0 (0 = off), got {text!r}")
    return value


def device_arg(text: str) -> str:
    """--device: 'cpu', 'cuda' or 'cuda:N', and a CUDA device only where torch sees one."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected cpu or cuda[:N], got {text!r}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text}: no CUDA GPU is visible (torch.cuda.is_available() is "
                                             f"False); use --device cpu")
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f"{text}: only {count} CUDA device(s) are visible")
    return text


def add_weight_args(p: argparse.ArgumentParser, pretrained: bool = True) -> None:
    """The one rule for weights: a checkpoint, the official weights, or random weights only when asked for."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="checkpoint path")
    if pretrained:
        src.add_argument("--pretrained", action="store_true",
                         help="official ImageNet weights (downloaded once to the torch hub cache)")
    src.add_argument("--random-weights", action="store_true",
                     help="random weights: outputs mean nothing (for checking the plumbing and the speed)")


def warn_if_random(prog: str, args) -> None:
    if getattr(args, "random_weights", False):
        print(f"{prog}: warning: --random-weights: {args.model} has random weights, its outputs mean nothing",
              file=sys.stderr, flush=True)


def backend_arg(text: str) -> str:
    """--backend: a drn_kernels backend name (drn_kernels.check_backend)."""
    try:
        return drn_kernels.check_backend(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_model_args(p: argparse.ArgumentParser, pretrained: bool = True, weights_required: bool = True) -> None:
    """--model and the weights (add_weight_args)."""
    p.add_argument("--model", required=True, help="registry name (drn.list_models()), e.g. drn_d_22")
    if weights_required:
        add_weight_args(p, pretrained=pretrained)
    else:  # drn evaluate: without weights, the model's random initialisation
        src = p.add_mutually_exclusive_group()
        src.add_argument("--weights", help="checkpoint path")
        if pretrained:
            src.add_argument("--pretrained", action="store_true", help="official ImageNet weights")


def add_run_args(p: argparse.ArgumentParser) -> None:
    """--fused, --backend, --device: how and where the model runs."""
    p.add_argument("--fused", action="store_true", help="run the fused model (drn.fuse: BN folded, drn_kernels)")
    p.add_argument("--backend", type=backend_arg, default="auto",
                   help=f"drn_kernels backend of the fused model: {', '.join(drn_kernels.BACKENDS)} (auto)")
    p.add_argument("--device", type=device_arg, default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--cpu-choices", metavar="FILE", default=None,
                   help="JSON table of the cpu backend's algorithm choices to pin (--fused; written by "
                        "--save-cpu-choices on another machine, or a cache file): the same bits on every machine")
    p.add_argument("--save-cpu-choices", metavar="FILE", default=None,
                   help="write the fused model's cpu algorithm choices to FILE at the end (for --cpu-choices)")


def report_cpu_choices(model, args, out=None) -> None:
    """After a run of a fused model on the cpu backend: one line on stderr saying where its algorithm choices came
    from (pinned, this machine's cache file, measured now), and the table written where --save-cpu-choices says."""
    from drn_kernels import cpu_choices

    if not args.fused or not hasattr(model, "cpu_choices"):
        return
    print(f"drn: {cpu_choices.describe_sources()}", file=out or sys.stderr)
    if args.save_cpu_choices:
        Path(args.save_cpu_choices).write_text(json.dumps(model.cpu_choices(), indent=1) + "\n")


def run_reporting_errors(prog: str, run, args) -> int:
    """run(args), with a bad argument or a missing file (ValueError, FileNotFoundError) reported as
    "PROG: error: ..." on stderr and exit status 2, as argparse does for its own errors."""
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2


def command_main(prog: str, description: str, add_arguments, run, argv=None) -> int:
    """The main() of a stand-alone command (python -m drn.evaluate, python -m drn.apps.export): parse with
    add_arguments, run."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    return run_reporting_errors(prog, run, parser.parse_args(argv))


