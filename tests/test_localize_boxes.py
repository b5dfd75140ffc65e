"""localize's box geometry (paper §5.2) on every CPU-runnable backend, against boxes known by construction.

Each case is a map drawn as text, one character per output-stride cell:
    '#'  the image's top-1 class T with a score near 1: these cells, and only these, make the box;
    'w'  labelled T but scoring below the threshold (excluded);
    'd'  a decoy class with a high score (excluded: not the top-1 class);
    '.'  background class, T a close second (excluded).
The features are built so the 1x1 classifier's response at each cell is exactly the logits chosen for its
character, and the expected box is written by hand next to each drawing (x1, y1, x2, y2 in input pixels, x2/y2
exclusive), so nothing here is computed with the code under test. 'w' and 'd' cells sit outside the '#' cells'
box, so a box that counts them, or a box of the whole map, is wrong.
"""
import pytest
import torch

import drn_kernels
from helpers import backend_marks, backend_params, require_backend

pytestmark = pytest.mark.unit

THRESHOLD = 0.5
STRONG = 500.0  # T's logit in a '#' cell: T is the image's top-1 class even with one '#' among 300 cells

# character -> {role: logit}; roles are mapped to class indices per case, every other class has logit 0
CELL_LOGITS = {
    "#": {"T": STRONG},
    "w": {"T": 100.0, "D": 99.9, "E": 99.9},  # T wins the cell with softmax(T) <= 0.36 (any K >= 3)
    "d": {"D": 8.0, "T": 0.5},
    ".": {"B": 3.0, "T": 2.5},
}

# (name, drawing, stride, expected box)
CASES_7x9 = [
    ("small_offcentre", [".........",
                         "....##...",
                         "....##..w",
                         ".........",
                         ".d.......",
                         ".........",
                         "........."], 8, (32, 8, 48, 24)),
    ("single_cell", [".........",
                     ".........",
                     ".........",
                     "......#..",
                     "w........",
                     "........d",
                     "........."], 8, (48, 24, 56, 32)),
    ("top_border", ["...###...",
                    "....#....",
                    ".........",
                    ".........",
                    ".........",
                    "w.......w",
                    "....d...."], 8, (24, 0, 48, 16)),
    ("bottom_border", ["w.......d",
                       ".........",
                       ".........",
                       ".........",
                       ".........",
                       "..#......",
                       "..###...."], 8, (16, 40, 40, 56)),
    ("left_border", [".........",
                     ".........",
                     "#........",
                     "##.......",
                     "#........",
                     "........w",
                     "...d....."], 8, (0, 16, 16, 40)),
    ("right_border", ["d........",
                      "........#",
                      "........#",
                      ".......##",
                      ".........",
                      ".........",
                      "w........"], 8, (56, 8, 72, 32)),
    ("two_corners", ["#........",      # two far-apart cells: the box spans both (min and max taken apart)
                     ".........",
                     "....w....",
                     "....d....",
                     ".........",
                     ".........",
                     "........#"], 8, (0, 0, 72, 56)),
    ("absent_weak_only", [".........",  # T is top-1 on average, labelled only in cells below the threshold
                          "...www...",
                          "...www...",
                          "...www...",
                          ".........",
                          ".........",
                          "........."], 8, (-1, -1, -1, -1)),
    ("stride4_offcentre", [".........",
                           ".........",
                           ".......#.",
                           "...d.....",
                           ".......#.",
                           ".........",
                           "w........"], 4, (28, 8, 32, 20)),
]

# A map larger than the Triton box kernel's 256-cell block and the CUDA image kernel's 128 threads, so the
# cells after the first block/thread sweep count too.
CASES_18x17 = [
    ("large_map_bottom_right", ["." * 17] * 15 + ["." * 15 + "##", "." * 16 + "#", "d" + "." * 15 + "#"], 8,
     (120, 120, 136, 144)),
    ("large_map_top_left", ["##" + "." * 15, "#" + "." * 16] + ["." * 17] * 14 + ["." * 16 + "w", "d" * 17], 8,
     (0, 0, 16, 16)),
]

BACKENDS = ["reference", "cpu", "triton", "cuda-sim"]


def _roles(k: int) -> dict:
    """Class index of each role: for K=1000 the top-1 class is the last one."""
    return {"T": k - 1, "B": 0, "D": k // 2, "E": 1} if k > 4 else {"T": 2, "B": 0, "D": 3, "E": 1}


def _features(drawings, k):
    """(x (N, 4, h, w), weight (K, 4, 1, 1), bias (K,)) whose 1x1 classifier response is CELL_LOGITS exactly:
    channel j of x carries role j's logit and weight row roles[j] picks channel j."""
    roles = _roles(k)
    names = ["T", "B", "D", "E"]
    h, w = len(drawings[0]), len(drawings[0][0])
    x = torch.zeros(len(drawings), len(names), h, w)
    for n, rows in enumerate(drawings):
        assert len(rows) == h and all(len(r) == w for r in rows), "ragged drawing"
        for i, row in enumerate(rows):
            for j, ch in enumerate(row):
                for role, v in CELL_LOGITS[ch].items():
                    x[n, names.index(role), i, j] = v
    weight = torch.zeros(k, len(names), 1, 1)
    for c, role in enumerate(names):
        weight[roles[role], c] = 1.0
    return x, weight, torch.zeros(k)


# K=1000 on the large map only where it is fast (not in the Triton interpreter or the simulator)
PARAMS = [pytest.param(b, cases, k, id=f"{b}-{name}-{k}", marks=backend_marks(b)) for b in BACKENDS
          for name, cases in (("7x9", CASES_7x9), ("18x17", CASES_18x17)) for k in (4, 1000)
          if not (k == 1000 and name == "18x17" and b in ("triton", "cuda-sim"))]


@pytest.mark.parametrize("backend,cases,k", PARAMS)
def test_boxes_known_by_construction(backend, cases, k):
    require_backend(backend)
    by_stride = {}
    for case in cases:
        by_stride.setdefault(case[2], []).append(case)
    for stride, group in by_stride.items():  # one batched call per stride: the images must not mix
        x, weight, bias = _features([c[1] for c in group], k)
        logits, labels, scores, boxes = drn_kernels.localize(x, weight, bias, threshold=THRESHOLD, stride=stride,
                                                             backend=backend)
        top1 = _roles(k)["T"]
        assert logits.argmax(dim=1).tolist() == [top1] * len(group), "construction: T must be top-1"
        for n, (name, rows, _, want) in enumerate(group):
            hit = [(i, j) for i, row in enumerate(rows) for j, ch in enumerate(row) if ch == "#"]
            for i, j in hit:
                assert labels[n, i, j] == top1 and scores[n, i, j] > 0.99, (name, i, j)
            assert boxes[n].tolist() == list(map(float, want)), f"{backend} {name} K={k}"


@pytest.mark.parametrize("backend", backend_params(*BACKENDS))
def test_no_box_above_a_threshold_of_one_and_batch_independence(backend):
    """Threshold 1: no probability exceeds it, every box is -1; then the same images with threshold 0.5
    give each its own box (a box of image 0 never leaks into image 1's)."""
    require_backend(backend)
    drawings = [CASES_7x9[0][1], CASES_7x9[1][1]]
    x, weight, bias = _features(drawings, 4)
    boxes = drn_kernels.localize(x, weight, bias, threshold=1.0, backend=backend)[3]
    assert boxes.tolist() == [[-1.0] * 4] * 2
    boxes = drn_kernels.localize(x, weight, bias, threshold=THRESHOLD, backend=backend)[3]
    assert boxes.tolist() == [list(map(float, CASES_7x9[0][3])), list(map(float, CASES_7x9[1][3]))]
