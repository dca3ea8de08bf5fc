"""From files and settings to a planned run: the plan (given, kept with the run, or made now from
the training data), explicit settings over it, and the volumes read, normalised and resampled once.

This is what ``smp3d train`` does before :func:`~smp3d.training.fit`; from Python::

    from smp3d.training import TrainConfig, fit, prepare_run

    run = prepare_run(["data/train/"], ["data/val/"], overrides={"epochs": 100})
    result = fit(TrainConfig(**run.config), run.train, run.val)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .cache import cache_key, load_cached, store_cached
from .errors import TrainingError
from .fingerprint import fingerprint_volumes
from .plan import Plan, make_plan, read_plan
from .volumes import Volume, expand_specs, prepare_volume, read_volume, read_volumes

__all__ = ["NETWORK_SETTINGS", "PreparedRun", "fit_patch_to_model", "planned_config", "prepare_run"]

#: Settings that choose the network; giving any of them replaces the plan's network as a whole.
NETWORK_SETTINGS = ("arch", "encoder", "model_kwargs")


@dataclass
class PreparedRun:
    """``config``: :class:`~smp3d.training.TrainConfig` fields (the plan's with the overrides);
    ``plan``: the plan used; ``train`` and ``val``: prepared volumes."""

    config: dict[str, Any]
    plan: Plan
    train: list[Volume]
    val: list[Volume]


def fit_patch_to_model(config: dict[str, Any]) -> tuple[int, ...]:
    """The config's patch rounded down (never below one reduction) to the total reduction of its
    model, for a patch planned for another network. The model is built on the meta device."""
    from ..models import create_model

    patch = tuple(config["patch"])
    try:
        with torch.device("meta"):
            model = create_model(
                config["arch"],
                encoder_name=config["encoder"],
                in_channels=config["in_channels"],
                classes=config["classes"],
                spatial_dims=config["spatial_dims"],
                **config["model_kwargs"],
            )
    except (RuntimeError, NotImplementedError):  # a model that cannot be built on meta: fit() checks
        return patch
    if not getattr(model, "requires_divisible_input_shape", False):
        return patch
    stride = tuple(getattr(model, "output_stride", (1,) * len(patch)))
    return tuple(max(s, p // s * s) for p, s in zip(patch, stride, strict=True))


def planned_config(plan: Plan, overrides: dict[str, Any]) -> dict[str, Any]:
    """The plan's :class:`~smp3d.training.TrainConfig` fields with ``overrides`` (None: not given) on top.

    Any of :data:`NETWORK_SETTINGS` replaces the plan's network: the missing ones take
    TrainConfig's defaults (``unet``, ``resnet18``, no arguments), and the planned patch is
    rounded to the new network's reduction unless a patch is given too.
    """
    fields = plan.config_fields()
    given = {k: v for k, v in overrides.items() if v is not None}
    if any(k in given for k in NETWORK_SETTINGS):
        fields.update(arch="unet", encoder="resnet18", model_kwargs={})
    fields.update(given)
    if any(k in given for k in NETWORK_SETTINGS) and "patch" not in given:
        fields["patch"] = fit_patch_to_model(fields)
    return fields


def prepare_run(
    train_specs: Sequence[str],
    val_specs: Sequence[str] = (),
    *,
    plan: Plan | str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    spatial_dims: int | None = None,
    spacing: Sequence[float] | None = None,
    label_map: dict[int, int] | None = None,
    raw_key: str = "raw",
    label_key: str = "label",
    planning: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> PreparedRun:
    """Read the volumes, plan (unless ``plan`` is given), apply ``overrides``, prepare the volumes.

    Args:
        train_specs: training data, as :func:`~smp3d.training.volumes.expand_specs` takes them.
        val_specs: validation data, likewise.
        plan: a :class:`Plan` or a ``plan.json``; None plans from the training volumes now.
        overrides: TrainConfig fields set explicitly (None values count as not given).
        spatial_dims: 2 or 3 (default: the plan's, else 3).
        spacing: voxel size of files without a header (default: the plan's).
        label_map: label value -> class index (default: the plan's).
        raw_key: HDF5 dataset name of the image.
        label_key: HDF5 dataset name of the label.
        planning: arguments of :func:`~smp3d.training.plan.make_plan` (network, device, budget_gb,
            budget_seconds_per_step, modality, target_spacing, image_resampling, label_resampling, amp).
        cache_dir: keep prepared volumes here and reuse them (:mod:`.cache`); with a plan given, a
            cached volume is not read from its file at all.
        log: receives one line per planning decision.

    Returns:
        A :class:`PreparedRun`.
    """
    overrides = dict(overrides or {})
    if plan is not None and not isinstance(plan, Plan):
        plan = read_plan(plan)
    if plan is not None:
        if spatial_dims is not None and spatial_dims != plan.spatial_dims:
            raise TrainingError(
                f"--spatial-dims {spatial_dims} contradicts the plan's spatial_dims {plan.spatial_dims}"
            )
        spatial_dims = plan.spatial_dims
        spacing = spacing if spacing is not None else plan.spacing
        label_map = label_map if label_map is not None else plan.label_map
    spatial_dims = spatial_dims or 3
    spacing = None if spacing is None else tuple(float(s) for s in spacing)
    read = dict(raw_key=raw_key, label_key=label_key, spacing=spacing, label_map=label_map)
    train_specs = expand_specs(list(train_specs))
    val_specs = expand_specs(list(val_specs)) if val_specs else []
    read_first: list[Volume] = []  # read now to fingerprint them, prepared below
    if plan is None:
        read_first = read_volumes(train_specs, spatial_dims, **read)
        options = dict(planning or {})
        if overrides.get("patch") is not None:
            options["patch"] = overrides["patch"]
        if overrides.get("encoder") is not None and options.get("network") is None:
            options["network"] = overrides["encoder"]  # the trial step then measures a Unet with it
        plan = make_plan(fingerprint_volumes(read_first), label_map=label_map, spacing=spacing, **options)
        for note in plan.notes:
            (log or (lambda _: None))(f"plan: {note}")
    config = planned_config(plan, overrides)
    config.update(spacing=spacing, label_map=label_map)
    how = dict(
        normalization=config["normalize"],
        intensity_stats=config["intensity_stats"],
        target_spacing=config["target_spacing"],
        image_resampling=config["image_resampling"],
        label_resampling=config["label_resampling"],
    )
    settings = {"spatial_dims": spatial_dims, **read, **how}
    folder = None if cache_dir is None else Path(cache_dir)

    def prepared(spec: str, volume: Volume | None) -> Volume:
        key = None if folder is None else cache_key(spec, settings)
        if folder is not None and key is not None and (hit := load_cached(folder, key)) is not None:
            return hit
        if volume is None:
            volume = read_volume(spec, spatial_dims, need_label=True, **read)
        prepare_volume(volume, **how)
        if folder is not None and key is not None:
            store_cached(folder, key, volume)
        return volume

    train = [prepared(spec, read_first[i] if read_first else None) for i, spec in enumerate(train_specs)]
    val = [prepared(spec, None) for spec in val_specs]
    return PreparedRun(config, plan, train, val)
