"""The fingerprint of a labelled dataset: what a plan is derived from (:mod:`.plan`).

Per volume: its spacing and shape as stored. Per channel: intensity statistics of the labelled
(foreground) voxels, which CT normalisation uses, and the whole-image range, which tells CT from
other scans. Per class: the voxel count. Everything is plain numbers, so
:meth:`Fingerprint.to_json` writes it into ``plan.json`` for a person to read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import TrainingError
from .volumes import Volume, read_volumes

__all__ = ["Fingerprint", "fingerprint_volumes", "foreground_mask", "intensity_statistics", "read_fingerprint"]

#: Foreground voxels drawn per volume and channel for the intensity statistics (nnU-Net draws a
#: similar fixed number per case: enough for stable percentiles, cheap on large datasets).
SAMPLES_PER_VOLUME = 100_000


@dataclass
class Fingerprint:
    """What :func:`fingerprint_volumes` measured.

    Attributes:
        spatial_dims: 2 or 3.
        names: one per volume.
        spacings, shapes: voxel size and spatial shape of each volume as stored.
        channels: image channels.
        intensity: per channel, statistics of foreground voxels: ``mean``, ``std``, ``min``, ``max``,
            ``median``, ``percentile_00_5``, ``percentile_99_5``; and ``image_min``/``image_max``
            over whole images.
        class_voxels: class index (multi-label: channel) -> labelled voxels, as strings for JSON.
        multilabel: the labels are (C, *spatial) targets rather than class indices.
    """

    spatial_dims: int
    names: list[str]
    spacings: list[tuple[float, ...]]
    shapes: list[tuple[int, ...]]
    channels: int
    intensity: list[dict[str, float]]
    class_voxels: dict[str, int] = field(default_factory=dict)
    multilabel: bool = False

    @property
    def classes(self) -> int:
        """Classes a model needs: the largest class index + 1 (multi-label: channels)."""
        keys = [int(k) for k in self.class_voxels]
        return len(keys) if self.multilabel else (max(keys) + 1 if keys else 1)

    @property
    def class_frequencies(self) -> dict[str, float]:
        """Fraction of labelled voxels per class."""
        total = sum(self.class_voxels.values()) or 1
        return {k: v / total for k, v in self.class_voxels.items()}

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["spacings"] = [list(s) for s in self.spacings]
        data["shapes"] = [list(s) for s in self.shapes]
        data["class_frequencies"] = {k: round(v, 6) for k, v in self.class_frequencies.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fingerprint:
        known = {"spatial_dims", "names", "spacings", "shapes", "channels", "intensity", "class_voxels", "multilabel"}
        missing = sorted({"spatial_dims", "spacings", "shapes", "channels", "intensity"} - set(data))
        if missing:
            raise TrainingError(f"fingerprint: missing keys {missing}")
        values = {k: v for k, v in data.items() if k in known}
        values["spacings"] = [tuple(float(x) for x in s) for s in data["spacings"]]
        values["shapes"] = [tuple(int(x) for x in s) for s in data["shapes"]]
        values.setdefault("names", [str(i) for i in range(len(values["shapes"]))])
        return cls(**values)


def foreground_mask(volume: Volume) -> np.ndarray:
    """(*spatial) bool: voxels with a class above 0 (multi-label: any channel above 0)."""
    if volume.label is None:
        raise TrainingError(f"{volume.name}: a fingerprint needs labelled volumes")
    label = volume.label
    return np.any(label > 0, axis=0) if label.ndim == volume.image.ndim else label > 0


def intensity_statistics(values: np.ndarray) -> dict[str, float]:
    """mean, std, min, max, median and the 0.5 / 99.5 percentiles of a 1D array."""
    if values.size == 0:
        return {k: 0.0 for k in ("mean", "std", "min", "max", "median", "percentile_00_5", "percentile_99_5")}
    values = values.astype(np.float64)
    low, median, high = np.percentile(values, [0.5, 50.0, 99.5])
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "median": float(median),
        "percentile_00_5": float(low),
        "percentile_99_5": float(high),
    }


def fingerprint_volumes(
    volumes: list[Volume], samples_per_volume: int = SAMPLES_PER_VOLUME, seed: int = 0
) -> Fingerprint:
    """The fingerprint of labelled ``volumes`` as read (before normalisation and resampling).

    Args:
        volumes: labelled volumes with ``spacing`` (:func:`~smp3d.training.volumes.read_volumes`).
        samples_per_volume: foreground voxels drawn per volume and channel for the statistics.
        seed: seed of that draw.

    Returns:
        The :class:`Fingerprint`. A dataset without any labelled voxel takes its intensity
        statistics from all voxels.
    """
    if not volumes:
        raise TrainingError("a fingerprint needs at least one labelled volume")
    spatial_dims = len(volumes[0].spatial_shape)
    channels = volumes[0].image.shape[0]
    rng = np.random.default_rng(seed)
    samples: list[list[np.ndarray]] = [[] for _ in range(channels)]
    image_min = np.full(channels, np.inf)
    image_max = np.full(channels, -np.inf)
    class_voxels: dict[int, int] = {}
    multilabel = False
    for volume in volumes:
        if volume.image.shape[0] != channels or len(volume.spatial_shape) != spatial_dims:
            raise TrainingError(
                f"{volume.name}: image of shape {volume.image.shape} differs in channels or axes from "
                f"{volumes[0].name} of shape {volumes[0].image.shape}"
            )
        mask = foreground_mask(volume)
        index = np.flatnonzero(mask)
        if index.size > samples_per_volume:
            index = rng.choice(index, samples_per_volume, replace=False)
        flat = volume.image.reshape(channels, -1)
        for channel in range(channels):
            samples[channel].append(flat[channel, index])
        image_min = np.minimum(image_min, flat.min(axis=1))
        image_max = np.maximum(image_max, flat.max(axis=1))
        label = volume.label
        if label.ndim == volume.image.ndim:
            multilabel = True
            for channel, count in enumerate((label > 0).reshape(label.shape[0], -1).sum(axis=1)):
                class_voxels[channel] = class_voxels.get(channel, 0) + int(count)
        else:
            values, counts = np.unique(label, return_counts=True)
            for value, count in zip(values.tolist(), counts.tolist(), strict=True):
                class_voxels[value] = class_voxels.get(value, 0) + count
    intensity = []
    for channel in range(channels):
        values = np.concatenate(samples[channel])
        if values.size == 0:  # no labelled voxel anywhere: describe whole images instead
            values = np.concatenate([v.image[channel].ravel()[:samples_per_volume] for v in volumes])
        stats = intensity_statistics(values)
        stats.update(image_min=float(image_min[channel]), image_max=float(image_max[channel]))
        intensity.append(stats)
    return Fingerprint(
        spatial_dims=spatial_dims,
        names=[v.name for v in volumes],
        spacings=[tuple(v.spacing or (1.0,) * spatial_dims) for v in volumes],
        shapes=[tuple(v.spatial_shape) for v in volumes],
        channels=channels,
        intensity=intensity,
        class_voxels={str(k): v for k, v in sorted(class_voxels.items())},
        multilabel=multilabel,
    )


def read_fingerprint(
    specs: list[str],
    spatial_dims: int = 3,
    *,
    spacing: tuple[float, ...] | None = None,
    label_map: dict[int, int] | None = None,
    raw_key: str = "raw",
    label_key: str = "label",
) -> tuple[Fingerprint, list[Volume]]:
    """Read the labelled volumes of ``specs`` and fingerprint them; returns both (the volumes
    unchanged, so that training can prepare them without reading again)."""
    volumes = read_volumes(
        specs, spatial_dims, raw_key=raw_key, label_key=label_key, spacing=spacing, label_map=label_map
    )
    return fingerprint_volumes(volumes), volumes
