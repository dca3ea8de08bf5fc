"""The training loop behind ``smp3d train`` and ``smp3d demo``.

One loop for every case: 2D or 3D, CPU or GPU, one process or many under ``torchrun``
(DistributedDataParallel with a distributed sampler; only rank 0 validates, logs and writes).
Validation segments whole volumes with the sliding window and reports per-class Dice; the best
(highest mean foreground Dice) and the last model are saved with ``save_pretrained`` beside a
``trainer.json`` that ``smp3d predict`` reads.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..base.hub import atomic_write
from .data import CLIError, PatchDataset, Volume, check_labels

TRAINER_FILE = "trainer.json"
STATE_FILE = "training_state.pt"
LOSSES = ("ce", "wce", "bce", "dice", "gdl", "focal", "tversky", "lovasz")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("cosine", "plateau", "constant")


@dataclass
class TrainConfig:
    """Everything that defines a training run (also written to ``trainer.json``)."""

    arch: str = "unet"
    encoder: str = "resnet18"
    encoder_weights: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    in_channels: int = 1
    classes: int = 2
    spatial_dims: int = 3
    mode: str = "multiclass"  # binary | multiclass | multilabel
    loss: str = "ce+dice"
    ignore_index: int | None = None
    patch: tuple[int, ...] = (64, 64, 64)
    stride: tuple[int, ...] | None = None
    batch_size: int = 2
    epochs: int = 10
    iters: int | None = None  # iterations per epoch; None: one pass over the grid of patches
    foreground: float = 0.33
    flip: bool | tuple[int, ...] = True  # True: every spatial axis; or the axes to flip
    normalize: str = "zscore"
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    min_lr: float = 1e-6
    scheduler: str = "cosine"
    patience: int | None = None  # validations without improvement before stopping
    validate_every: int = 1  # epochs
    val_overlap: float = 0.5
    checkpoint_dir: str | None = None
    device: str = "auto"
    amp: bool = False
    channels_last: bool | None = None  # None: on CUDA only
    checkpointing: str = "none"  # activation checkpointing: none | encoder | decoder | both
    seed: int = 0
    progress: bool = True

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["patch"] = list(self.patch)
        data["stride"] = list(self.stride) if self.stride else None
        return data


# -- distributed -------------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: str) -> Dist:
    """Join the process group that ``torchrun`` describes in the environment (no-op without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda") or device.startswith("cuda")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank)


def resolve_device(name: str, dist_info: Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CLIError(f"--device {name!r} is not a device; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {name}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", dist_info.local_rank if dist_info.enabled else torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


# -- model, loss, optimiser ----------------------------------------------------------------------
def build_model(config: TrainConfig) -> nn.Module:
    from ..models import create_model

    kwargs = dict(config.model_kwargs)
    model = create_model(
        config.arch,
        encoder_name=config.encoder,
        encoder_weights=config.encoder_weights,
        in_channels=config.in_channels,
        classes=config.classes,
        spatial_dims=config.spatial_dims,
        **kwargs,
    )
    check_patch_fits_model(model, config.patch)
    return model


def check_patch_fits_model(model: nn.Module, patch: tuple[int, ...], what: str = "--patch") -> None:
    if not getattr(model, "requires_divisible_input_shape", False):
        return
    stride = tuple(getattr(model, "output_stride", (1,) * len(patch)))
    if any(p % s for p, s in zip(patch, stride, strict=True)):
        suggestion = tuple(math.ceil(p / s) * s for p, s in zip(patch, stride, strict=True))
        raise CLIError(
            f"{what} {tuple(patch)} must be divisible by the model's reduction {stride} on every axis; "
            f"try {' '.join(map(str, suggestion))}"
        )


def _one_loss(name: str, mode: str, ignore_index: int | None) -> nn.Module:
    from .. import losses as L

    ignore = {} if ignore_index is None else {"ignore_index": ignore_index}
    if name in ("ce", "wce"):
        if mode != "multiclass":
            raise CLIError(f"--loss {name} needs class-index labels and --classes >= 2; use bce for {mode} targets")
        if name == "ce":
            return nn.CrossEntropyLoss(ignore_index=-100 if ignore_index is None else ignore_index)
        return L.WeightedCrossEntropyLoss(**ignore)
    if name == "bce":
        if mode == "multiclass":
            raise CLIError("--loss bce needs binary or multi-label targets; use ce (or wce) for class-index labels")
        return L.SoftBCEWithLogitsLoss(**ignore)
    if name == "dice":
        return L.DiceLoss(mode, from_logits=True, **ignore)
    if name == "gdl":
        return L.GeneralizedDiceLoss(mode, from_logits=True, **ignore)
    if name == "focal":
        return L.FocalLoss(mode, **ignore)
    if name == "tversky":
        return L.TverskyLoss(mode, from_logits=True, **ignore)
    if name == "lovasz":
        return L.LovaszLoss(mode, **ignore)
    raise CLIError(f"unknown loss {name!r}; expected one of {', '.join(LOSSES)}, or several joined by '+'")


class SumLoss(nn.Module):
    """The sum of several losses (``--loss ce+dice``)."""

    def __init__(self, parts: dict[str, nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(parts)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(loss(logits, target) for loss in self.parts.values())  # type: ignore[return-value]


def build_loss(name: str, mode: str, ignore_index: int | None = None) -> nn.Module:
    names = [part.strip().lower() for part in name.split("+")]
    if not all(names):
        raise CLIError(f"--loss {name!r}: empty loss name")
    parts = {part: _one_loss(part, mode, ignore_index) for part in names}
    return next(iter(parts.values())) if len(parts) == 1 else SumLoss(parts)


def build_optimizer(config: TrainConfig, params: Any) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.99, nesterov=True, weight_decay=config.weight_decay)
    raise CLIError(f"unknown optimizer {config.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1), eta_min=config.min_lr)
    if config.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=0.5, patience=2, min_lr=config.min_lr
        )
    if config.scheduler == "constant":
        return None
    raise CLIError(f"unknown scheduler {config.scheduler!r}; expected one of {', '.join(SCHEDULERS)}")


def to_target(label: torch.Tensor, mode: str) -> torch.Tensor:
    """The loss's target layout: class indices for multi-class, (B, C, *spatial) floats otherwise."""
    if mode == "multiclass":
        return label.long()
    if mode == "binary" and label.dim() >= 2 and label.dtype != torch.float32:
        return label.unsqueeze(1).float()
    return label.float()


def activate(logits: torch.Tensor, mode: str) -> torch.Tensor:
    return logits.float().softmax(1) if mode == "multiclass" else logits.float().sigmoid()


# -- validation ----------------------------------------------------------------------------------
def foreground_classes(mode: str, classes: int) -> list[int]:
    return list(range(1, classes)) if mode == "multiclass" else list(range(classes))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    volumes: list[Volume],
    config: TrainConfig,
    device: torch.device,
    loss_fn: nn.Module | None = None,
) -> dict[str, Any]:
    """Segment each volume with the sliding window; return the mean loss and per-class Dice."""
    from ..inference import sliding_window_inference
    from ..metrics import SegmentationMetrics

    was_training = model.training
    model.eval()
    metrics = SegmentationMetrics(
        config.mode,
        num_classes=config.classes,
        ignore_index=config.ignore_index if config.mode == "multiclass" else None,
        threshold=None if config.mode == "multiclass" else 0.5,
    )
    losses = []
    for volume in volumes:
        image = torch.from_numpy(volume.image)[None].to(device)
        logits = sliding_window_inference(
            model,
            image,
            config.patch,
            overlap=config.val_overlap,
            batch_size=max(config.batch_size, 1),
            autocast=torch.bfloat16 if config.amp else None,
            channels_last=_channels_last(config, device),
        ).float()
        target = to_target(torch.from_numpy(volume.label)[None].to(device), config.mode)  # type: ignore[arg-type]
        if loss_fn is not None:
            losses.append(float(loss_fn(logits, target)))
        if config.mode == "multiclass":
            metrics.update(logits, target)
        else:
            metrics.update(logits.sigmoid(), target.round().long())
    model.train(was_training)
    dice = metrics.compute()["dice"]
    fg = dice[foreground_classes(config.mode, config.classes)]
    fg = fg[~fg.isnan()]
    return {
        "val_loss": float(np.mean(losses)) if losses else float("nan"),
        "val_dice": float(fg.mean()) if len(fg) else float("nan"),
        "dice_per_class": [float(d) for d in dice],
    }


CHECKPOINTING = {
    "none": dict(encoder=False, decoder=False),
    "encoder": dict(encoder=True, decoder=False),
    "decoder": dict(encoder=False, decoder=True),
    "both": dict(encoder=True, decoder=True),
}


def _channels_last(config: TrainConfig, device: torch.device) -> bool:
    if config.channels_last is None:
        return device.type == "cuda" and config.spatial_dims in (2, 3)
    return config.channels_last


# -- checkpoints and logs ------------------------------------------------------------------------
def save_checkpoint(model: nn.Module, directory: Path, config: TrainConfig, extra: dict[str, Any]) -> None:
    model.save_pretrained(directory)  # type: ignore[operator]
    payload = {"config": config.to_json(), **extra}
    text = json.dumps(payload, indent=2) + "\n"
    atomic_write(directory / TRAINER_FILE, lambda temp: Path(temp).write_text(text, encoding="utf-8"))


def read_trainer_file(directory: Path) -> dict[str, Any] | None:
    path = directory / TRAINER_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CLIError(f"{path}: not valid JSON ({err})") from None


class MetricLog:
    """Rows of metrics appended to ``metrics.csv`` (and TensorBoard when it is installed)."""

    def __init__(self, directory: Path | None, class_names: list[str], resume: bool) -> None:
        self.fields = ["epoch", "iteration", "lr", "train_loss", "val_loss", "val_dice", "seconds"] + [
            f"dice_{name}" for name in class_names
        ]
        self.path = directory / "metrics.csv" if directory else None
        self.writer = None
        if self.path is None:
            return
        if not (resume and self.path.exists()):
            with open(self.path, "w", newline="") as f:
                csv.DictWriter(f, self.fields).writeheader()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(directory / "tensorboard"))
        except Exception:  # TensorBoard is optional
            self.writer = None

    def write(self, row: dict[str, Any]) -> None:
        if self.path is not None:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, self.fields, extrasaction="ignore").writerow(row)
        if self.writer is not None:
            for key, value in row.items():
                if key not in ("epoch", "iteration") and isinstance(value, float) and not math.isnan(value):
                    self.writer.add_scalar(key, value, row["iteration"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _format_row(row: dict[str, Any], dice_keys: list[str]) -> str:
    parts = [f"epoch {row['epoch']:>3}", f"iter {row['iteration']:>5}", f"loss {row['train_loss']:.4f}"]
    if not math.isnan(row.get("val_dice", float("nan"))):
        parts.append(f"val_loss {row['val_loss']:.4f}")
        parts.append(f"val_dice {row['val_dice']:.4f}")
        parts.append("[" + " ".join(f"{row[k]:.3f}" for k in dice_keys) + "]")
    parts.append(f"lr {row['lr']:.2e}")
    parts.append(f"{row['seconds']:.0f}s")
    return "  ".join(parts)


# -- the loop ------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    best_dice: float
    last_metrics: dict[str, Any]
    epochs: int
    iterations: int
    seconds: float
    model: nn.Module
    best_state: dict[str, torch.Tensor] | None = None  # rank 0: a CPU copy of the best validated weights


def fit(
    config: TrainConfig,
    train_volumes: list[Volume],
    val_volumes: list[Volume],
    *,
    resume: Path | None = None,
    class_names: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train ``config``'s model on ``train_volumes``; validate on ``val_volumes`` (may be empty)."""
    dist_info = init_distributed(config.device)
    device = resolve_device(config.device, dist_info)
    torch.manual_seed(config.seed + dist_info.rank)
    if config.mode not in ("binary", "multiclass", "multilabel"):
        raise CLIError(f"unknown task mode {config.mode!r}")
    loss_fn = build_loss(config.loss, config.mode, config.ignore_index)
    check_labels(train_volumes + val_volumes, config.mode, config.classes)
    for volume in train_volumes + val_volumes:
        if volume.image.shape[0] != config.in_channels:
            raise CLIError(
                f"{volume.name}: image has {volume.image.shape[0]} channels but --in-channels is {config.in_channels}"
            )
    class_names = class_names or [str(c) for c in range(config.classes)]

    model = build_model(config)
    model.set_channels_last(_channels_last(config, device))  # the run's choice, not only the CUDA default
    model.set_checkpointing(**CHECKPOINTING[config.checkpointing])
    model = model.to(device)
    loss_fn = loss_fn.to(device)
    dataset = PatchDataset(
        train_volumes,
        config.patch,
        config.stride,
        samples=None if config.iters is None else config.iters * config.batch_size * dist_info.world,
        foreground=config.foreground,
        flip=config.flip,
        seed=config.seed,
    )
    if len(dataset) < config.batch_size * dist_info.world:
        raise CLIError(
            f"only {len(dataset)} training patches for --batch-size {config.batch_size} on {dist_info.world} "
            "process(es); lower --stride or --batch-size, or set --iters"
        )
    if dist_info.enabled:
        sampler: torch.utils.data.Sampler = torch.utils.data.DistributedSampler(
            dataset, num_replicas=dist_info.world, rank=dist_info.rank, shuffle=True, seed=config.seed, drop_last=True
        )
    else:
        generator = torch.Generator().manual_seed(config.seed)
        sampler = torch.utils.data.RandomSampler(dataset, generator=generator)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.batch_size, sampler=sampler, drop_last=True, pin_memory=device.type == "cuda"
    )
    steps_per_epoch = len(loader)
    optimizer = build_optimizer(config, model.parameters())
    scheduler = build_scheduler(config, optimizer, config.epochs * steps_per_epoch)

    start_epoch, iteration, best, stale = 0, 0, -math.inf, 0
    if resume is not None:
        start_epoch, iteration, best, stale = _load_state(resume, model, optimizer, scheduler, device)
        log(f"resumed from {resume} at epoch {start_epoch}, iteration {iteration}")
    train_model: nn.Module = model
    if dist_info.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    checkpoint_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else None
    if checkpoint_dir is not None and dist_info.main:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    metrics_log = MetricLog(checkpoint_dir if dist_info.main else None, class_names, resume is not None)
    dice_keys = [f"dice_{name}" for name in class_names]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if config.amp else nullcontext()
    started = time.perf_counter()
    last: dict[str, Any] = {}
    best_state: dict[str, torch.Tensor] | None = None
    epoch = start_epoch
    for epoch in range(start_epoch, config.epochs):
        dataset.set_epoch(epoch)
        if isinstance(sampler, torch.utils.data.DistributedSampler):
            sampler.set_epoch(epoch)
        train_model.train()
        running = torch.zeros((), device=device)
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not (config.progress and dist_info.main),
            leave=False,
            dynamic_ncols=True,
            file=sys.stderr,
        )
        for image, label in bar:
            image = image.to(device, non_blocking=True)  # the model converts it to its layout once
            target = to_target(label.to(device, non_blocking=True), config.mode)
            with autocast:
                logits = train_model(image)
            loss = loss_fn(logits.float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None and not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step()
            running += loss.detach()
            iteration += 1
        train_loss = running / max(steps_per_epoch, 1)
        if dist_info.enabled:
            torch.distributed.all_reduce(train_loss)
            train_loss /= dist_info.world
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "iteration": iteration,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": float(train_loss),
            "val_loss": float("nan"),
            "val_dice": float("nan"),
        }
        stop = False
        validate = val_volumes and ((epoch + 1) % config.validate_every == 0 or epoch + 1 == config.epochs)
        if dist_info.main:
            if validate:
                metrics = evaluate(model, val_volumes, config, device, loss_fn)
                row.update(val_loss=metrics["val_loss"], val_dice=metrics["val_dice"])
                row.update(zip(dice_keys, metrics["dice_per_class"], strict=True))
                score = metrics["val_dice"]
                if score > best:
                    best, stale = score, 0
                    best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                    if checkpoint_dir is not None:
                        save_checkpoint(
                            model,
                            checkpoint_dir / "best",
                            config,
                            {
                                "epoch": epoch + 1,
                                "iteration": iteration,
                                "val_dice": score,
                                "dice_per_class": dict(zip(class_names, metrics["dice_per_class"], strict=True)),
                            },
                        )
                else:
                    stale += 1
                    if config.patience is not None and stale >= config.patience:
                        stop = True
            row["seconds"] = time.perf_counter() - started
            last = row
            metrics_log.write(row)
            log(_format_row(row, dice_keys))
            if checkpoint_dir is not None:
                _save_last(
                    model, optimizer, scheduler, checkpoint_dir / "last", config, epoch + 1, iteration, best, stale
                )
                if not val_volumes:  # without validation the last model is the best one
                    save_checkpoint(
                        model, checkpoint_dir / "best", config, {"epoch": epoch + 1, "iteration": iteration}
                    )
            if stop:
                log(f"early stopping: no improvement in {stale} validations (best val_dice {best:.4f})")
        if dist_info.enabled:  # every process follows rank 0's decisions
            shared = [stop, row["val_dice"]]
            torch.distributed.broadcast_object_list(shared, src=0)
            stop, row["val_dice"] = bool(shared[0]), float(shared[1])
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and not math.isnan(row["val_dice"]):
            scheduler.step(row["val_dice"])
        if stop:
            break
    metrics_log.close()
    seconds = time.perf_counter() - started
    if dist_info.enabled:
        torch.distributed.barrier()
    return TrainResult(best, last, epoch + 1, iteration, seconds, model, best_state)


def _save_last(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    directory: Path,
    config: TrainConfig,
    epoch: int,
    iteration: int,
    best: float,
    stale: int,
) -> None:
    save_checkpoint(model, directory, config, {"epoch": epoch, "iteration": iteration})
    state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": epoch,
        "iteration": iteration,
        "best": best,
        "stale": stale,
    }
    atomic_write(directory / STATE_FILE, lambda temp: torch.save(state, temp))


def _load_state(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, device: torch.device
) -> tuple[int, int, float, int]:
    from safetensors.torch import load_file

    weights, state_file = directory / "model.safetensors", directory / STATE_FILE
    for path in (weights, state_file):
        if not path.exists():
            raise CLIError(f"--resume {directory}: missing {path.name} (expected a 'last' checkpoint folder)")
    try:
        model.load_state_dict(load_file(str(weights), device=str(device)), strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CLIError(f"--resume {directory}: weights do not fit this model ({first})") from None
    state = torch.load(state_file, map_location=device, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    return int(state["epoch"]), int(state["iteration"]), float(state["best"]), int(state["stale"])


def dice_table(class_names: list[str], dice: list[float]) -> str:
    width = max(len(n) for n in class_names)
    return "\n".join(f"  {name:<{width}}  {d:.4f}" for name, d in zip(class_names, dice, strict=True))


def set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


__all__ = [
    "TrainConfig",
    "TrainResult",
    "activate",
    "build_loss",
    "build_model",
    "evaluate",
    "fit",
    "set_seed",
    "to_target",
]
