"""What defines a training run: :class:`TrainConfig`, the choices it accepts, and what follows
from it and the device."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..augment.presets import PRESETS as AUGMENTATIONS

LOSSES = ("ce", "wce", "bce", "dice", "gdl", "focal", "tversky", "lovasz")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("cosine", "poly", "plateau", "constant")
MODES = ("binary", "multiclass", "multilabel")

#: ``TrainConfig.checkpointing`` -> the arguments of ``model.set_checkpointing``.
CHECKPOINTING = {
    "none": dict(encoder=False, decoder=False),
    "encoder": dict(encoder=True, decoder=False),
    "decoder": dict(encoder=False, decoder=True),
    "both": dict(encoder=True, decoder=True),
}


@dataclass
class TrainConfig:
    """Everything that defines a training run; written into each checkpoint's ``trainer.json``
    (``smp3d predict`` reads ``patch``, ``mode`` and ``normalize`` from it).

    Model: ``arch``, ``encoder``, ``encoder_weights`` and ``model_kwargs`` go to
    ``smp3d.create_model`` with ``in_channels``, ``classes`` and ``spatial_dims``; ``deep_supervision``
    adds the decoder's per-level heads and trains them with :class:`smp3d.losses.DeepSupervisionLoss`
    (nnU-Net's weights; validation and the saved model's eval output are the full-resolution mask only).
    Task: ``mode`` is ``binary``, ``multiclass`` (class-index labels, ``classes`` counts the
    background) or ``multilabel`` ((C, *spatial) targets); ``loss`` is one of :data:`LOSSES` or
    a sum such as ``"ce+dice"``.
    Data: ``patch`` (voxels per axis); without ``iters`` an epoch is one pass over the grid of
    patches ``stride`` apart, with it ``iters`` batches of random patches, ``foreground`` of them
    centred on a labelled voxel; ``flip`` is True (every axis), False, or the axes to flip.
    ``normalize`` records how the volumes were normalised (the caller normalises them).
    ``augment`` names the batched augmentation on the training device (:data:`AUGMENTATIONS`:
    ``nnunet``, nnU-Net's transform set and probabilities; ``flips``; ``none``), whose mirroring
    uses the ``flip`` axes; see ``docs/augment.md``.
    Optimisation: ``optimizer`` (:data:`OPTIMIZERS`; ``momentum`` is SGD's Nesterov momentum),
    ``lr`` and ``weight_decay`` (None: the optimiser's default, 1e-3/1e-4 for Adam(W), 1e-2/3e-5 for
    SGD), ``scheduler`` (:data:`SCHEDULERS`: cosine down to ``min_lr`` or poly with ``poly_exponent``,
    both following the fraction of the run done; see :mod:`.schedule`), ``warmup`` (fraction of the
    run with a linear warm-up), ``grad_clip`` (max gradient norm; nnU-Net uses 12), ``time_budget``
    (minutes: the run ends in time, with a final validation and checkpoint; ``epochs`` is then
    ignored), ``patience`` (validations without improvement before stopping), ``validate_every``
    (epochs). ``folds``/``fold`` record the cross-validation split (see :mod:`.folds`).
    Run: ``checkpoint_dir`` (the run directory, see ``docs/reliability.md``; None saves
    nothing), ``device`` (auto, cpu, cuda, cuda:N), ``amp`` (``"bf16"``/True or ``"fp16"`` autocast; fp16
    adds a gradient scaler), ``workers`` (DataLoader processes; memory is pinned on CUDA), ``plots``
    (``progress.png`` and a validation preview each epoch), ``channels_last``
    (None: on CUDA only), ``checkpointing`` (activation checkpointing, :data:`CHECKPOINTING`),
    ``seed``, ``progress`` (progress bars on stderr).
    Geometry: ``target_spacing``, ``spacing``, ``image_resampling``, ``label_resampling``,
    ``intensity_stats`` and ``label_map`` say how the volumes were read (``smp3d predict`` reads
    them to bring its inputs onto the training grid and the predictions back).
    """

    arch: str = "unet"
    encoder: str = "resnet18"
    encoder_weights: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    deep_supervision: bool | None = None  # per-level heads + DeepSupervisionLoss; None: when the decoder has levels
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
    augment: str = "nnunet"  # nnunet | flips | none (smp3d.augment presets, on the training device)
    optimizer: str = "adamw"
    lr: float | None = None  # None: the optimiser's default (schedule.OPTIMIZER_DEFAULTS)
    weight_decay: float | None = None
    min_lr: float = 1e-6
    scheduler: str = "cosine"
    patience: int | None = None  # validations without improvement before stopping
    validate_every: int = 1  # epochs
    val_overlap: float = 0.5
    checkpoint_dir: str | None = None
    device: str = "auto"
    amp: bool | str = False  # False, "bf16" (or True) or "fp16" (with a gradient scaler)
    channels_last: bool | None = None  # None: on CUDA only
    checkpointing: str = "none"  # activation checkpointing: none | encoder | decoder | both
    seed: int = 0
    progress: bool = True
    # Geometry and intensities (smp3d plan, docs/recipe.md): volumes are normalised with ``normalize``
    # (``ct`` uses ``intensity_stats``, one dict per channel), then resampled to ``target_spacing``
    # (None: as stored) with ``image_resampling`` / ``label_resampling``; ``spacing`` is the voxel size
    # of files without a header (HDF5, NumPy); ``label_map`` remaps label values on load.
    target_spacing: tuple[float, ...] | None = None
    spacing: tuple[float, ...] | None = None
    image_resampling: str = "linear"  # linear | cubic
    label_resampling: str = "nearest"  # nearest | onehot
    intensity_stats: list[dict[str, float]] | None = None
    label_map: dict[int, int] | None = None
    # The loop (see smp3d.training.schedule): SGD momentum, poly exponent, warm-up fraction, gradient clipping,
    # a wall-clock budget in minutes, DataLoader worker processes, cross-validation folds, pictures per epoch.
    momentum: float = 0.99
    poly_exponent: float = 0.9
    warmup: float = 0.0
    grad_clip: float | None = None
    time_budget: float | None = None
    workers: int = 0
    folds: int | None = None
    fold: int | None = None
    plots: bool = True

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["patch"] = list(self.patch)
        data["stride"] = list(self.stride) if self.stride else None
        for key in ("target_spacing", "spacing"):
            data[key] = None if data[key] is None else list(data[key])
        if self.label_map is not None:
            data["label_map"] = {str(k): v for k, v in self.label_map.items()}
        return data


def channels_last_for(config: TrainConfig, device: torch.device) -> bool:
    """The run's memory layout: ``config.channels_last``, or by default channels-last on CUDA."""
    if config.channels_last is None:
        return device.type == "cuda" and config.spatial_dims in (2, 3)
    return config.channels_last


__all__ = [
    "AUGMENTATIONS",
    "CHECKPOINTING",
    "LOSSES",
    "MODES",
    "OPTIMIZERS",
    "SCHEDULERS",
    "TrainConfig",
    "channels_last_for",
]
