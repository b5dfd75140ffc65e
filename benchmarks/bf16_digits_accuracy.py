"""bf16 on the CPU against fp32 on the trained digits model: `python benchmarks/bf16_digits_accuracy.py`.

Classification and localization accuracy (drn.demo's criterion) of the fused and eager models in fp32 and bf16 on
500 unseen 64x64 canvases, with the threshold drn.demo picks for the fused fp32 model on its validation canvases,
and each one's max logit error against the float64 model.
"""
import copy

import numpy as np
import torch

from drn.demo import digits, parts


def main():
    torch.manual_seed(0)
    model, fused, note = parts.localizer()
    print(note)
    threshold, _ = parts.pick_threshold(fused, 200)
    canvases, labels, truth = digits.make_canvases(500, np.random.default_rng(1234), "test", canvas=digits.TEST_CANVAS)
    x = digits.to_input(canvases)
    fused_bf16 = copy.deepcopy(fused).to(torch.bfloat16)
    eager_bf16 = copy.deepcopy(model).to(torch.bfloat16)
    with torch.no_grad():
        exact = copy.deepcopy(model).double()(x.double(), threshold=threshold).logits
        for name, run, xin in (("fused fp32", fused, x), ("fused bf16", fused_bf16, x.bfloat16()),
                               ("eager fp32", model, x), ("eager bf16", eager_bf16, x.bfloat16())):
            out = run(xin, threshold=threshold)
            pred = out.logits.float().argmax(1).numpy()
            loc, _ = parts.loc_accuracy(pred, labels, out.boxes.float().numpy(), truth)
            err, scale = float((out.logits.double() - exact).abs().max()), float(exact.abs().max())
            print(f"{name}: classification {100 * (pred == labels).mean():.1f}%  localization {100 * loc:.1f}%  "
                  f"logits max|err| vs float64 {err:.3e} (|logit| up to {scale:.1f})")
    print("threshold", threshold)


if __name__ == "__main__":
    main()
