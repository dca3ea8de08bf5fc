"""A folder of prepared volumes (normalised and resampled), so that a dataset is resampled once
rather than by every run that reads it (folds, repeated experiments).

An entry is keyed by the files it came from (path, size, modification time) and every setting that
changes the result (spatial dims, datasets, spacing, label map, normalisation and its statistics,
target spacing, interpolation). A changed file or setting is a new key; stale entries are never read.
Each entry is written to a temporary name and renamed, so a reader never sees half an entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .volumes import Volume

__all__ = ["cache_key", "load_cached", "store_cached"]

_VERSION = 1


def _file_identity(spec: str) -> list[Any]:
    identity = []
    for part in spec.split(","):
        path = Path(part.strip()).resolve()
        stat = path.stat()
        identity.append([str(path), stat.st_size, stat.st_mtime_ns])
    return identity


def cache_key(spec: str, settings: dict[str, Any]) -> str:
    """The key of ``spec`` (a file or ``IMAGE,LABEL``) prepared with ``settings`` (JSON-serialisable)."""
    text = json.dumps({"version": _VERSION, "files": _file_identity(spec), **settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def load_cached(folder: str | os.PathLike, key: str) -> Volume | None:
    """The volume stored under ``key``, or None."""
    entry = Path(folder) / key
    meta_path = entry / "volume.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    image = np.load(entry / "image.npy", allow_pickle=False)
    label = np.load(entry / "label.npy", allow_pickle=False) if (entry / "label.npy").is_file() else None
    affine = None if meta["affine"] is None else np.asarray(meta["affine"], dtype=np.float64)
    return Volume(
        meta["name"],
        image,
        label,
        affine=affine,
        spacing=tuple(meta["spacing"]),
        original_shape=tuple(meta["original_shape"]),
        original_spacing=tuple(meta["original_spacing"]),
    )


def store_cached(folder: str | os.PathLike, key: str, volume: Volume) -> None:
    """Store ``volume`` under ``key`` (one directory, renamed into place when complete)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entry = folder / key
    if entry.is_dir():
        return
    meta = {
        "name": volume.name,
        "spacing": list(volume.spacing or ()),
        "original_shape": list(volume.original_shape or volume.spatial_shape),
        "original_spacing": list(volume.original_spacing or volume.spacing or ()),
        "affine": None if volume.affine is None else np.asarray(volume.affine).tolist(),
    }

    temp = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=folder))
    try:
        np.save(temp / "image.npy", volume.image)
        if volume.label is not None:
            np.save(temp / "label.npy", volume.label)
        (temp / "volume.json").write_text(json.dumps(meta))  # last: its presence marks a whole entry
        try:
            os.rename(temp, entry)
        except OSError:
            if not entry.is_dir():
                raise  # not another process storing the same entry at the same time
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)
