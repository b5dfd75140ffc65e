"""The released checkpoints: list them, import a file obtained elsewhere (the library of `drn weights`,
drn.apps.weights).

- status() lists every released checkpoint (ImageNet classifiers, the Cityscapes segmenters): its
  file name, the start of its SHA-256 (where one was published: torch.hub's name-<hash>.pth), and whether the
  torch hub cache holds it.
- import_file(FILE) puts a file obtained elsewhere (a web archive, a colleague) into the cache under its
  official name, after checking it: the SHA-256 prefix where one is known (a file of another name is recognised
  by its hash), else the name and a strict load into the model it belongs to (the Cityscapes checkpoints).
Downloads, the mirror (DRN_WEIGHTS_MIRROR) and the error when nothing works: drn.zoo.hub.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

from .hub import Entry, cache_dir, catalogue, sha256_of


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
    from .checkpoint import load_checkpoint
    from .factory import build

    model = build(entry.model, task=entry.task, num_classes=entry.weights.num_classes, device="cpu")
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
