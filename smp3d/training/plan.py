"""Plans: from a dataset's :class:`~smp3d.training.fingerprint.Fingerprint` to the numbers a run
trains with, written as ``plan.json`` for a person to read and edit (``smp3d plan``).

The rules (``docs/recipe.md``, section Planning):

- **Target spacing**: the median spacing per axis. When the coarsest axis is more than
  :data:`ANISOTROPY_RATIO` times coarser than the others *and* has fewer than a third of their
  voxels (a thick-slice dataset), that axis takes the :data:`COARSE_AXIS_PERCENTILE` th percentile
  of its spacings instead, never finer than the other axes (nnU-Net's rule).
- **Normalisation**: ``ct`` when every channel's images reach below -500 (Hounsfield air), else
  ``zscore``; ``--modality`` decides instead when given.
- **Topology** for a patch: stage after stage, an axis is pooled (stride 2) while its spacing is
  within 2x of the finest still-poolable axis and its feature map keeps at least
  2 x :data:`MIN_FEATURE_MAP` voxels (3x when it would be the only axis pooled); a kernel is 3 along
  an axis once that axis's spacing is within 2x of the finest, else 1; the last stage's kernel is 3.
- **Patch and batch size** for a compute budget: the patch keeps the aspect of the physical field of
  view (``1 / spacing``), is at most the smallest resampled volume, and is divisible by the
  topology's reduction. A trial training step (forward, backward, optimiser step) measures the cost:
  peak GPU memory against ``budget_gb``, or seconds per step against ``budget_seconds_per_step``.
  The largest patch whose batch of :data:`MIN_BATCH` fits is kept; the rest of the budget buys a
  larger batch, capped so that one batch covers at most 5% of the dataset's voxels.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..base.hub import atomic_write
from .budget import MIN_BATCH, Measure, fit_budget, measure_step
from .errors import TrainingError
from .fingerprint import Fingerprint
from .geometry import IMAGE_RESAMPLING, LABEL_RESAMPLING, resampled_shape

__all__ = [
    "NETWORKS",
    "Plan",
    "Topology",
    "choose_normalization",
    "make_plan",
    "network_for",
    "patch_for_voxels",
    "plan_target_spacing",
    "plan_topology",
    "read_plan",
    "write_plan",
]

ANISOTROPY_RATIO = 3.0
COARSE_AXIS_PERCENTILE = 10
MIN_FEATURE_MAP = 4
MAX_DATASET_FRACTION = 0.05
CT_AIR_BELOW = -500.0
#: ``--network`` shorthands -> (architecture, encoder, extra model arguments).
NETWORKS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "resenc": ("nnunet", "resenc_m", {"decoder_convs_per_block": 1}),
    "plain": ("nnunet", "plain_nnunet", {}),
    "light": ("nnunet", "resenc_m", {"decoder_convs_per_block": 1}),
}
#: First-stage width of ``light`` (``resenc`` and ``plain``: nnU-Net's 32).
LIGHT_BASE_CHANNELS = 16
#: The CPU's default budget: seconds per training step (``light`` at 64^3, batch 2, one thread: ~1.2 s).
CPU_SECONDS_PER_STEP = 2.0
MODALITIES = ("auto", "ct", "mr", "other", "none")
PLAN_VERSION = 1


# -- spacing and normalisation ---------------------------------------------------------------------
def plan_target_spacing(
    spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]]
) -> tuple[tuple[float, ...], str]:
    """The target spacing of a dataset and a sentence saying how it was chosen (rule in the module doc)."""
    spacing_array = np.asarray(spacings, dtype=np.float64)
    target = np.median(spacing_array, axis=0)
    median_shape = np.median(np.asarray(shapes, dtype=np.float64), axis=0)
    why = f"median spacing {tuple(round(float(t), 4) for t in target)}"
    if len(target) == 3:  # nnU-Net's rule is for volumes; 2D images keep their median
        coarse = int(np.argmax(target))
        others = [a for a in range(len(target)) if a != coarse]
        finer = max(target[a] for a in others)
        thick_slices = target[coarse] > ANISOTROPY_RATIO * finer
        few_slices = median_shape[coarse] * ANISOTROPY_RATIO < min(median_shape[a] for a in others)
        if thick_slices and few_slices:
            low = float(np.percentile(spacing_array[:, coarse], COARSE_AXIS_PERCENTILE))
            target[coarse] = max(low, finer)
            why += (
                f"; axis {coarse} is anisotropic (thick slices, few voxels): its spacing is the "
                f"{COARSE_AXIS_PERCENTILE}th percentile, {target[coarse]:.4g}"
            )
    return tuple(float(t) for t in target), why


def choose_normalization(fingerprint: Fingerprint, modality: str = "auto") -> tuple[str, str]:
    """The normalisation scheme (``ct``, ``zscore`` or ``none``) and why."""
    if modality not in MODALITIES:
        raise TrainingError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    if modality == "ct":
        return "ct", "modality ct (given)"
    if modality == "none":
        return "none", "no normalisation (given)"
    if modality in ("mr", "other"):
        return "zscore", f"modality {modality} (given): per-volume z-score inside the non-zero mask"
    lows = [stats["image_min"] for stats in fingerprint.intensity]
    if lows and all(low <= CT_AIR_BELOW for low in lows):
        return "ct", f"images reach {min(lows):.0f} (below {CT_AIR_BELOW:.0f}, Hounsfield air): CT"
    return "zscore", "intensities look like MR or microscopy (no Hounsfield air): per-volume z-score"


# -- topology --------------------------------------------------------------------------------------
@dataclass
class Topology:
    """Per-stage strides (the first stage: 1) and kernels, and the patch divisor per axis."""

    strides: list[tuple[int, ...]]
    kernel_sizes: list[tuple[int, ...]]

    @property
    def divisor(self) -> tuple[int, ...]:
        return tuple(math.prod(stride[a] for stride in self.strides) for a in range(len(self.strides[0])))

    @property
    def stages(self) -> int:
        return len(self.strides)


def plan_topology(
    spacing: Sequence[float], patch: Sequence[int], max_stages: int = 8, min_feature_map: int = MIN_FEATURE_MAP
) -> Topology:
    """Strides and kernels for ``patch`` at ``spacing`` (rule in the module doc)."""
    dims = len(spacing)
    current_spacing = [float(s) for s in spacing]
    size = [int(p) for p in patch]
    strides: list[tuple[int, ...]] = [(1,) * dims]
    kernels: list[tuple[int, ...]] = []
    kernel = [1] * dims
    while len(strides) < max_stages:
        poolable = [a for a in range(dims) if size[a] >= 2 * min_feature_map]
        if not poolable:
            break
        finest = min(current_spacing[a] for a in poolable)
        pooled = [a for a in poolable if current_spacing[a] / finest < 2]
        if len(pooled) == 1 and size[pooled[0]] < 3 * min_feature_map:
            break
        finest_all = min(current_spacing)
        kernel = [3 if k == 3 or current_spacing[a] / finest_all < 2 else 1 for a, k in enumerate(kernel)]
        kernels.append(tuple(kernel))
        stride = tuple(2 if a in pooled else 1 for a in range(dims))
        for a in pooled:
            current_spacing[a] *= 2
            size[a] = math.ceil(size[a] / 2)
        strides.append(stride)
    kernels.append((3,) * dims)
    return Topology(strides, kernels)


def _fit_topology(spacing: Sequence[float], patch: Sequence[int], max_stages: int) -> tuple[tuple[int, ...], Topology]:
    """Round ``patch`` down to its topology's divisor (which can only lower the pooling); repeat until stable."""
    patch = tuple(max(1, int(p)) for p in patch)
    while True:
        topology = plan_topology(spacing, patch, max_stages)
        rounded = tuple(max(d, p // d * d) for p, d in zip(patch, topology.divisor, strict=True))
        if rounded == patch:
            return patch, topology
        patch = rounded


def patch_for_voxels(
    voxels: float, spacing: Sequence[float], max_shape: Sequence[int], max_stages: int = 8
) -> tuple[tuple[int, ...], Topology]:
    """The patch of about ``voxels`` voxels with the aspect of ``1 / spacing``, at most ``max_shape``,
    rounded down to its topology's divisor."""
    aspect = 1.0 / np.asarray(spacing, dtype=np.float64)
    limit = np.asarray(max_shape, dtype=np.float64)

    def size(scale: float) -> np.ndarray:
        return np.clip(np.floor(aspect * scale), 1, limit)

    low, high = 0.0, float(limit.max() / aspect.min()) + 1.0
    for _ in range(60):  # the largest scale whose patch stays within the voxel count
        middle = (low + high) / 2
        low, high = (middle, high) if np.prod(size(middle)) <= voxels else (low, middle)
    return _fit_topology(spacing, size(low).astype(int).tolist(), max_stages)


# -- the plan --------------------------------------------------------------------------------------
@dataclass
class Plan:
    """A plan: everything :class:`~smp3d.training.TrainConfig` takes from the data (see
    :meth:`config_fields`), the budget it was sized for, the notes saying why, and the fingerprint."""

    spatial_dims: int
    in_channels: int
    classes: int
    multilabel: bool
    target_spacing: tuple[float, ...]
    normalization: str
    intensity_stats: list[dict[str, float]]
    patch: tuple[int, ...]
    batch_size: int
    arch: str
    encoder: str
    model_kwargs: dict[str, Any]
    image_resampling: str = "linear"
    label_resampling: str = "nearest"
    label_map: dict[int, int] | None = None
    spacing: tuple[float, ...] | None = None  # of files without a header (given to smp3d plan)
    median_shape: tuple[int, ...] | None = None  # after resampling
    budget: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    fingerprint: dict[str, Any] | None = None

    def config_fields(self) -> dict[str, Any]:
        """The :class:`~smp3d.training.TrainConfig` fields this plan sets."""
        return {
            "arch": self.arch,
            "encoder": self.encoder,
            "model_kwargs": json.loads(json.dumps(self.model_kwargs)),
            "in_channels": self.in_channels,
            "classes": self.classes,
            "spatial_dims": self.spatial_dims,
            "patch": tuple(self.patch),
            "batch_size": self.batch_size,
            "normalize": self.normalization,
            "target_spacing": tuple(self.target_spacing),
            "spacing": None if self.spacing is None else tuple(self.spacing),
            "intensity_stats": self.intensity_stats,
            "image_resampling": self.image_resampling,
            "label_resampling": self.label_resampling,
            "label_map": self.label_map,
        }

    def to_json(self) -> dict[str, Any]:
        data = {"version": PLAN_VERSION, **asdict(self)}
        for key in ("target_spacing", "patch", "spacing", "median_shape"):
            if data[key] is not None:
                data[key] = list(data[key])
        if self.label_map is not None:
            data["label_map"] = {str(k): v for k, v in self.label_map.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "plan") -> Plan:
        """A plan from its JSON form; unknown, missing or mistyped entries raise naming the key."""
        if not isinstance(data, dict):
            raise TrainingError(f"{where}: expected a JSON object, got {type(data).__name__}")
        names = [f.name for f in cls.__dataclass_fields__.values()]
        unknown = sorted(set(data) - set(names) - {"version"})
        if unknown:
            import difflib

            hints = {k: difflib.get_close_matches(k, names, 1) for k in unknown}
            said = ", ".join(f"{k!r}" + (f" (did you mean {v[0]!r}?)" if v else "") for k, v in hints.items())
            raise TrainingError(f"{where}: unknown keys {said}")
        fields = cls.__dataclass_fields__.values()
        required = [f.name for f in fields if f.default is MISSING and f.default_factory is MISSING]
        missing = [n for n in required if n not in data]
        if missing:
            raise TrainingError(f"{where}: missing keys {missing}")
        values = {k: v for k, v in data.items() if k != "version"}
        try:
            values["target_spacing"] = tuple(float(s) for s in data["target_spacing"])
            values["patch"] = tuple(int(p) for p in data["patch"])
            for key in ("spacing", "median_shape"):
                if values.get(key) is not None:
                    values[key] = tuple(values[key])
            if values.get("label_map") is not None:
                values["label_map"] = {int(k): int(v) for k, v in values["label_map"].items()}
        except (TypeError, ValueError, AttributeError) as err:
            raise TrainingError(f"{where}: malformed entry ({err})") from None
        plan = cls(**values)
        plan.check(where)
        return plan

    def check(self, where: str = "plan") -> None:
        """Refuse inconsistent entries (sizes per axis, known schemes, positive numbers)."""
        from .volumes import NORMALIZATIONS

        dims = self.spatial_dims
        if dims not in (2, 3):
            raise TrainingError(f"{where}: spatial_dims must be 2 or 3, got {dims}")
        for key in ("target_spacing", "patch"):
            value = getattr(self, key)
            if len(value) != dims or any(not v > 0 for v in value):
                raise TrainingError(f"{where}: {key} needs {dims} positive numbers, got {list(value)}")
        if self.normalization not in NORMALIZATIONS:
            raise TrainingError(
                f"{where}: normalization {self.normalization!r}; expected one of {', '.join(NORMALIZATIONS)}"
            )
        if self.image_resampling not in IMAGE_RESAMPLING:
            raise TrainingError(f"{where}: image_resampling must be one of {IMAGE_RESAMPLING}")
        if self.label_resampling not in LABEL_RESAMPLING:
            raise TrainingError(f"{where}: label_resampling must be one of {LABEL_RESAMPLING}")
        if self.batch_size < 1 or self.classes < 1 or self.in_channels < 1:
            raise TrainingError(f"{where}: batch_size, classes and in_channels must be >= 1")


_NUMBER_LIST = re.compile(r"\[\s*(-?[\d.eE+-]+(?:,\s*-?[\d.eE+-]+)*)\s*\]")


def write_plan(plan: Plan, path: str | Path) -> None:
    """Write ``plan`` as indented JSON, atomically."""
    text = json.dumps(plan.to_json(), indent=2) + "\n"
    # Lists of numbers on one line each: a patch or a spacing reads as [64, 80, 64].
    text = _NUMBER_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text)

    def write(temp: str) -> None:
        Path(temp).write_text(text)

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(path), write)


def read_plan(path: str | Path) -> Plan:
    """Read and check a ``plan.json``."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"--plan {path}: no such file (write one with smp3d plan)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TrainingError(f"--plan {path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    return Plan.from_json(data, str(path))


def network_for(
    network: str, topology: Topology, spatial_dims: int, base_channels: int | None = None
) -> tuple[str, str, dict[str, Any], tuple[int, ...]]:
    """(architecture, encoder, model arguments, patch divisor) of ``network`` for ``topology``.

    ``resenc`` and ``plain`` build :class:`~smp3d.NNUNet` with the topology's stages, strides and
    kernels, and stage widths ``min(base_channels * 2**i, 320)`` (512 in 2D; ``base_channels`` None:
    nnU-Net's 32). ``light``, for CPUs, is ``resenc`` with one block per stage, the first stage
    strided (each pooling one stage earlier, the deepest stage not pooling; the stem alone sees full
    resolution) and ``base_channels`` 16 unless given: a training step costs about an eighth of
    nnU-Net's per voxel on a CPU, so a budget buys a patch with lobe- or organ-sized context. Any
    other registered encoder name builds a :class:`~smp3d.Unet` with the topology's pooling strides
    (as many stages as the encoder allows; no kernel or width choice).
    """
    as_lists = [list(s) for s in topology.strides]
    if network in NETWORKS:
        arch, encoder, extra = NETWORKS[network]
        kernels = [list(k) for k in topology.kernel_sizes]
        if network == "light":
            # The pooling moves one stage up (the first stage already halves; the deepest keeps its
            # size), each stage takes the kernel planned for the resolution it now works at.
            as_lists = as_lists[1:] + [[1] * spatial_dims]
            kernels = kernels[1:] + [[3] * spatial_dims]
            extra = {**extra, "blocks": [1] * topology.stages}
            base_channels = LIGHT_BASE_CHANNELS if base_channels is None else base_channels
        kwargs = {
            "encoder_depth": topology.stages,
            "strides": as_lists,
            "kernel_sizes": kernels,
            **extra,
        }
        if base_channels is not None:
            cap = 320 if spatial_dims == 3 else 512
            if network == "plain":
                kwargs.update(base_channels=base_channels, max_channels=max(cap, base_channels))
            else:
                kwargs["features"] = [
                    min(base_channels * 2**i, max(cap, base_channels)) for i in range(topology.stages)
                ]
        return arch, encoder, kwargs, topology.divisor
    if base_channels is not None:
        raise TrainingError(f"--base-channels applies to the resenc and plain networks, not to {network!r}")
    from ..encoders import get_encoder_spec

    spec = get_encoder_spec(network)  # raises with close matches for an unknown name
    pools = topology.strides[1:]
    depth = min(len(pools), spec.max_depth)
    if depth < 1:
        raise TrainingError(f"the patch is too small to pool even once; {network} needs at least one stage")
    strides = pools[:depth]
    divisor = tuple(math.prod(s[a] for s in strides) for a in range(spatial_dims))
    return "unet", network, {"encoder_depth": depth, "strides": [list(s) for s in strides]}, divisor


def make_plan(
    fingerprint: Fingerprint,
    *,
    network: str | None = None,
    device: str | torch.device = "cpu",
    budget_gb: float | None = None,
    budget_seconds_per_step: float | None = None,
    modality: str = "auto",
    target_spacing: Sequence[float] | None = None,
    image_resampling: str = "linear",
    label_resampling: str = "nearest",
    label_map: dict[int, int] | None = None,
    spacing: Sequence[float] | None = None,
    patch: Sequence[int] | None = None,
    amp: bool | str = False,
    base_channels: int | None = None,
    measure: Measure | None = None,
) -> Plan:
    """Derive a :class:`Plan` from ``fingerprint`` (rules in the module doc).

    Args:
        fingerprint: the dataset's :class:`~smp3d.training.fingerprint.Fingerprint`.
        network: ``resenc``, ``plain``, ``light`` or a registered encoder; default ``resenc`` on
            CUDA and ``light`` on the CPU (cheaper per voxel, so a CPU budget buys larger patches).
        device: where the trial steps run.
        budget_gb: GPU memory per step (CUDA; default 8, nnU-Net's).
        budget_seconds_per_step: seconds per step (default :data:`CPU_SECONDS_PER_STEP` on the CPU).
        modality: ``auto``, ``ct``, ``mr``, ``other`` or ``none`` (see :func:`choose_normalization`).
        target_spacing: use this instead of the planned one.
        image_resampling: recorded in the plan (see :mod:`.geometry`).
        label_resampling: recorded in the plan (see :mod:`.geometry`).
        label_map: recorded in the plan, so that training reads the data as planned.
        spacing: recorded in the plan, so that training reads the data as planned.
        patch: use this patch (no trial step; batch :data:`MIN_BATCH`).
        amp: trial steps in autocast: True or ``bf16``, or ``fp16``.
        base_channels: width of the first stage of ``resenc`` / ``plain`` / ``light`` (default 32,
            nnU-Net's; ``light``: 16).
        measure: replaces the trial step (``(patch, batch) -> (cost, static)`` in the budget's unit).

    Returns:
        The :class:`Plan`.
    """
    device = torch.device(device)
    dims = fingerprint.spatial_dims
    notes: list[str] = []
    if target_spacing is None:
        target, why = plan_target_spacing(fingerprint.spacings, fingerprint.shapes)
    else:
        target, why = tuple(float(s) for s in target_spacing), "target spacing given"
        if len(target) != dims:
            raise TrainingError(f"--target-spacing needs {dims} sizes, got {len(target)}")
    notes.append(f"target spacing {list(target)}: {why}")
    shapes = [resampled_shape(s, sp, target) for s, sp in zip(fingerprint.shapes, fingerprint.spacings, strict=True)]
    median_shape = tuple(int(round(v)) for v in np.median(np.asarray(shapes), axis=0))
    smallest = tuple(int(v) for v in np.min(np.asarray(shapes), axis=0))
    normalization, why = choose_normalization(fingerprint, modality)
    notes.append(f"normalisation {normalization}: {why}")
    network = network or ("resenc" if device.type == "cuda" else "light")
    max_stages = 8 if network in NETWORKS else 6  # a Unet's encoder: at most 5 pooling stages
    # nnU-Net's field of view: the largest patch is at most the median volume; here also at most the
    # smallest volume, so that every volume yields whole patches.
    limit = tuple(min(m, s) for m, s in zip(median_shape, smallest, strict=True))
    if smallest != median_shape:
        notes.append(f"patch at most {list(limit)}: the smallest resampled volume")

    def candidate(voxels: float) -> tuple[int, ...]:
        return patch_for_voxels(voxels, target, limit, max_stages)[0]

    classes = fingerprint.classes
    budget: dict[str, Any] = {"device": str(device)}
    if patch is not None:
        if len(patch) != dims:
            raise TrainingError(f"--patch needs {dims} sizes, got {len(patch)}")
        chosen, batch = tuple(int(p) for p in patch), MIN_BATCH
        budget["patch"] = "given"
    else:
        if device.type == "cuda":
            if budget_seconds_per_step is not None and budget_gb is None:
                unit, value = "seconds_per_step", budget_seconds_per_step
            else:
                unit, value = "gb", 8.0 if budget_gb is None else budget_gb
        else:
            if budget_gb is not None:
                raise TrainingError("--budget-gb measures GPU memory; on the CPU give --budget-seconds-per-step")
            unit, value = (
                "seconds_per_step",
                CPU_SECONDS_PER_STEP if budget_seconds_per_step is None else budget_seconds_per_step,
            )
        if not value > 0:
            raise TrainingError(f"the budget must be positive, got {value}")
        budget[unit] = value
        if measure is None:
            measure = _trial_measure(
                network, target, dims, fingerprint.channels, classes, device, amp, unit, base_channels
            )
        budget_value = value * 2**30 if unit == "gb" else value
        calibration = 16.0**3 if dims == 3 else 64.0**2
        chosen, batch, trials = fit_budget(measure, budget_value, candidate, float(np.prod(limit)), calibration)
        budget["trials"] = [{**t, "cost": round(t["cost"] / 2**30, 4) if unit == "gb" else t["cost"]} for t in trials]
        dataset_voxels = float(np.prod(median_shape)) * len(fingerprint.shapes)
        cap = max(MIN_BATCH, round(dataset_voxels * MAX_DATASET_FRACTION / float(np.prod(chosen))))
        if batch > cap:
            notes.append(f"batch {batch} fits the budget; capped at {cap} (one batch <= 5% of the dataset's voxels)")
            batch = cap
    if np.prod(chosen) < (32**3 if dims == 3 else 64**2) and np.prod(chosen) < np.prod(limit):
        notes.append(
            f"patch {list(chosen)} is small for learning context; raise the budget if you can "
            "(measured on a busy machine, trial steps run slower than on an idle one)"
        )
    _, topology = _fit_topology(target, chosen, max_stages)
    arch, encoder, model_kwargs, divisor = network_for(network, topology, dims, base_channels)
    if any(p % d for p, d in zip(chosen, divisor, strict=True)):
        raise TrainingError(f"patch {list(chosen)} is not divisible by the network's reduction {list(divisor)}")
    notes.append(f"patch {list(chosen)}, batch {batch}; {topology.stages} stages, reduction {list(divisor)} per axis")
    return Plan(
        spatial_dims=dims,
        in_channels=fingerprint.channels,
        classes=classes,
        multilabel=fingerprint.multilabel,
        target_spacing=target,
        normalization=normalization,
        intensity_stats=[
            {k: stats[k] for k in ("mean", "std", "percentile_00_5", "percentile_99_5")}
            for stats in fingerprint.intensity
        ],
        patch=chosen,
        batch_size=batch,
        arch=arch,
        encoder=encoder,
        model_kwargs=model_kwargs,
        image_resampling=image_resampling,
        label_resampling=label_resampling,
        label_map=label_map,
        spacing=None if spacing is None else tuple(float(s) for s in spacing),
        median_shape=median_shape,
        budget=budget,
        notes=notes,
        fingerprint=fingerprint.to_json(),
    )


def _trial_measure(
    network: str,
    target: tuple[float, ...],
    dims: int,
    channels: int,
    classes: int,
    device: torch.device,
    amp: bool | str,
    unit: str,
    base_channels: int | None,
) -> Measure:
    def measure(patch: tuple[int, ...], batch: int) -> tuple[float, float]:
        _, topology = _fit_topology(target, patch, 8 if network in NETWORKS else 6)
        arch, encoder, kwargs, _ = network_for(network, topology, dims, base_channels)
        cost = measure_step(
            arch,
            encoder,
            kwargs,
            in_channels=channels,
            classes=classes,
            spatial_dims=dims,
            patch=patch,
            batch=batch,
            device=device,
            amp=amp,
        )
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the trial model's memory back before the next trial
        if unit == "gb":
            return float(cost.peak_bytes or 0), float(cost.static_bytes or 0)
        return cost.cpu_step_seconds, 0.0

    return measure
