"""`make demo` = `python -m drn.demo`: the paper's localization claim on real data, and the fused models at work.

Part 1 (the claim, paper §3 and §5.2): a narrow DRN-D-22 is trained for image-level classification only, on
canvases built from scikit-learn's bundled handwritten digits (one scaled digit at a random place on 96×96 clutter
of noise and stroke fragments of other digits, spread evenly). Training sees 48×48 crops of such canvases, labelled
with the digit when they hold its whole ink and "no digit" when they miss it (often just beside it), plus a few
whole canvases labelled with their digit. It never sees a box. Then the classification network localizes digits
on unseen 64×64 canvases (digits it was not trained on, fresh placements): the 1×1 classifier applied to every
stride-8 cell, the dominant class per cell, and the smallest box around the cells of the predicted class
(drn_kernels.localize, through the fused model) with the probability threshold picked on
validation canvases (digits of neither training nor test). Reported: classification accuracy, localization
accuracy (class right and IoU > 0.5 with the known box, the paper's criterion) and a PNG grid.

Part 2 (a segmentation to judge): the same narrow DRN-D-22 as a DRNSeg (1×1 classifier per cell, ×8 bilinear
up-sampling), fine-tuned from the classifier with per-pixel labels (the digit on its ink, background elsewhere) on
64×64 canvases of 1-2 digits; run through the fused predict on unseen canvases: mIoU, fused-vs-unfused agreement,
the label map as a palette PNG next to its input, and a sheet (input | truth | prediction) with a legend.

Part 3 (the foundation): drn_c_26 (classify) and drn_d_22 (segment, 19 classes) built with random weights, run
on a photograph: output shapes, first-call and warm times, fused-vs-unfused parity (no picture: random weights).

    python -m drn.demo                 # all parts; trains first if a committed weights file is missing
    python -m drn.demo train           # train the digits classifier, write drn/demo/assets/digits_drn.pth
    python -m drn.demo train-segment   # train the segmenter, write drn/demo/assets/digits_seg_drn.pth
    python -m drn.demo localize|segment|models   # one part
"""
import argparse
import sys
import time

import torch

from .parts import demo_localize, demo_models, demo_segment
from .train import SEG_STEPS, train, train_segmentation


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m drn.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("what", nargs="?", default="all",
                   choices=["all", "train", "train-segment", "localize", "segment", "models"])
    p.add_argument("--steps", type=int, default=None, help="training steps (train: 2250, train-segment: 800)")
    p.add_argument("--canvases", type=int, default=500, help="test canvases (localize)")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    t = time.perf_counter()
    if args.what == "train":
        train(args.steps or 2250)
    if args.what == "train-segment":
        torch.set_num_threads(1)  # small tensors: one thread trains fastest, and is fastest on a shared machine
        train_segmentation(args.steps or SEG_STEPS)
    if args.what in ("all", "localize"):
        demo_localize(args.canvases)
    if args.what in ("all", "segment"):
        demo_segment()
    if args.what in ("all", "models"):
        demo_models()
    print(f"\ndemo finished in {time.perf_counter() - t:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
