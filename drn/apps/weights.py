"""`drn weights [--json]` lists every released checkpoint (ImageNet classifiers, the Cityscapes segmenters): its
file name, the start of its SHA-256 (where one was published: torch.hub's name-<hash>.pth), and whether the torch hub
cache holds it; `drn weights import FILE...` checks files obtained elsewhere and puts them into the cache under their
official names (drn.zoo.weights)."""
from __future__ import annotations

import json
import sys

from drn_kernels import settings

from ..zoo import weights
from ..zoo.hub import cache_dir


def run(args) -> int:
    if args.action == "import":
        if not args.files:
            raise ValueError("drn weights import needs at least one FILE")
        for f in args.files:
            entry, dest, digest = weights.import_file(f)
            print(f"{f} -> {dest}  ({entry.model} {entry.task}, sha256 {digest})")
        return 0
    if args.files:
        raise ValueError(f"unexpected arguments {args.files}: `drn weights` lists, `drn weights import FILE` imports")
    records = weights.status()
    if args.json:
        print(json.dumps(records))
        return 0
    width = max(len(r["file"]) for r in records)
    print(f"{'model':<10} {'task':<8} {'file':<{width}}  {'sha256':<8}  cached")
    for r in records:
        print(f"{r['model']:<10} {r['task']:<8} {r['file']:<{width}}  {r['sha256_prefix'] or 'unknown':<8}  "
              f"{'yes' if r['cached'] else 'no'}")
    mirror = settings.value("DRN_WEIGHTS_MIRROR")
    print(f"cache: {cache_dir()}; mirror: {mirror or 'none (DRN_WEIGHTS_MIRROR)'}", file=sys.stderr)
    return 0


def add_arguments(p) -> None:
    p.add_argument("action", nargs="?", choices=["list", "import"], default="list",
                   help="list (default) or import FILE...")
    p.add_argument("files", nargs="*", metavar="FILE", help="with import: checkpoint files obtained elsewhere")
    p.add_argument("--json", action="store_true", help="list as one JSON array")
