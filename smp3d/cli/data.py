"""Volumes on disk and patches in memory for ``smp3d train`` / ``smp3d predict``.

Accepted inputs (``--train-path`` / ``--val-path`` / ``--input``):

- an HDF5 file (``.h5``, ``.hdf5``, ``.hdf``) holding ``/raw`` (``[C x] spatial``) and, for
  training, ``/label`` (``spatial`` class indices, or ``C x spatial`` for multi-label targets);
- a NIfTI (``.nii``, ``.nii.gz``) or NumPy (``.npy``) image; for training an ``IMAGE,LABEL``
  pair joined by a comma. A 4D NIfTI image keeps its channels on the last axis, as NIfTI does;
- a directory: every HDF5 file in it, plus NIfTI/NumPy pairs found as ``images/<name>`` and
  ``labels/<name>``.

Everything a user can get wrong raises :class:`CLIError` with one line that says what was
expected and what came.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..base.hub import atomic_write

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
NUMPY_SUFFIXES = (".npy",)
ALL_SUFFIXES = HDF5_SUFFIXES + NIFTI_SUFFIXES + NUMPY_SUFFIXES


class CLIError(Exception):
    """A user error: the command line prints its message on one line and exits with status 2."""


@dataclass
class Volume:
    """One image in memory: ``image`` is (C, *spatial) float32; ``label`` is (*spatial) int64
    class indices, (C, *spatial) float32 multi-label targets, or None; ``affine`` is the NIfTI
    affine of the source (None for HDF5 and NumPy)."""

    name: str
    image: np.ndarray
    label: np.ndarray | None = None
    affine: np.ndarray | None = None
    header: object | None = field(default=None, repr=False)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape[1:])


def suffix_of(path: str | os.PathLike) -> str:
    name = str(path).lower()
    for suffix in sorted(ALL_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return Path(name).suffix


def stem_of(path: str | os.PathLike) -> str:
    name = Path(path).name
    suffix = suffix_of(name)
    return name[: len(name) - len(suffix)] if suffix else name


# -- reading -----------------------------------------------------------------------------------
def _require(path: Path) -> Path:
    if not path.exists():
        raise CLIError(f"{path}: no such file or directory")
    return path


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, object]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        return np.asarray(img.dataobj), np.asarray(img.affine, dtype=np.float64), img.header
    except Exception as err:  # nibabel raises many types for corrupt files
        raise CLIError(f"{path}: not a readable NIfTI file ({err})") from None


def _read_numpy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as err:
        raise CLIError(f"{path}: not a readable .npy file ({err})") from None


def _read_hdf5(path: Path, datasets: tuple[str, ...]) -> list[np.ndarray | None]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return [np.asarray(f[name]) if name in f else None for name in datasets]
    except OSError as err:
        raise CLIError(f"{path}: not a readable HDF5 file ({err})") from None


def _as_image(array: np.ndarray, spatial_dims: int, where: str, channels_last: bool) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise CLIError(f"{where}: expected a numeric image, got dtype {array.dtype}")
    if array.ndim == spatial_dims:
        array = array[None]
    elif array.ndim == spatial_dims + 1:
        if channels_last:
            array = np.moveaxis(array, -1, 0)
    else:
        raise CLIError(
            f"{where}: expected a {spatial_dims}D image ({spatial_dims} spatial axes, optionally with a channel "
            f"axis), got an array of shape {tuple(array.shape)}"
        )
    return np.ascontiguousarray(array, dtype=np.float32)


def _as_label(array: np.ndarray, spatial_shape: tuple[int, ...], where: str) -> np.ndarray:
    spatial_dims = len(spatial_shape)
    if array.ndim == spatial_dims:
        if array.dtype.kind == "f" and (not np.all(np.isfinite(array)) or not np.all(array == np.round(array))):
            raise CLIError(f"{where}: a class-index label must hold whole numbers, found fractional values")
        if tuple(array.shape) != spatial_shape:
            raise CLIError(
                f"{where}: label shape {tuple(array.shape)} does not match the image's spatial shape {spatial_shape}"
            )
        if array.size and array.min() < 0:
            raise CLIError(f"{where}: class-index labels must be >= 0, found {array.min()}")
        return np.ascontiguousarray(array, dtype=np.int64)
    if array.ndim == spatial_dims + 1:
        if tuple(array.shape[1:]) != spatial_shape:
            raise CLIError(
                f"{where}: multi-label target shape {tuple(array.shape)} does not match (C, *spatial) with "
                f"spatial shape {spatial_shape}"
            )
        return np.ascontiguousarray(array, dtype=np.float32)
    raise CLIError(
        f"{where}: expected a label of shape {spatial_shape} (class indices) or (C, *{spatial_shape}) "
        f"(multi-label), got {tuple(array.shape)}"
    )


def _read_array(path: Path, spatial_dims: int, role: str) -> tuple[np.ndarray, np.ndarray | None, object]:
    suffix = suffix_of(path)
    if suffix in NIFTI_SUFFIXES:
        array, affine, header = _read_nifti(path)
        if role == "label" and array.ndim == spatial_dims + 1:  # NIfTI multi-label: channels last
            array = np.moveaxis(array, -1, 0)
        return array, affine, header
    if suffix in NUMPY_SUFFIXES:
        return _read_numpy(path), None, None
    raise CLIError(f"{path}: unsupported {role} file type {suffix!r}; expected one of {', '.join(ALL_SUFFIXES)}")


def read_volume(
    spec: str, spatial_dims: int = 3, *, need_label: bool, raw_key: str = "raw", label_key: str = "label"
) -> Volume:
    """Read one ``spec``: an HDF5 file, an image file, or an ``IMAGE,LABEL`` pair."""
    if "," in spec:
        image_path, label_path = (Path(p.strip()) for p in spec.split(",", 1))
    else:
        image_path, label_path = Path(spec), None
    _require(image_path)
    if image_path.is_dir():
        raise CLIError(f"{image_path}: a directory here is expected to be expanded by the caller")
    suffix = suffix_of(image_path)
    if suffix in HDF5_SUFFIXES:
        if label_path is not None:
            raise CLIError(f"{spec}: an HDF5 file holds its own {label_key!r}; give the file alone")
        raw, label = _read_hdf5(image_path, (raw_key, label_key))
        if raw is None:
            raise CLIError(f"{image_path}: no dataset '/{raw_key}' in this HDF5 file")
        if need_label and label is None:
            raise CLIError(f"{image_path}: no dataset '/{label_key}' in this HDF5 file (training needs labels)")
        image = _as_image(raw, spatial_dims, f"{image_path}:/{raw_key}", channels_last=False)
        volume = Volume(stem_of(image_path), image)
        if label is not None and need_label:
            volume.label = _as_label(label, volume.spatial_shape, f"{image_path}:/{label_key}")
        return volume
    array, affine, header = _read_array(image_path, spatial_dims, "image")
    image = _as_image(array, spatial_dims, str(image_path), channels_last=suffix in NIFTI_SUFFIXES)
    volume = Volume(stem_of(image_path), image, affine=affine, header=header)
    if need_label:
        if label_path is None:
            raise CLIError(f"{spec}: training needs a label; give IMAGE,LABEL (two files joined by a comma)")
        _require(label_path)
        label, _, _ = _read_array(label_path, spatial_dims, "label")
        volume.label = _as_label(label, volume.spatial_shape, str(label_path))
    return volume


def expand_specs(specs: list[str]) -> list[str]:
    """Expand directories into the HDF5 files and ``images/``+``labels/`` pairs they hold."""
    out: list[str] = []
    for spec in specs:
        path = Path(spec)
        if "," in spec or not path.is_dir():
            out.append(spec)
            continue
        found = sorted(str(p) for p in path.iterdir() if suffix_of(p) in HDF5_SUFFIXES)
        images, labels = path / "images", path / "labels"
        if images.is_dir():
            for image in sorted(images.iterdir()):
                if suffix_of(image) not in NIFTI_SUFFIXES + NUMPY_SUFFIXES:
                    continue
                label = labels / image.name
                if not label.exists():
                    raise CLIError(f"{image}: no matching label {label}")
                found.append(f"{image},{label}")
        if not found:
            raise CLIError(f"{path}: directory holds no HDF5 files and no images/ + labels/ pairs")
        out.extend(found)
    return out


def check_labels(volumes: list[Volume], mode: str, classes: int) -> None:
    """Refuse labels that do not fit the task (``mode`` and ``classes``)."""
    for volume in volumes:
        label = volume.label
        assert label is not None
        if mode == "multiclass":
            if label.ndim != volume.image.ndim - 1:
                raise CLIError(
                    f"{volume.name}: a multi-class task needs class-index labels (*spatial), got shape "
                    f"{label.shape}; for (C, *spatial) targets use --loss bce, dice, focal, tversky or gdl"
                )
            top = int(label.max()) if label.size else 0
            if top >= classes:
                raise CLIError(f"{volume.name}: label holds class {top} but --classes is {classes}")
        else:
            if label.ndim == volume.image.ndim:  # (C, *spatial)
                if label.shape[0] != classes:
                    raise CLIError(f"{volume.name}: target has {label.shape[0]} channels but --classes is {classes}")
            elif classes != 1:
                raise CLIError(
                    f"{volume.name}: a multi-label task with {classes} classes needs (C, *spatial) targets, "
                    f"got class indices of shape {label.shape}"
                )
            else:
                values = np.unique(label)
                if not np.isin(values, (0, 1)).all():
                    raise CLIError(f"{volume.name}: a binary task needs labels in {{0, 1}}, found {values[:10]}")


# -- normalisation -----------------------------------------------------------------------------
NORMALIZATIONS = ("zscore", "minmax", "none")


def normalize(image: np.ndarray, how: str) -> np.ndarray:
    """Per-channel intensity normalisation of a (C, *spatial) image."""
    if how == "none":
        return image
    axes = tuple(range(1, image.ndim))
    if how == "zscore":
        mean = image.mean(axis=axes, keepdims=True, dtype=np.float64)
        std = image.std(axis=axes, keepdims=True, dtype=np.float64)
        return ((image - mean) / np.maximum(std, 1e-8)).astype(np.float32)
    if how == "minmax":
        low = image.min(axis=axes, keepdims=True)
        high = image.max(axis=axes, keepdims=True)
        return ((image - low) / np.maximum(high - low, 1e-8)).astype(np.float32)
    raise CLIError(f"unknown normalisation {how!r}; expected one of {', '.join(NORMALIZATIONS)}")


# -- patches -----------------------------------------------------------------------------------
def window_starts(size: int, patch: int, stride: int) -> list[int]:
    """Start offsets of a grid of ``patch``-long windows ``stride`` apart, the last flush with the end."""
    if size <= patch:
        return [0]
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def check_patch(volumes: list[Volume], patch: tuple[int, ...], what: str = "--patch") -> None:
    for volume in volumes:
        shape = volume.spatial_shape
        if len(shape) != len(patch):
            raise CLIError(f"{what} has {len(patch)} sizes but {volume.name} has {len(shape)} spatial axes {shape}")
        if any(p > s for p, s in zip(patch, shape, strict=True)):
            raise CLIError(f"{what} {tuple(patch)} is larger than the volume {volume.name} of shape {shape}")


class PatchDataset(torch.utils.data.Dataset):
    """Patches of in-memory volumes: a shuffled-by-the-sampler grid at ``stride``, or, when
    ``samples`` is given, that many random windows per epoch (``foreground`` of them centred
    on a labelled voxel). Each spatial axis in ``flip`` (all of them for ``True``, none for
    ``False``) is flipped at random, with probability 1/2, independently of the others."""

    def __init__(
        self,
        volumes: list[Volume],
        patch: tuple[int, ...],
        stride: tuple[int, ...] | None = None,
        *,
        samples: int | None = None,
        foreground: float = 0.33,
        flip: bool | Sequence[int] = True,
        seed: int = 0,
    ) -> None:
        check_patch(volumes, patch)
        self.volumes = volumes
        self.patch = tuple(patch)
        self.samples = samples
        self.foreground = foreground
        axes = range(len(self.patch)) if flip is True else (() if flip is False else tuple(flip))
        bad = [a for a in axes if not 0 <= a < len(self.patch)]
        if bad:
            raise CLIError(f"flip axes {bad} out of range: the volumes have {len(self.patch)} spatial axes (0-based)")
        self.flip_axes = tuple(axes)
        self.seed = seed
        self.images = [torch.from_numpy(v.image) for v in volumes]
        self.labels = [torch.from_numpy(v.label) for v in volumes]  # type: ignore[arg-type]
        self._foreground_points = [self._sample_foreground(v.label, seed) for v in volumes]
        if samples is None:
            stride = tuple(stride or self.patch)
            self.windows = [
                (i, corner) for i, v in enumerate(volumes) for corner in _grid(v.spatial_shape, self.patch, stride)
            ]
        else:
            self.set_epoch(0)

    @staticmethod
    def _sample_foreground(label: np.ndarray | None, seed: int, limit: int = 100_000) -> np.ndarray:
        if label is None:
            return np.zeros((0, 0), dtype=np.int64)
        mask = label.any(axis=0) if label.dtype.kind == "f" else label > 0
        points = np.argwhere(mask)
        if len(points) > limit:
            points = points[np.random.default_rng(seed).choice(len(points), limit, replace=False)]
        return points

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's random windows (the same on every process for a given epoch)."""
        if self.samples is None:
            return
        rng = np.random.default_rng((self.seed, epoch))
        windows = []
        for _ in range(self.samples):
            i = int(rng.integers(len(self.volumes)))
            shape = self.volumes[i].spatial_shape
            points = self._foreground_points[i]
            if len(points) and rng.random() < self.foreground:
                centre = points[rng.integers(len(points))]
                corner = tuple(
                    int(min(max(c - p // 2, 0), s - p)) for c, p, s in zip(centre, self.patch, shape, strict=True)
                )
            else:
                corner = tuple(int(rng.integers(s - p + 1)) for s, p in zip(shape, self.patch, strict=True))
            windows.append((i, corner))
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        i, corner = self.windows[index]
        region = tuple(slice(c, c + p) for c, p in zip(corner, self.patch, strict=True))
        image = self.images[i][(slice(None), *region)]
        label = self.labels[i]
        label = label[(slice(None), *region)] if label.dim() == image.dim() else label[region]
        if self.flip_axes:
            axes = [a for a in self.flip_axes if torch.rand(()) < 0.5]
            if axes:
                image = image.flip([a + 1 for a in axes])
                offset = label.dim() - len(self.patch)
                label = label.flip([a + offset for a in axes])
        return image.contiguous(), label.contiguous()


def _grid(shape: tuple[int, ...], patch: tuple[int, ...], stride: tuple[int, ...]) -> list[tuple[int, ...]]:
    corners: list[tuple[int, ...]] = [()]
    for size, p, s in zip(shape, patch, stride, strict=True):
        corners = [c + (start,) for c in corners for start in window_starts(size, p, s)]
    return corners


def grid_size(shape: tuple[int, ...], patch: tuple[int, ...], stride: tuple[int, ...]) -> int:
    return math.prod(len(window_starts(s, p, st)) for s, p, st in zip(shape, patch, stride, strict=True))


# -- writing -----------------------------------------------------------------------------------
def write_prediction(path: Path, array: np.ndarray, reference: Volume) -> None:
    """Write ``array`` ((C, *spatial) probabilities or (*spatial) labels) to ``path`` atomically:
    HDF5 dataset ``predictions``; NIfTI with the reference's affine (channels last); or .npy."""
    suffix = suffix_of(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix in HDF5_SUFFIXES:
        import h5py

        def write(temp: str) -> None:
            with h5py.File(temp, "w") as f:
                f.create_dataset("predictions", data=array, compression="gzip")

    elif suffix in NIFTI_SUFFIXES:
        import nibabel as nib

        data = np.moveaxis(array, 0, -1) if array.ndim == len(reference.spatial_shape) + 1 else array
        affine = reference.affine if reference.affine is not None else np.eye(4)
        header = None
        if reference.header is not None:
            header = reference.header.copy()
            header.set_data_dtype(data.dtype)
        image = nib.Nifti1Image(data, affine, header=header)

        def write(temp: str) -> None:
            # nibabel picks compression from the file name, so write under the real suffix.
            real = temp + suffix
            try:
                nib.save(image, real)
                os.replace(real, temp)
            finally:
                Path(real).unlink(missing_ok=True)

    elif suffix in NUMPY_SUFFIXES:

        def write(temp: str) -> None:
            with open(temp, "wb") as f:
                np.save(f, array)

    else:
        raise CLIError(f"{path}: unsupported output type {suffix!r}; expected one of {', '.join(ALL_SUFFIXES)}")
    atomic_write(path, write)
