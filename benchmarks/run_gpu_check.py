"""`make gpu-check`, second half: the full benchmark suite on this GPU, saved as
benchmarks/results/<gpu name>.json, then the report (table + PNG next to it).

    python -m benchmarks.run_gpu_check [extra pytest args...]
"""
from __future__ import annotations

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def main(argv=None) -> int:
    import torch

    if not torch.cuda.is_available():
        print("run_gpu_check: no CUDA GPU visible; nothing to do", file=sys.stderr)
        return 1
    name = re.sub(r"[^A-Za-z0-9]+", "_", torch.cuda.get_device_name()).strip("_")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    cmd = [sys.executable, "-m", "pytest", "benchmarks", "--benchmark-only", f"--benchmark-json={out}", "-q",
           *(sys.argv[1:] if argv is None else argv)]
    print(" ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=ROOT)
    if out.exists():
        from benchmarks import report

        report.main([str(out)])
    return rc


if __name__ == "__main__":
    sys.exit(main())
