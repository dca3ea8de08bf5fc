"""What a checkpoint holds, how it is serialised and written durably, and how a run resumes from it.

A checkpoint is serialised in memory first (:func:`checkpoint_files`), so its exact size is known
before a byte reaches the disk and every write error arrives as an ``OSError`` naming the file.
:class:`~smp3d.training.rundir.RunDirectory` writes it into a fresh folder and commits it with one
rename (see there and ``docs/reliability.md``).

Files of ``last/``: ``model.safetensors``, ``config.json`` and ``README.md`` (a
``save_pretrained`` folder), ``trainer.json`` (the run's config and progress, read by ``smp3d
predict``), ``training_state.pt`` (optimizer and scheduler state, counters) and ``metrics.csv``
(every epoch's row up to this one). ``best/`` shares ``last/``'s weights, config and card of the
epoch that improved (hard links) and has its own ``trainer.json``.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .config import TrainConfig
from .errors import TrainingError
from .metric_log import Row, read_rows

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
TRAINER_FILE = "trainer.json"
STATE_FILE = "training_state.pt"
METRICS_FILE = "metrics.csv"
#: Files of a ``best/`` folder that are the same bytes as in ``last/`` of that epoch (hard-linked).
SHARED_WITH_BEST = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)
STATE_FORMAT = 2

#: Test hook (see :func:`pause_point`).
PAUSE_ENV = "SMP3D_TEST_PAUSE_AT"
PAUSE_FILE_ENV = "SMP3D_TEST_PAUSE_FILE"


def pause_point(name: str, epoch: int) -> None:
    """Test hook: with ``SMP3D_TEST_PAUSE_AT=<name>:<epoch>`` in the environment, create the file
    named by ``SMP3D_TEST_PAUSE_FILE`` and sleep (10 minutes at most) when the run reaches point
    ``name`` of epoch ``epoch``, so that a test can kill the process at exactly that instant.
    Points: ``train`` (an epoch's steps done, before validation), ``stage`` (inside the checkpoint
    write: weights written, the rest not), ``commit`` (checkpoint staged, not committed),
    ``rollforward-last`` (committed; old ``last/`` moved aside, new one not in place),
    ``rollforward-metrics`` (``last/`` and ``best/`` in place, ``metrics.csv`` not yet)."""
    if os.environ.get(PAUSE_ENV) != f"{name}:{epoch}":
        return
    ready = os.environ.get(PAUSE_FILE_ENV)
    if ready:
        Path(ready).touch()
    time.sleep(600)


@dataclass
class Progress:
    """Where a run stands after its last completed epoch: epochs and iterations done, the best
    validation score and validations since it improved, and one metrics row per epoch."""

    epoch: int = 0
    iteration: int = 0
    best: float = -math.inf
    stale: int = 0
    rows: list[Row] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """Training time of the completed epochs (the ``seconds`` of the last row)."""
        try:
            return float(self.rows[-1]["seconds"]) if self.rows else 0.0
        except (KeyError, TypeError, ValueError):
            return 0.0


@dataclass
class CheckpointFiles:
    """A serialised checkpoint: file name -> bytes for ``last/``, for ``best/`` beyond the files it
    shares with ``last/`` (None when ``best/`` does not change), and the run's ``metrics.csv``."""

    last: dict[str, bytes | memoryview]
    best: dict[str, bytes | memoryview] | None
    metrics: bytes

    @property
    def nbytes(self) -> int:
        """Bytes the checkpoint takes on disk (shared files counted once)."""
        files = [*self.last.values(), *(self.best or {}).values(), self.metrics]
        return sum(len(data) for data in files)


def weights_bytes(model: nn.Module) -> bytes:
    """The model's state dict as safetensors bytes (tensors that share storage stored as copies)."""
    from safetensors.torch import save

    state: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if tensor.numel() and ident in seen:  # safetensors refuses shared storage
            tensor = tensor.clone()
        seen.add(ident)
        state[key] = tensor
    return save(state, metadata={"format": "pt"})


def model_card_files(model: nn.Module) -> dict[str, bytes]:
    """``config.json`` and ``README.md`` as ``save_pretrained`` writes them (the same every epoch)."""
    config = model.hub_config()  # type: ignore[operator]
    card = model.generate_model_card(config=config)  # type: ignore[operator]
    return {
        CONFIG_FILE: (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8"),
        CARD_FILE: str(card).encode("utf-8"),
    }


def _json_bytes(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode("utf-8")


def checkpoint_files(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    config: TrainConfig,
    progress: Progress,
    *,
    card_files: dict[str, bytes],
    metrics: bytes,
    best: dict[str, Any] | None,
) -> CheckpointFiles:
    """Serialise the state after ``progress.epoch``: weights, optimizer and scheduler, counters and
    ``metrics`` (the CSV of ``progress.rows``). ``best`` holds the ``trainer.json`` entries of a
    new best model (``epoch``, ``val_mean_dice_foreground``, ...), or is None when ``best/`` stays as it is."""
    state = {
        "format": STATE_FORMAT,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": progress.epoch,
        "iteration": progress.iteration,
        "best": progress.best,
        "stale": progress.stale,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    trainer = {"config": config.to_json(), "epoch": progress.epoch, "iteration": progress.iteration}
    last: dict[str, bytes | memoryview] = {
        WEIGHTS_FILE: weights_bytes(model),
        **card_files,
        TRAINER_FILE: _json_bytes(trainer),
        STATE_FILE: buffer.getbuffer(),
        METRICS_FILE: metrics,
    }
    best_files = None if best is None else {TRAINER_FILE: _json_bytes({"config": config.to_json(), **best})}
    return CheckpointFiles(last, best_files, metrics)


# -- durable writes ------------------------------------------------------------------------------
def write_file(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to a new file and flush it to the disk; an error names the file."""
    try:
        with open(path, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        if err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from err


def fsync_directory(path: Path) -> None:
    """Make the names in ``path`` durable (a no-op where directories cannot be opened)."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link (no bytes written), or a copy where the filesystem has no hard links."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
        with open(target, "rb+") as f:
            os.fsync(f.fileno())


def write_checkpoint(folder: Path, files: CheckpointFiles, epoch: int) -> None:
    """Write ``files`` into the new folder ``folder`` (``last/``, ``best/`` when it changes,
    ``metrics.csv``), every file and folder flushed to the disk."""
    last = folder / "last"
    last.mkdir(parents=True)
    for name, data in files.last.items():
        write_file(last / name, data)
        if name == WEIGHTS_FILE:
            pause_point("stage", epoch)
    fsync_directory(last)
    if files.best is not None:
        best = folder / "best"
        best.mkdir()
        for name in SHARED_WITH_BEST:
            link_or_copy(last / name, best / name)
        for name, data in files.best.items():
            write_file(best / name, data)
        fsync_directory(best)
    write_file(folder / METRICS_FILE, files.metrics)
    fsync_directory(folder)


# -- reading -------------------------------------------------------------------------------------
def read_trainer_file(directory: Path) -> dict[str, Any] | None:
    """A checkpoint folder's ``trainer.json``, or None when it has none (a plain ``save_pretrained`` folder)."""
    path = directory / TRAINER_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise TrainingError(f"{path}: not valid JSON ({err})") from None


def load_training_state(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, device: torch.device
) -> Progress:
    """Load a ``last/`` folder into ``model``, ``optimizer`` and ``scheduler``; return its progress.
    ``rows`` is empty when the folder predates metrics in checkpoints (the caller falls back
    to the run's ``metrics.csv``)."""
    from safetensors.torch import load_file

    weights, state_file = directory / WEIGHTS_FILE, directory / STATE_FILE
    for path in (weights, state_file):
        if not path.exists():
            raise TrainingError(f"--resume {directory}: missing {path.name} (expected a 'last' checkpoint folder)")
    try:
        model.load_state_dict(load_file(str(weights), device=str(device)), strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise TrainingError(f"--resume {directory}: weights do not fit this model ({first})") from None
    try:
        state = torch.load(state_file, map_location=device, weights_only=True)
    except Exception as err:  # a torn file of an older smp3d: torch raises several types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TrainingError(f"--resume {directory}: {STATE_FILE} cannot be read ({first})") from None
    trainer = read_trainer_file(directory) or {}
    if "epoch" in trainer and int(trainer["epoch"]) != int(state["epoch"]):
        raise TrainingError(
            f"--resume {directory}: the weights are of epoch {trainer['epoch']} but {STATE_FILE} of epoch "
            f"{state['epoch']} (an older smp3d was killed while writing it); start again with --overwrite"
        )
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    rows = read_rows(directory / METRICS_FILE) if (directory / METRICS_FILE).exists() else []
    return Progress(int(state["epoch"]), int(state["iteration"]), float(state["best"]), int(state["stale"]), rows)


__all__ = [
    "CheckpointFiles",
    "Progress",
    "checkpoint_files",
    "load_training_state",
    "model_card_files",
    "pause_point",
    "read_trainer_file",
    "weights_bytes",
    "write_checkpoint",
]
