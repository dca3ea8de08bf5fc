"""Cross-validation folds: ``--folds K --fold k`` trains on K-1 parts of the data and validates on one.

The split is a JSON file written once (atomically) and read by every later fold, so the K runs of a
cross-validation share it even when the volumes are listed in another order or the seed changes:
``[{"train": [names...], "val": [names...]}, ...]``, one entry per fold, as nnU-Net's
``splits_final.json``. A file that no longer matches the data (a volume added, removed or renamed)
is refused, naming the difference, rather than silently re-split.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import TrainingError
from .volumes import Volume


def make_splits(names: list[str], folds: int, seed: int = 0) -> list[dict[str, list[str]]]:
    """``folds`` train/val splits of ``names``: the sorted names shuffled with ``seed`` and dealt
    round-robin into ``folds`` validation parts; each fold trains on the others."""
    if folds < 2:
        raise TrainingError(f"--folds must be at least 2, got {folds}")
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise TrainingError(f"volume names must be unique to split into folds; repeated: {', '.join(repeated)}")
    if len(names) < folds:
        raise TrainingError(f"--folds {folds} needs at least {folds} volumes, got {len(names)}")
    order = sorted(names)
    np.random.default_rng(seed).shuffle(order)
    parts = [sorted(order[i::folds]) for i in range(folds)]
    return [
        {"train": sorted(n for j, part in enumerate(parts) if j != i for n in part), "val": parts[i]}
        for i in range(folds)
    ]


def _write_atomically(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` unless it exists; True when this call wrote it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temp, path)  # fails if another fold wrote it first: theirs wins, ours is dropped
        except FileExistsError:
            return False
        return True
    finally:
        Path(temp).unlink(missing_ok=True)


def read_splits(path: Path) -> list[dict[str, list[str]]]:
    """The splits stored in ``path``, checked for shape."""
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise TrainingError(f"{path}: cannot read the fold splits ({err})") from None
    if not isinstance(data, list) or not all(
        isinstance(s, dict) and isinstance(s.get("train"), list) and isinstance(s.get("val"), list) for s in data
    ):
        raise TrainingError(f"{path}: expected a list of {{'train': [...], 'val': [...]}}, one per fold")
    return data


def fold_split(
    names: list[str], folds: int, fold: int, path: str | os.PathLike, seed: int = 0
) -> tuple[list[str], list[str]]:
    """The (train, val) names of fold ``fold`` of ``folds``; the split file ``path`` is written by the
    first call and reused by every later one (checked against ``names`` and ``folds``)."""
    if not 0 <= fold < folds:
        raise TrainingError(f"--fold must be in 0..{folds - 1} for --folds {folds}, got {fold}")
    path = Path(path)
    if not path.exists():
        _write_atomically(path, json.dumps(make_splits(names, folds, seed), indent=1) + "\n")
    splits = read_splits(path)
    if len(splits) != folds:
        raise TrainingError(
            f"{path} holds {len(splits)} folds but --folds is {folds}; remove it or use --folds {len(splits)}"
        )
    stored = set(splits[0]["train"]) | set(splits[0]["val"])
    missing, extra = sorted(set(names) - stored), sorted(stored - set(names))
    if missing or extra:
        raise TrainingError(
            f"{path} was written for other volumes: not in it {missing[:5]}, not in the data {extra[:5]}; "
            "remove the file to split again (earlier folds then no longer match)"
        )
    return list(splits[fold]["train"]), list(splits[fold]["val"])


def fold_volumes(
    volumes: list[Volume], folds: int, fold: int, path: str | os.PathLike, seed: int = 0
) -> tuple[list[Volume], list[Volume]]:
    """:func:`fold_split` applied to volumes (by ``Volume.name``): (training volumes, validation volumes)."""
    by_name = {v.name: v for v in volumes}
    train, val = fold_split([v.name for v in volumes], folds, fold, path, seed)
    return [by_name[n] for n in train], [by_name[n] for n in val]


__all__ = ["fold_split", "fold_volumes", "make_splits", "read_splits"]
