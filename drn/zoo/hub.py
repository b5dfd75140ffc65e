"""Released checkpoints through the torch hub cache: the catalogue, the mirror, the download, the error that says
what to look for. drn.zoo.weights lists and imports (for the `drn weights` command, drn.apps.weights); this
module only fetches, so the model factory can use it without importing either.

The official host of the reference's weights (dl.yf.io) has been unreachable since 2022: a download tries
DRN_WEIGHTS_MIRROR's <base>/<file name> first, then the official URL, and when nothing works the error names the
file, its SHA-256 prefix (where one was published) and where to put it.
"""
from __future__ import annotations

import hashlib
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
