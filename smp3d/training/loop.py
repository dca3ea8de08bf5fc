"""The training loop behind ``smp3d train`` and ``smp3d demo``, as a library: :func:`fit`.

One loop for every case: 2D or 3D, CPU or GPU, one process or many under ``torchrun``
(DistributedDataParallel with a distributed sampler; only rank 0 validates, logs and writes).
Validation segments whole volumes with the sliding window and reports per-class Dice. After
every epoch rank 0 commits a checkpoint to the run directory (:mod:`.rundir`): ``last/`` always,
``best/`` when the mean foreground Dice improved. The randomness of an epoch (patch order,
flips) is a function of the seed, the rank and the epoch, so a resumed run continues exactly as
the uninterrupted one would have.

Parts, in the order :func:`fit` calls them: :func:`check_inputs`, :func:`build_parts` (the
:class:`Parts` a run trains with), :class:`Pace` (when to stop, the fraction done that drives the
learning rate), :func:`train_epoch` (calling :func:`train_step` per batch), :func:`validate`, and the
:class:`Recorder` that writes (checkpoint, metrics, pictures).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .augmentation import build_augment
from .build import build_loss, build_model, build_optimizer, build_scheduler, deep_supervision_loss
from .checkpoints import Progress, checkpoint_files, load_training_state, model_card_files, pause_point
from .config import CHECKPOINTING, MODES, TrainConfig, channels_last_for
from .distributed import Dist, init_distributed, resolve_device, share_from_main
from .errors import TrainingError
from .evaluation import evaluate, to_target
from .metric_log import VAL_SCORE, Row, TensorBoardLog, csv_text, format_row, metric_fields, read_rows
from .patches import PatchDataset
from .rundir import RunDirectory, open_run_directory
from .schedule import Budget, LRSchedule, amp_dtype, autocast_context, grad_scaler
from .volumes import Volume, check_labels

_logger = logging.getLogger("smp3d.training")


@dataclass
class TrainResult:
    best_dice: float
    last_metrics: dict[str, Any]
    epochs: int
    iterations: int
    seconds: float
    model: nn.Module
    best_state: dict[str, torch.Tensor] | None = None  # rank 0: a CPU copy of the best validated weights


@dataclass
class Parts:
    """What a run trains with, built once by :func:`build_parts`."""

    model: nn.Module  # saved and validated
    train_model: nn.Module  # what the steps call: the model, or its DistributedDataParallel wrapper
    loss_fn: nn.Module
    dataset: PatchDataset
    sampler: torch.utils.data.Sampler
    generator: torch.Generator | None  # the shuffling sampler's, reseeded every epoch
    loader: torch.utils.data.DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: Any  # an LRSchedule set from the fraction done, ReduceLROnPlateau, or None
    scaler: torch.amp.GradScaler | None  # fp16 only
    device: torch.device
    dist_info: Dist
    augment: Any = None  # smp3d.augment.Augment: applied to each batch on the device


def check_inputs(config: TrainConfig, train_volumes: list[Volume], val_volumes: list[Volume]) -> nn.Module:
    """Refuse a task mode, labels or channels that do not fit ``config``; return the loss."""
    if config.mode not in MODES:
        raise TrainingError(f"unknown task mode {config.mode!r}; expected one of {', '.join(MODES)}")
    amp_dtype(config.amp)
    if config.grad_clip is not None and not config.grad_clip > 0:
        raise TrainingError(f"--grad-clip must be positive, got {config.grad_clip}")
    if config.workers < 0:
        raise TrainingError(f"--workers must be 0 or more, got {config.workers}")
    loss_fn = build_loss(config.loss, config.mode, config.ignore_index)
    check_labels(train_volumes + val_volumes, config.mode, config.classes)
    for volume in train_volumes + val_volumes:
        if volume.image.shape[0] != config.in_channels:
            raise TrainingError(
                f"{volume.name}: image has {volume.image.shape[0]} channels but --in-channels is {config.in_channels}"
            )
    return loss_fn


def build_parts(
    config: TrainConfig, train_volumes: list[Volume], loss_fn: nn.Module, device: torch.device, dist_info: Dist
) -> Parts:
    """The model on ``device``, the patch loader, the optimizer, the learning-rate schedule and (fp16) the scaler."""
    model = build_model(config)
    model.set_channels_last(channels_last_for(config, device))  # the run's choice, not only the CUDA default
    model.set_checkpointing(**CHECKPOINTING[config.checkpointing])
    model = model.to(device)
    augment = build_augment(config)
    dataset = PatchDataset(
        train_volumes,
        config.patch,
        config.stride,
        samples=None if config.iters is None else config.iters * config.batch_size * dist_info.world,
        foreground=config.foreground,
        flip=False,  # the augmentation mirrors, on the device
        seed=config.seed,
        window=augment.input_shape(),
    )
    if len(dataset) < config.batch_size * dist_info.world:
        raise TrainingError(
            f"only {len(dataset)} training patches for --batch-size {config.batch_size} on {dist_info.world} "
            "process(es); lower --stride or --batch-size, or set --iters"
        )
    generator = None
    if dist_info.enabled:
        sampler: torch.utils.data.Sampler = torch.utils.data.DistributedSampler(
            dataset, num_replicas=dist_info.world, rank=dist_info.rank, shuffle=True, seed=config.seed, drop_last=True
        )
    else:
        generator = torch.Generator()
        sampler = torch.utils.data.RandomSampler(dataset, generator=generator)
    # Workers are forked afresh every epoch (not persistent), so they see the epoch's windows (set_epoch).
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=config.workers,
        pin_memory=device.type == "cuda",
    )
    optimizer = build_optimizer(config, model.parameters())
    scheduler = build_scheduler(config, optimizer)
    train_model: nn.Module = model
    if dist_info.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return Parts(
        model,
        train_model,
        deep_supervision_loss(model, loss_fn).to(device),
        dataset,
        sampler,
        generator,
        loader,
        optimizer,
        scheduler,
        grad_scaler(device, config.amp),
        device,
        dist_info,
        augment,
    )


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """The seed of one epoch on one rank (patch order, flips, dropout)."""
    return int(np.random.SeedSequence([seed % 2**64, rank, epoch]).generate_state(1)[0])


def train_step(config: TrainConfig, parts: Parts, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """One optimiser step on a batch (image (B, C, *patch), label as the loader gives it); return the loss."""
    image = image.to(parts.device, non_blocking=True)  # the model converts it to its layout once
    label = label.to(parts.device, non_blocking=True)
    if parts.augment is not None:  # batched augmentation on the device (smp3d.augment)
        image, label = parts.augment(image, label)
    target = to_target(label, config.mode)
    with autocast_context(parts.device, config.amp):
        logits = parts.train_model(image)
    # A deep-supervised model returns [mask, coarser masks ...] in training.
    logits = [level.float() for level in logits] if isinstance(logits, list) else logits.float()
    loss = parts.loss_fn(logits, target)
    parts.optimizer.zero_grad(set_to_none=True)
    if parts.scaler is not None:
        parts.scaler.scale(loss).backward()
        if config.grad_clip is not None:
            parts.scaler.unscale_(parts.optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(parts.model.parameters(), config.grad_clip)
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
    else:
        loss.backward()
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(parts.model.parameters(), config.grad_clip)
        parts.optimizer.step()
    return loss.detach()


class Pace:
    """When the run stops: after ``epochs`` epochs, or, with a time budget, when the time left would no
    longer hold one more step plus the final validation and checkpoint. Its :meth:`fraction` drives the
    learning-rate schedule (iterations done, or the budget spent)."""

    def __init__(
        self,
        config: TrainConfig,
        parts: Parts,
        val_volumes: list[Volume],
        progress: Progress,
        clock: Callable[[], float],
    ) -> None:
        self.config, self.parts, self.clock = config, parts, clock
        self.total_steps = max(config.epochs * len(parts.loader), 1)
        self.budget = (
            Budget(config.time_budget * 60, spent=progress.seconds, clock=clock) if config.time_budget else None
        )
        self.step_seconds = 0.0  # a running mean of the last steps
        self.end_seconds: float | None = None  # the longest end of an epoch with validation and checkpoint
        self.val_windows = sum(_windows(v.spatial_shape, config.patch, config.val_overlap) for v in val_volumes)

    def fraction(self, iteration: int) -> float:
        if self.budget is not None:
            return self.budget.fraction()
        return min(iteration / self.total_steps, 1.0)

    def reserve(self) -> float:
        """Seconds to keep for the final validation and checkpoint."""
        if self.end_seconds is not None:
            return 1.2 * self.end_seconds
        # Before the first measurement: a forward costs about a third of a training step.
        return self.step_seconds * self.val_windows / max(self.config.batch_size, 1) / 2 + 1.0

    def out_of_time(self) -> bool:
        """With a budget: whether one more step would eat into the reserve (the same answer on every rank)."""
        if self.budget is None:
            return False
        done = not self.budget.allows(self.step_seconds + self.reserve())
        return bool(share_from_main(self.parts.dist_info, done))


def _windows(shape: tuple[int, ...], patch: tuple[int, ...], overlap: float) -> int:
    count = 1
    for size, p in zip(shape, patch, strict=True):
        step = max(int(p * (1 - overlap)), 1)
        count *= 1 if size <= p else math.ceil((size - p) / step) + 1
    return count


def train_epoch(config: TrainConfig, parts: Parts, epoch: int, progress: Progress, pace: Pace) -> tuple[float, bool]:
    """One pass over the epoch's patches, or fewer when the time budget runs out; return the mean
    training loss (over all ranks) and whether the budget ended the epoch."""
    seed = epoch_seed(config.seed, parts.dist_info.rank, epoch)
    torch.manual_seed(seed)
    if parts.generator is not None:
        parts.generator.manual_seed(seed)
    parts.dataset.set_epoch(epoch)
    if isinstance(parts.sampler, torch.utils.data.DistributedSampler):
        parts.sampler.set_epoch(epoch)
    parts.train_model.train()
    fraction_driven = isinstance(parts.scheduler, LRSchedule)
    running = torch.zeros((), device=parts.device)
    steps, out_of_time = 0, False
    bar = tqdm(
        parts.loader,
        desc=f"epoch {epoch + 1}" + ("" if pace.budget else f"/{config.epochs}"),
        disable=not (config.progress and parts.dist_info.main),
        leave=False,
        dynamic_ncols=True,
        file=sys.stderr,
    )
    for image, label in bar:
        if pace.out_of_time():
            out_of_time = True
            break
        if fraction_driven:
            parts.scheduler.update(pace.fraction(progress.iteration))
        started = pace.clock()
        running += train_step(config, parts, image, label)
        if pace.budget is not None:  # the clock needs the step finished (on a GPU, too)
            if parts.device.type == "cuda":
                torch.cuda.synchronize(parts.device)
            seconds = pace.clock() - started
            pace.step_seconds = (
                seconds if steps == 0 and not pace.step_seconds else 0.9 * pace.step_seconds + 0.1 * seconds
            )
        steps += 1
        progress.iteration += 1
    bar.close()
    train_loss = running / steps if steps else torch.full((), math.nan, device=parts.device)
    if parts.dist_info.enabled:
        torch.distributed.all_reduce(train_loss)
        train_loss /= parts.dist_info.world
    return float(train_loss), out_of_time


def validate(
    config: TrainConfig,
    parts: Parts,
    val_volumes: list[Volume],
    progress: Progress,
    row: Row,
    dice_keys: list[str],
    last: bool,
) -> tuple[bool, bool, dict[str, Any] | None]:
    """Validate when due (rank 0; always on the ``last`` epoch), update the best score and patience in
    ``progress``, step a plateau schedule; return (improved, stop) the same on every rank, and rank 0's
    metrics (with a preview of the first volume when plots are on; None when not validated)."""
    epoch = progress.epoch + 1
    improved = stop = False
    metrics = None
    due = bool(val_volumes) and (epoch % config.validate_every == 0 or last)
    if parts.dist_info.main and due:
        metrics = evaluate(parts.model, val_volumes, config, parts.device, parts.loss_fn, preview=config.plots)
        row.update({"val_loss": metrics["val_loss"], VAL_SCORE: metrics[VAL_SCORE]})
        row.update(zip(dice_keys, metrics["dice_per_class"], strict=True))
        if metrics[VAL_SCORE] > progress.best:
            progress.best, progress.stale, improved = metrics[VAL_SCORE], 0, True
        else:
            progress.stale += 1
            stop = config.patience is not None and progress.stale >= config.patience
    improved, stop, row[VAL_SCORE] = share_from_main(parts.dist_info, (improved, stop, row[VAL_SCORE]))  # type: ignore[misc]
    if isinstance(parts.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and not math.isnan(row[VAL_SCORE]):
        parts.scheduler.step(row[VAL_SCORE])  # before the checkpoint, so that it holds this step
    return improved, stop, metrics


class Recorder:
    """Rank 0's outputs: the console line, TensorBoard and the committed checkpoint of each epoch."""

    def __init__(
        self, run: RunDirectory | None, config: TrainConfig, class_names: list[str], log: Callable[[str], None]
    ) -> None:
        self.run, self.config, self.class_names, self.log = run, config, class_names, log
        self.fields = metric_fields(class_names)
        self.dice_keys = [f"dice_{name}" for name in class_names]
        self.tensorboard = TensorBoardLog(None)
        self.card_files: dict[str, bytes] | None = None

    def start(self, progress: Progress, resumed: bool) -> None:
        """Write ``metrics.csv`` as committed (the resumed checkpoint's rows, or just the header)."""
        if self.run is None:
            return
        if resumed and progress.epoch and not progress.rows:  # a checkpoint written before metrics were in it
            progress.rows = _committed_rows(self.run.path / "metrics.csv", progress.epoch)
        self.run.write_metrics(csv_text(progress.rows, self.fields))
        self.tensorboard = TensorBoardLog(self.run.path, purge_step=progress.iteration if resumed else None)

    def record(
        self,
        parts: Parts,
        progress: Progress,
        row: Row,
        improved: bool,
        has_validation: bool,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        self.log(format_row(row, self.dice_keys))
        self.tensorboard.write(row)
        if self.run is None:
            return
        best = None
        if improved:
            best = {"epoch": progress.epoch, "iteration": progress.iteration, VAL_SCORE: progress.best}
            best["dice_per_class"] = {
                name: row[key] for name, key in zip(self.class_names, self.dice_keys, strict=True)
            }
        elif not has_validation:  # without validation the last model is the best one
            best = {"epoch": progress.epoch, "iteration": progress.iteration}
        if self.card_files is None:
            self.card_files = model_card_files(parts.model)
        files = checkpoint_files(
            parts.model,
            parts.optimizer,
            parts.scheduler,
            self.config,
            progress,
            card_files=self.card_files,
            metrics=csv_text(progress.rows, self.fields),
            best=best,
        )
        self.run.commit(files, progress.epoch)
        if self.config.plots:
            self.draw(progress, metrics)

    def draw(self, progress: Progress, metrics: dict[str, Any] | None) -> None:
        """``progress.png`` and, after a validation, ``validation_preview.png`` in the run directory."""
        from .plots import write_preview, write_progress

        if self.run is None:
            return
        try:
            write_progress(self.run.path / "progress.png", progress.rows, self.class_names)
            if metrics is not None and metrics.get("preview") is not None:
                write_preview(
                    self.run.path / "validation_preview.png", **metrics["preview"], title=f"epoch {progress.epoch}"
                )
        except ImportError as err:  # matplotlib is a dependency, but a broken install should not stop training
            _warn(f"no plots: {err}")
            self.config.plots = False

    def close(self) -> None:
        self.tensorboard.close()
        if self.run is not None:
            self.run.close()


def _committed_rows(path: Path, epoch: int) -> list[Row]:
    """The rows of epochs 1..``epoch`` of an older run's ``metrics.csv``, each once (the latest)."""
    if not path.exists():
        return []
    rows: dict[int, Row] = {}
    for row in read_rows(path):
        try:
            number = int(row["epoch"])
        except (KeyError, TypeError, ValueError):
            continue
        if number <= epoch:
            rows[number] = row
    return [rows[n] for n in sorted(rows)]


def _resume_folder(config: TrainConfig, resume: str | os.PathLike | bool | None) -> Path | None:
    if resume is None or resume is False:
        return None
    if resume is True:
        if config.checkpoint_dir is None:
            raise TrainingError("--resume without a folder needs --checkpoint-dir (resumes CHECKPOINT_DIR/last)")
        return Path(config.checkpoint_dir) / "last"
    return Path(resume)


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=2)


def _open_run(
    config: TrainConfig, resume: bool, overwrite: bool, dist_info: Dist, log: Callable[[str], None]
) -> RunDirectory | None:
    """Rank 0 opens the run directory; every rank learns whether that failed (and waits for it)."""
    run, error = None, None
    if dist_info.main and config.checkpoint_dir is not None:
        try:
            run = open_run_directory(config.checkpoint_dir, resume=resume, overwrite=overwrite, log=log, warn=_warn)
        except TrainingError as err:
            if not dist_info.enabled:
                raise
            error = str(err)
    error = share_from_main(dist_info, error)
    if error is not None:
        raise TrainingError(error)  # type: ignore[arg-type]
    return run


def fit(
    config: TrainConfig,
    train_volumes: list[Volume],
    val_volumes: list[Volume],
    *,
    resume: str | os.PathLike | bool | None = None,
    overwrite: bool = False,
    class_names: list[str] | None = None,
    log: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> TrainResult:
    """Train ``config``'s model on ``train_volumes``; validate on ``val_volumes`` (may be empty).

    With ``config.checkpoint_dir`` every epoch is committed to that run directory. A directory
    that already holds a run is refused unless ``resume`` (True: continue from its ``last/``; a
    path: from that ``last/`` folder) or ``overwrite`` (delete the old run first) is given.
    ``log`` receives one line per epoch (default: the ``smp3d.training`` logger). With
    ``config.time_budget`` the run trains until the budget would no longer hold the final validation
    and checkpoint (measured on earlier epochs), then does them; ``clock`` (seconds) is what it reads.
    """
    log = log or _logger.info
    dist_info = init_distributed(config.device)
    device = resolve_device(config.device, dist_info)
    torch.manual_seed(config.seed + dist_info.rank)
    loss_fn = check_inputs(config, train_volumes, val_volumes)
    class_names = class_names or [str(c) for c in range(config.classes)]
    resume_folder = _resume_folder(config, resume)
    run = _open_run(config, resume_folder is not None, overwrite, dist_info, log)
    recorder = Recorder(run, config, class_names, log)
    try:
        parts = build_parts(config, train_volumes, loss_fn, device, dist_info)
        progress = Progress()
        if resume_folder is not None:
            progress = load_training_state(resume_folder, parts.model, parts.optimizer, parts.scheduler, device)
            log(f"resumed from {resume_folder} at epoch {progress.epoch}, iteration {progress.iteration}")
        if dist_info.main:
            recorder.start(progress, resumed=resume_folder is not None)
        session_started = clock()
        started = session_started - progress.seconds  # the seconds column counts earlier sessions too
        pace = Pace(config, parts, val_volumes, progress, clock)
        best_state = None
        epoch = progress.epoch
        while pace.budget is not None or epoch < config.epochs:
            train_loss, out_of_time = train_epoch(config, parts, epoch, progress, pace)
            pause_point("train", epoch + 1)
            last = (out_of_time or pace.out_of_time()) if pace.budget is not None else epoch + 1 == config.epochs
            end_started = clock()
            row: Row = {
                "epoch": epoch + 1,
                "iteration": progress.iteration,
                "lr": parts.optimizer.param_groups[0]["lr"],
                "train_loss": train_loss,
                "val_loss": float("nan"),
                VAL_SCORE: float("nan"),
            }
            improved, stop, metrics = validate(config, parts, val_volumes, progress, row, recorder.dice_keys, last)
            progress.epoch = epoch + 1
            row["seconds"] = clock() - started
            progress.rows.append(row)
            if dist_info.main:
                if improved:
                    best_state = {k: v.detach().to("cpu", copy=True) for k, v in parts.model.state_dict().items()}
                recorder.record(parts, progress, row, improved, has_validation=bool(val_volumes), metrics=metrics)
                if stop:
                    best = f"best {VAL_SCORE} {progress.best:.4f}"
                    log(f"early stopping: no improvement in {progress.stale} validations ({best})")
            epoch += 1
            if stop or last:
                break
            if pace.budget is not None:  # every rank learns how long rank 0's validation and checkpoint took
                validated, seconds = share_from_main(dist_info, (metrics is not None, clock() - end_started))  # type: ignore[misc]
                if validated or not val_volumes:
                    pace.end_seconds = max(pace.end_seconds or 0.0, seconds)
                    if pace.out_of_time():  # this epoch's validation and checkpoint are the final ones
                        break
    finally:
        recorder.close()
    seconds = clock() - session_started
    if dist_info.enabled:
        torch.distributed.barrier()
    last = progress.rows[-1] if progress.rows else {}
    return TrainResult(progress.best, last, progress.epoch, progress.iteration, seconds, parts.model, best_state)


def set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


__all__ = [
    "Pace",
    "Parts",
    "Recorder",
    "TrainResult",
    "build_parts",
    "check_inputs",
    "epoch_seed",
    "fit",
    "set_seed",
    "train_epoch",
    "train_step",
    "validate",
]
