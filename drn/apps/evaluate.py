"""`drn evaluate segment|classify|localize` (also `python -m drn.evaluate ...`): accuracy on a dataset on disk.

    segment   --data DIR  reference layout: DIR/val_images.txt, DIR/val_labels.txt, DIR/info.json; 255 = ignore.
                          Per-class IoU and mIoU (mean over the classes that occur in the labels or predictions),
                          pixel accuracy with the ignore pixels excluded and counted as wrong.
              --images DIR --labels DIR  images (e.g. generated ones) against label maps matched by file stem,
                          Cityscapes label ids or train ids, --resize labels|images|none where sizes differ
                          (docs/evaluation.md: the image-synthesis papers' protocols).
    classify  --data DIR  ImageFolder tree DIR/<class>/<image>, classes sorted; top-1 / top-5 of the paper's
                          1-crop (centre 224 of the 256-resized image) or 10-crop (--ten-crop) protocol.
    localize  --data DIR  images plus ground-truth boxes (DIR/boxes.csv or VOC/ImageNet XML, see drn.apps.data);
                          the paper's localization error: an image counts as right when the predicted class is one
                          of its objects' and the box has IoU > 0.5 with one of that class's boxes (top-1, and
                          top-5 over the five most probable classes' boxes).

Under torchrun the images are split over the processes (every WORLD_SIZE-th image from RANK on; gloo on CPU,
nccl on GPU) and the integer confusion matrix / counts are summed with all_reduce, so the numbers are exactly
those of one process. Only rank 0 prints. --json prints one JSON line last.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..zoo.registry import CITYSCAPES_MEAN, CITYSCAPES_STD, IMAGENET_MEAN, IMAGENET_STD
from . import data, predict
from .commands import add_model_args, add_run_args, command_main, report_cpu_choices
from .palette import CITYSCAPES_CLASSES


# --------------------------------------------------------------------------------------------- processes

class Processes:
    """This process's place among torchrun's processes (rank 0 of 1 without torchrun)."""

    def __init__(self, device: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = torch.device(device)
        self.group = False
        if self.world > 1:
            import torch.distributed as dist

            if self.device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self.group = True

    def sum(self, counts: np.ndarray) -> np.ndarray:
        """Element-wise sum of an integer array over the processes (exact: int64)."""
        if not self.group:
            return counts
        import torch.distributed as dist

        t = torch.from_numpy(np.ascontiguousarray(counts, dtype=np.int64)).to(self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().numpy()

    def close(self):
        if self.group:
            import torch.distributed as dist

            dist.destroy_process_group()


def progress(items, rank: int, desc: str):
    return tqdm(items, desc=desc, unit="img", file=sys.stderr, disable=rank != 0, dynamic_ncols=True)


# ----------------------------------------------------------------------------------------------- metrics

def confusion(pred: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts: row = ground truth, column = prediction; ignore-labelled pixels skipped."""
    keep = (label >= 0) & (label < num_classes)
    idx = num_classes * label[keep].astype(np.int64) + pred[keep].astype(np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_from_confusion(hist: np.ndarray) -> np.ndarray:
    """Per-class IoU = TP / (TP + FP + FN); NaN for a class absent from labels and predictions."""
    tp = np.diag(hist).astype(np.float64)
    union = hist.sum(0) + hist.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def _num(v: float):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 6)


# -------------------------------------------------------------------------------------------- evaluators

RESIZE_POLICIES = ("labels", "images", "none")


def segment_pairs(model, pairs, num_classes: int, procs: Processes, *, mean, std, ms=False, resize="none",
                  label_format="train-ids") -> dict:
    """Scores of (image, label map) pairs: the confusion matrix over the pixels whose label is not ignored.

    resize: where an image and its label map differ in size — "labels": the label map resized to the image by
    PIL's nearest filter (the image-synthesis papers' protocol: generated 512x256 images, labels brought down
    to them); "images": the image resized to the label map by PIL's bicubic filter (before the model, so
    predictions are at the labels' resolution); "none": sizes must be equal (an error names the file).
    """
    if resize not in RESIZE_POLICIES:
        raise ValueError(f"resize must be one of {RESIZE_POLICIES}, got {resize!r}")
    hist = np.zeros((num_classes, num_classes), dtype=np.int64)
    pixels = np.zeros(1, dtype=np.int64)
    start = time.perf_counter()
    for image_path, label_path in progress(data.shard(list(pairs), procs.rank, procs.world), procs.rank, "segment"):
        img = data.load_image(image_path)
        if resize == "images":
            with Image.open(label_path) as lab:
                if lab.size != img.size:
                    img = img.resize(lab.size, Image.BICUBIC)
        label = data.read_label(label_path, num_classes, size=img.size, label_format=label_format,
                                resize_to=img.size if resize == "labels" else None)
        pred = predict.segment(model, img, mean=mean, std=std, ms=ms).numpy()
        hist += confusion(pred, label, num_classes)
        pixels += label.size
    hist, pixels = procs.sum(hist), int(procs.sum(pixels)[0])
    seconds = time.perf_counter() - start
    iou = iou_from_confusion(hist)
    miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
    right, counted = int(np.diag(hist).sum()), int(hist.sum())
    images = len(pairs)
    return {"miou": _num(miou), "iou": [_num(v) for v in iou], "images": images, "pixels": pixels,
            "ignored_pixels": pixels - counted,
            "pixel_accuracy": _num(right / counted if counted else float("nan")),
            "pixel_accuracy_all": _num(right / pixels if pixels else float("nan")),
            "images_per_s": _num(images / seconds if seconds > 0 else float("nan"))}


def evaluate_segment(model, dataset: data.SegmentationSet, num_classes: int, procs: Processes, ms=False) -> dict:
    """The reference layout: image and label map of equal size, train ids, the dataset's mean/std."""
    return segment_pairs(model, list(zip(dataset.images, dataset.labels)), num_classes, procs, mean=dataset.mean,
                         std=dataset.std, ms=ms)


def evaluate_classify(model, samples, procs: Processes, ten_crop=False, resize=256, crop=224) -> dict:
    counts = np.zeros(3, dtype=np.int64)  # images, top-1 right, top-5 right
    for path, label in progress(data.shard(samples, procs.rank, procs.world), procs.rank, "classify"):
        probs = predict.classify(model, data.load_image(path), resize=resize, crop=crop, ten_crop=ten_crop)
        top = torch.argsort(probs, descending=True, stable=True)[:5].tolist()
        counts += (1, top[0] == label, label in top)
    n, top1, top5 = procs.sum(counts).tolist()
    return {"top1": _num(top1 / n), "top5": _num(top5 / n), "top1_error": _num(1 - top1 / n),
            "top5_error": _num(1 - top5 / n), "images": n}


def evaluate_localize(model, samples, procs: Processes, threshold=0.5, *, loc_resize=0, ten_crop=False, resize=256,
                      crop=224) -> dict:
    """Paper §5.2's localization error. loc_resize (--loc-resize): shorter side of the image the boxes' cell maps
    are computed on (0: its own size); resize and crop (--resize, --crop): the 10-crop classification's."""
    # images, top-1 class right, top-5 class right, top-1 localization right, top-5 localization right
    counts = np.zeros(5, dtype=np.int64)
    for sample in progress(data.shard(samples, procs.rank, procs.world), procs.rank, "localize"):
        img = data.load_image(sample.image)
        probs, boxes = predict.localize(model, img, threshold=threshold, resize=loc_resize, top=5)
        if ten_crop:  # the paper: classes from 10-crop testing, boxes from the whole image's maps
            probs = predict.classify(model, img, resize=resize, crop=crop, ten_crop=True)
            order = torch.argsort(probs, descending=True, stable=True)[:5].tolist()
            boxes = _boxes_for(model, img, order, threshold, loc_resize)
        truth = {c for c, _ in sample.boxes}
        right = [c in truth and any(data.box_iou(b, g) > 0.5 for gc, g in sample.boxes if gc == c)
                 for c, b in boxes]
        counts += (1, boxes[0][0] in truth, any(c in truth for c, _ in boxes), right[0], any(right))
    n, cls1, cls5, loc1, loc5 = procs.sum(counts).tolist()
    return {"top1_loc_error": _num(1 - loc1 / n), "top5_loc_error": _num(1 - loc5 / n),
            "top1_error": _num(1 - cls1 / n), "top5_error": _num(1 - cls5 / n), "images": n}


@torch.no_grad()
def _boxes_for(model, img, classes, threshold, resize):
    """Boxes of the given classes from the whole image's cell maps."""
    seen = data.resize_shorter(img, resize) if resize else img
    out = model(data.to_tensor(seen)[None].to(predict.model_device(model)), threshold=threshold)
    labels, scores = out.labels[0].cpu(), out.scores[0].cpu()
    return [(c, predict.scale_box(predict.class_box(labels, scores, c, threshold), seen.size, img.size))
                  for c in classes]


# ---------------------------------------------------------------------------------------------- printing

def print_segment(result: dict, num_classes: int, out=None):
    names = CITYSCAPES_CLASSES if num_classes == 19 else [str(i) for i in range(num_classes)]
    width = max(len(n) for n in names)
    print(f"{'class':<{width}}  IoU", file=out)
    for name, v in zip(names, result["iou"]):
        print(f"{name:<{width}}  {'  n/a' if v is None else f'{100 * v:5.2f}'}", file=out)
    miou, acc, acc_all = result["miou"], result["pixel_accuracy"], result["pixel_accuracy_all"]
    pct = lambda v: "n/a" if v is None else f"{100 * v:.2f}"  # noqa: E731
    print(f"mIoU {pct(miou)} over {result['images']} images, {result['pixels']} pixels; pixel accuracy "
          f"{pct(acc)} (ignore pixels excluded), {pct(acc_all)} (ignore pixels counted as wrong); "
          f"{result['images_per_s'] or 0:.2f} images/s", file=out)


def print_counts(result: dict, out=None):
    for k, v in result.items():
        print(f"{k:<15} {v if k == 'images' else f'{100 * v:.2f}%'}", file=out)


# ---------------------------------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser):
    sub = parser.add_subparsers(dest="task", required=True, metavar="{segment,classify,localize}")
    for task, help_ in (("segment", "per-class IoU and mIoU on the reference's segmentation layout"),
                        ("classify", "top-1/top-5 accuracy on an ImageFolder tree"),
                        ("localize", "the paper's weakly-supervised localization error")):
        p = sub.add_parser(task, help=help_, description=help_)
        if task == "segment":
            src = p.add_mutually_exclusive_group(required=True)
            src.add_argument("--data", help="dataset folder in the reference's layout (val_images.txt, ...)")
            src.add_argument("--images", help="folder of images (e.g. generated ones) scored against --labels")
            p.add_argument("--labels", help="with --images: folder of label maps, matched by file stem "
                                            "(Cityscapes X_leftImg8bit.png <-> X_gtFine_labelIds.png)")
            p.add_argument("--resize", choices=RESIZE_POLICIES, default=None,
                           help="with --images, where sizes differ: labels = label maps resized to the images "
                                "(nearest; default), images = images resized to the label maps (bicubic), "
                                "none = sizes must match")
            p.add_argument("--label-format", choices=data.LABEL_FORMATS, default=None,
                           help="with --images: cityscapes-ids (gtFine *_labelIds.png, mapped to the 19 train ids), "
                                "train-ids (255 = ignore), auto = cityscapes-ids for *_labelIds.png (default)")
            p.add_argument("--info", help="with --images: info.json with the training set's mean/std (default: "
                                          "Cityscapes' for 19 classes, ImageNet's otherwise)")
        else:
            p.add_argument("--data", required=True, help="dataset folder")
        add_model_args(p, pretrained=task != "segment", weights_required=False)
        p.add_argument("--num-classes", type=int, required=False,
                       help="classes (default: the checkpoint's)" + ("; required without a checkpoint"
                                                                    if task == "segment" else ""))
        add_run_args(p)
        p.add_argument("--json", action="store_true", help="print one JSON line with the result last")
        if task == "segment":
            p.add_argument("--ms", action="store_true",
                           help="the reference's multi-scale protocol exactly (scales 1, 0.5, 0.75, 1.25, 1.5, 1.75; "
                                "see drn.apps.multiscale)")
            p.add_argument("--phase", default="val", help="list prefix: <phase>_images.txt (default val)")
        else:
            p.add_argument("--ten-crop", action="store_true", help="10-crop class prediction (paper protocol)")
            p.add_argument("--resize", type=int, default=256, help="shorter side before cropping (256)")
            p.add_argument("--crop", type=int, default=224, help="crop side (224)")
        if task == "localize":
            p.add_argument("--boxes", help="CSV file or folder of XML files (default: DIR/boxes.csv or XMLs)")
            p.add_argument("--classes", help="class names, one a line (default: see drn.apps.data.read_boxes)")
            p.add_argument("--threshold", type=float, default=0.5, help="cell score threshold (0.5)")
            p.add_argument("--loc-resize", type=int, default=0,
                           help="shorter side of the image the maps are computed on (0: its own size)")


def run(args) -> int:
    device = args.device or predict.default_device()
    procs = Processes(device)
    try:
        model = predict.load_model(args.model, args.task, num_classes=args.num_classes, weights=args.weights,
                                   pretrained=getattr(args, "pretrained", False), fused=args.fused,
                                   backend=args.backend, device=procs.device, cpu_choices=args.cpu_choices)
        k = predict.num_classes_of(model)
        if args.task == "segment":
            result = _run_segment(args, model, k, procs)
            show = lambda: print_segment(result, k)  # noqa: E731
        elif args.task == "classify":
            _, samples = data.image_folder(args.data)
            result = evaluate_classify(model, samples, procs, args.ten_crop, args.resize, args.crop)
            show = lambda: print_counts(result)  # noqa: E731
        else:
            _, samples = data.read_boxes(args.data, args.boxes, args.classes)
            result = evaluate_localize(model, samples, procs, args.threshold, loc_resize=args.loc_resize,
                                       ten_crop=args.ten_crop, resize=args.resize, crop=args.crop)
            show = lambda: print_counts(result)  # noqa: E731
        if procs.rank == 0:
            report_cpu_choices(model, args)
            show()
            if args.json:
                print(json.dumps(result), flush=True)
        return 0
    finally:
        procs.close()


def _run_segment(args, model, k: int, procs: Processes) -> dict:
    if args.data is not None:
        given = [f"--{n.replace('_', '-')}" for n in ("labels", "resize", "label_format", "info")
                 if getattr(args, n) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} go(es) with --images; --data reads its folder's lists and "
                             f"info.json")
        return evaluate_segment(model, data.segmentation_set(args.data, args.phase), k, procs, ms=args.ms)
    if args.labels is None:
        raise ValueError("--images needs --labels (the folder of label maps)")
    if args.info:
        mean, std = data.read_info(args.info)
    else:
        mean, std = (CITYSCAPES_MEAN, CITYSCAPES_STD) if k == 19 else (IMAGENET_MEAN, IMAGENET_STD)
        if procs.rank == 0:
            print(f"drn evaluate: normalising with {'Cityscapes' if k == 19 else 'ImageNet'}'s mean/std "
                  f"(--info to change)", file=sys.stderr)
    pairs = data.image_label_pairs(args.images, args.labels)
    return segment_pairs(model, pairs, k, procs, mean=mean, std=std, ms=args.ms, resize=args.resize or "labels",
                         label_format=args.label_format or "auto")


def main(argv=None) -> int:
    return command_main("drn evaluate", __doc__.split("\n\n")[0], add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
