"""Released checkpoints people can get: the catalogue, the torch hub cache, a mirror, and importing a file.

The official host of the reference's weights (dl.yf.io) has been unreachable since 2022, so every way to a file
is spelled out:
- `drn weights [--json]` lists every released checkpoint (ImageNet classifiers, the Cityscapes segmenters): its
  file name, the start of its SHA-256 (where one was published: torch.hub's name-<hash>.pth), and whether the
  torch hub cache holds it.
- `drn weights import FILE` puts a file obtained elsewhere (a web archive, a colleague) into the cache under its
  official name, after checking it: the SHA-256 prefix where one is known (a file of another name is recognised
  by its hash), else the name and a strict load into the model it belongs to (the Cityscapes checkpoints).
- DRN_WEIGHTS_MIRROR=<base URL>: <base>/<file name> is tried before the official URL.
- When nothing works the error names the file, its hash prefix and where to put it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from drn_kernels import settings

from .registry import CITYSCAPES, CITYSCAPES_HOME, PRETRAINED, Weights


@dataclass(frozen=True)
class Entry:
    model: str
    weights: Weights

    @property
    def file(self) -> str:
        return self.weights.file

    @property
    def task(self) -> str:
        return self.weights.task


def catalogue() -> list[Entry]:
    """Every released checkpoint: the ImageNet classifiers (PRETRAINED), then the Cityscapes segmenters."""
    return [Entry(m, w) for m, w in PRETRAINED.items()] + [Entry(m, w) for m, w in CITYSCAPES.items()]


def cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def urls(entry: Entry) -> list[str]:
    """Where the file is looked for, in order: the mirror (DRN_WEIGHTS_MIRROR), then the official URL."""
    mirror = settings.value("DRN_WEIGHTS_MIRROR")
    out = [f"{mirror}/{entry.file}"] if mirror else []
    return out + ([entry.weights.url] if entry.weights.url else [])


def where_to_look(entry: Entry) -> str:
    """One sentence: the file name, its hash, and how to put it in place."""
    sha = entry.weights.sha256_prefix
    what = f"{entry.file} (sha256 starting with {sha})" if sha else \
        f"{entry.file} (no hash was published; it must load into {entry.model} task={entry.task})"
    home = f"; the reference's listing: {CITYSCAPES_HOME}" if entry.task == "segment" else ""
    return (f"look for {what}, then run `drn weights import FILE` or place it at {cache_dir() / entry.file}, or set "
            f"DRN_WEIGHTS_MIRROR to a base URL that serves it{home}")


def state_dict(entry: Entry, progress: bool = True) -> dict:
    """The checkpoint through the torch hub cache: the cached file, else downloaded from urls(entry) in order
    (hash-checked by torch.hub where the name carries one). Raises FileNotFoundError naming the file and hash
    (RuntimeError where a download arrived with the wrong hash)."""
    cached = cache_dir() / entry.file
    if cached.is_file():
        return torch.load(cached, map_location="cpu", weights_only=True)
    tried, wrong_file = [], False
    for url in urls(entry):
        try:
            return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=progress, check_hash=True,
                                                      file_name=entry.file, weights_only=True)
        except (OSError, RuntimeError) as e:  # URLError, refused, no DNS; RuntimeError: a hash mismatch
            wrong_file |= isinstance(e, RuntimeError)
            tried.append(f"{url} ({getattr(e, 'reason', e)})")
    how = f"tried {'; '.join(tried)}" if tried else "it has no direct download URL"
    # a server that sent a file with the wrong hash is not the same failure as no file at all
    error = RuntimeError if wrong_file else FileNotFoundError
    raise error(f"cannot get the {entry.model} weights {entry.file}: {how}; {where_to_look(entry)}")


def find(model: str, task: str = "classify") -> Entry:
    table = CITYSCAPES if task == "segment" else PRETRAINED
    if model not in table:
        raise ValueError(f"no released {task} weights for {model!r}; models with weights: {sorted(table)}")
    return Entry(model, table[model])


def status() -> list[dict]:
    """One record per checkpoint: model, task, classes, file, sha256 prefix (None: not published), cached, path,
    url (the official one, "" if none)."""
    out = []
    for e in catalogue():
        path = cache_dir() / e.file
        out.append({"model": e.model, "task": e.task, "num_classes": e.weights.num_classes, "file": e.file,
                    "sha256_prefix": e.weights.sha256_prefix, "cached": path.is_file(), "path": str(path),
                    "url": e.weights.url})
    return out


def _check_loads(entry: Entry, path) -> None:
    """A checkpoint without a published hash must at least be the model's: a strict load into it."""
    import drn

    from .checkpoint import load_checkpoint

    model = drn.build(entry.model, task=entry.task, num_classes=entry.weights.num_classes, device="cpu")
    try:
        with warnings.catch_warnings():  # a re-initialised classifier or a classifier checkpoint is not the file
            warnings.simplefilter("error", UserWarning)
            load_checkpoint(model, path)
    except (ValueError, UserWarning) as e:
        raise ValueError(f"{path} does not load into {entry.model} task={entry.task} "
                         f"num_classes={entry.weights.num_classes}: {e}") from None


def identify(path) -> tuple[Entry, str]:
    """(catalogue entry, sha256) of a file: by the hash prefix where the catalogue has one (whatever the file's
    name), else by its name (then it must load into the model). Raises ValueError saying what did not match."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    digest = sha256_of(path)
    entries = catalogue()
    for e in entries:
        prefix = e.weights.sha256_prefix
        if prefix and digest.startswith(prefix):
            return e, digest
    for e in entries:
        if e.file == path.name:
            if e.weights.sha256_prefix:
                raise ValueError(f"{path}: its sha256 {digest[:16]}... does not start with {e.weights.sha256_prefix}"
                                 f", the hash of the released {e.file}: a different or damaged file")
            _check_loads(e, path)
            return e, digest
    raise ValueError(f"{path} (sha256 {digest[:16]}...) is none of the released checkpoints: no hash prefix "
                     f"matches and its name is not one of {[e.file for e in entries if not e.weights.sha256_prefix]}")


def import_file(path) -> tuple[Entry, Path, str]:
    """Check `path` (identify) and copy it into the torch hub cache under its official name (atomically).
    Returns (entry, destination, sha256)."""
    entry, digest = identify(path)
    dest = cache_dir() / entry.file
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{entry.file}.")
    os.close(fd)
    try:
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return entry, dest, digest


# ---------------------------------------------------------------------------------------- command line

def cmd_weights(args) -> int:
    if args.action == "import":
        if not args.files:
            raise ValueError("drn weights import needs at least one FILE")
        for f in args.files:
            entry, dest, digest = import_file(f)
            print(f"{f} -> {dest}  ({entry.model} {entry.task}, sha256 {digest})")
        return 0
    if args.files:
        raise ValueError(f"unexpected arguments {args.files}: `drn weights` lists, `drn weights import FILE` imports")
    records = status()
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
