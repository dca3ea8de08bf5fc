"""Volumes on disk for training and prediction: reading, checking, normalising, writing.

Accepted inputs (``--train-path`` / ``--val-path`` / ``--input``):

- an HDF5 file (``.h5``, ``.hdf5``, ``.hdf``) holding ``/raw`` (``[C x] spatial``) and, for
  training, ``/label`` (``spatial`` class indices, or ``C x spatial`` for multi-label targets);
- a NIfTI (``.nii``, ``.nii.gz``) or NumPy (``.npy``) image; for training an ``IMAGE,LABEL``
  pair joined by a comma. A 4D NIfTI image keeps its channels on the last axis, as NIfTI does;
- a directory: every HDF5 file in it, plus NIfTI/NumPy pairs found as ``images/<name>`` and
  ``labels/<name>``.

Each volume carries its voxel ``spacing`` (from the NIfTI header; for HDF5 and NumPy as given, else
1 per axis). An image and its label must lie on the same grid (shape and affine). Training volumes
are resampled to a target spacing and normalised once, on load (:func:`prepare_volume`).

Everything a user can get wrong raises :class:`TrainingError` with one line that says what was
expected and what came.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..base.hub import atomic_write
from .errors import TrainingError
from .geometry import check_same_grid, resample_image, resample_label, resampled_shape, spacing_from_affine

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
NUMPY_SUFFIXES = (".npy",)
ALL_SUFFIXES = HDF5_SUFFIXES + NIFTI_SUFFIXES + NUMPY_SUFFIXES


@dataclass
class Volume:
    """One image in memory: ``image`` is (C, *spatial) float32; ``label`` is (*spatial) int64
    class indices, (C, *spatial) float32 multi-label targets, or None; ``affine`` is the NIfTI
    affine of the source (None for HDF5 and NumPy); ``spacing`` the voxel size per axis of the
    arrays as they are now (after any resampling); ``original_shape`` and ``original_spacing``
    those of the file."""

    name: str
    image: np.ndarray
    label: np.ndarray | None = None
    affine: np.ndarray | None = None
    header: object | None = field(default=None, repr=False)
    spacing: tuple[float, ...] | None = None
    original_shape: tuple[int, ...] | None = None
    original_spacing: tuple[float, ...] | None = None

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
        raise TrainingError(f"{path}: no such file or directory")
    return path


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, object]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        return np.asarray(img.dataobj), np.asarray(img.affine, dtype=np.float64), img.header
    except Exception as err:  # nibabel raises many types for corrupt files
        raise TrainingError(f"{path}: not a readable NIfTI file ({err})") from None


def _read_numpy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as err:
        raise TrainingError(f"{path}: not a readable .npy file ({err})") from None


def _read_hdf5(path: Path, datasets: tuple[str, ...]) -> list[np.ndarray | None]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return [np.asarray(f[name]) if name in f else None for name in datasets]
    except OSError as err:
        raise TrainingError(f"{path}: not a readable HDF5 file ({err})") from None


def _as_image(array: np.ndarray, spatial_dims: int, where: str, channels_last: bool) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise TrainingError(f"{where}: expected a numeric image, got dtype {array.dtype}")
    if array.ndim == spatial_dims:
        array = array[None]
    elif array.ndim == spatial_dims + 1:
        if channels_last:
            array = np.moveaxis(array, -1, 0)
    else:
        raise TrainingError(
            f"{where}: expected a {spatial_dims}D image ({spatial_dims} spatial axes, optionally with a channel "
            f"axis), got an array of shape {tuple(array.shape)}"
        )
    return np.ascontiguousarray(array, dtype=np.float32)


def _as_label(array: np.ndarray, spatial_shape: tuple[int, ...], where: str) -> np.ndarray:
    spatial_dims = len(spatial_shape)
    if array.ndim == spatial_dims:
        if array.dtype.kind == "f" and (not np.all(np.isfinite(array)) or not np.all(array == np.round(array))):
            raise TrainingError(f"{where}: a class-index label must hold whole numbers, found fractional values")
        if tuple(array.shape) != spatial_shape:
            raise TrainingError(
                f"{where}: label shape {tuple(array.shape)} does not match the image's spatial shape {spatial_shape}"
            )
        if array.size and array.min() < 0:
            raise TrainingError(f"{where}: class-index labels must be >= 0, found {array.min()}")
        return np.ascontiguousarray(array, dtype=np.int64)
    if array.ndim == spatial_dims + 1:
        if tuple(array.shape[1:]) != spatial_shape:
            raise TrainingError(
                f"{where}: multi-label target shape {tuple(array.shape)} does not match (C, *spatial) with "
                f"spatial shape {spatial_shape}"
            )
        return np.ascontiguousarray(array, dtype=np.float32)
    raise TrainingError(
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
    raise TrainingError(f"{path}: unsupported {role} file type {suffix!r}; expected one of {', '.join(ALL_SUFFIXES)}")


def _spacing_for(
    volume_name: str, affine: np.ndarray | None, spacing: tuple[float, ...] | None, spatial_dims: int
) -> tuple[float, ...]:
    if affine is not None:
        found = spacing_from_affine(affine, spatial_dims)
        if spacing is not None and not np.allclose(found, spacing, rtol=1e-3):
            warnings.warn(
                f"{volume_name}: its NIfTI header gives spacing {found}; --spacing {tuple(spacing)} applies to "
                "HDF5 and NumPy files only",
                stacklevel=3,
            )
        return found
    if spacing is None:
        return (1.0,) * spatial_dims
    if len(spacing) != spatial_dims or any(not s > 0 for s in spacing):
        raise TrainingError(
            f"{volume_name}: --spacing needs {spatial_dims} positive sizes (one per spatial axis), got {tuple(spacing)}"
        )
    return tuple(float(s) for s in spacing)


def parse_label_map(text: str | dict | None) -> dict[int, int] | None:
    """``"4:3,9:0"`` (or a dict) -> ``{4: 3, 9: 0}``: label value -> class index; other values stay."""
    if text is None or isinstance(text, dict):
        return None if text is None else {int(k): int(v) for k, v in text.items()}
    mapping = {}
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        old, sep, new = part.partition(":")
        try:
            if not sep:
                raise ValueError
            mapping[int(old)] = int(new)
        except ValueError:
            raise TrainingError(
                f"--label-map: expected pairs OLD:NEW of integers joined by commas (e.g. 4:3,9:0), got {part!r}"
            ) from None
    bad = {k: v for k, v in mapping.items() if v < 0 or k < 0}
    if bad:
        raise TrainingError(f"--label-map: values must be >= 0, got {bad}")
    return mapping


def apply_label_map(label: np.ndarray, label_map: dict[int, int] | None, where: str) -> np.ndarray:
    """Replace label values by ``label_map`` (class-index labels only); other values are kept."""
    if not label_map:
        return label
    if label.dtype.kind == "f":
        raise TrainingError(f"{where}: --label-map applies to class-index labels, not to (C, *spatial) targets")
    values = np.unique(label)
    lookup = np.arange(int(values.max()) + 1 if values.size else 1, dtype=np.int64)
    for old, new in label_map.items():
        if old < lookup.size:
            lookup[old] = new
    return lookup[label]


def read_volume(
    spec: str,
    spatial_dims: int = 3,
    *,
    need_label: bool,
    raw_key: str = "raw",
    label_key: str = "label",
    spacing: tuple[float, ...] | None = None,
    label_map: dict[int, int] | None = None,
) -> Volume:
    """Read one ``spec``: an HDF5 file, an image file, or an ``IMAGE,LABEL`` pair.

    Args:
        spec: the file, or ``IMAGE,LABEL``.
        spatial_dims: 2 or 3.
        need_label: read (and require) the label.
        raw_key: HDF5 dataset name of the image.
        label_key: HDF5 dataset name of the label.
        spacing: voxel size of files without a header (HDF5, NumPy); NIfTI files use their own.
        label_map: label value -> class index, applied to class-index labels.

    Returns:
        The :class:`Volume`, its ``spacing`` and ``original_*`` set, not normalised or resampled.
    """
    if "," in spec:
        image_path, label_path = (Path(p.strip()) for p in spec.split(",", 1))
    else:
        image_path, label_path = Path(spec), None
    _require(image_path)
    if image_path.is_dir():
        raise TrainingError(f"{image_path}: a directory here is expected to be expanded by the caller")
    suffix = suffix_of(image_path)
    if suffix in HDF5_SUFFIXES:
        if label_path is not None:
            raise TrainingError(f"{spec}: an HDF5 file holds its own {label_key!r}; give the file alone")
        raw, label = _read_hdf5(image_path, (raw_key, label_key))
        if raw is None:
            raise TrainingError(f"{image_path}: no dataset '/{raw_key}' in this HDF5 file")
        if need_label and label is None:
            raise TrainingError(f"{image_path}: no dataset '/{label_key}' in this HDF5 file (training needs labels)")
        image = _as_image(raw, spatial_dims, f"{image_path}:/{raw_key}", channels_last=False)
        volume = Volume(stem_of(image_path), image)
        if label is not None and need_label:
            where = f"{image_path}:/{label_key}"
            volume.label = apply_label_map(_as_label(label, volume.spatial_shape, where), label_map, where)
        return _with_geometry(volume, spacing, spatial_dims)
    array, affine, header = _read_array(image_path, spatial_dims, "image")
    image = _as_image(array, spatial_dims, str(image_path), channels_last=suffix in NIFTI_SUFFIXES)
    volume = Volume(stem_of(image_path), image, affine=affine, header=header)
    if need_label:
        if label_path is None:
            raise TrainingError(f"{spec}: training needs a label; give IMAGE,LABEL (two files joined by a comma)")
        _require(label_path)
        label, label_affine, _ = _read_array(label_path, spatial_dims, "label")
        label_spatial = tuple(label.shape[-spatial_dims:]) if label.ndim > spatial_dims else tuple(label.shape)
        check_same_grid(str(image_path), volume.spatial_shape, affine, str(label_path), label_spatial, label_affine)
        volume.label = apply_label_map(
            _as_label(label, volume.spatial_shape, str(label_path)), label_map, str(label_path)
        )
    return _with_geometry(volume, spacing, spatial_dims)


def _with_geometry(volume: Volume, spacing: tuple[float, ...] | None, spatial_dims: int) -> Volume:
    volume.spacing = _spacing_for(volume.name, volume.affine, spacing, spatial_dims)
    volume.original_spacing = volume.spacing
    volume.original_shape = volume.spatial_shape
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
                    raise TrainingError(f"{image}: no matching label {label}")
                found.append(f"{image},{label}")
        if not found:
            raise TrainingError(f"{path}: directory holds no HDF5 files and no images/ + labels/ pairs")
        out.extend(found)
    return out


def check_labels(volumes: list[Volume], mode: str, classes: int) -> None:
    """Refuse labels that do not fit the task (``mode`` and ``classes``)."""
    for volume in volumes:
        label = volume.label
        if label is None:
            raise TrainingError(f"{volume.name}: training needs a label, this volume has none")
        if mode == "multiclass":
            if label.ndim != volume.image.ndim - 1:
                raise TrainingError(
                    f"{volume.name}: a multi-class task needs class-index labels (*spatial), got a "
                    f"{label.ndim}-D label of shape {label.shape}; (C, *spatial) targets are independent masks: "
                    f"add --multilabel (with --classes {label.shape[0]} and --loss bce, dice, focal, tversky or gdl)"
                )
            top = int(label.max()) if label.size else 0
            if top >= classes:
                raise TrainingError(f"{volume.name}: label holds class {top} but --classes is {classes}")
        else:
            if label.ndim == volume.image.ndim:  # (C, *spatial)
                if label.shape[0] != classes:
                    hint = f"; {label.shape[0]} independent masks need --multilabel --classes {label.shape[0]}"
                    raise TrainingError(
                        f"{volume.name}: target has {label.shape[0]} channels but --classes is {classes}"
                        + (hint if mode == "binary" else "")
                    )
            elif classes != 1:
                raise TrainingError(
                    f"{volume.name}: a multi-label task with {classes} classes needs (C, *spatial) targets, "
                    f"got class indices of shape {label.shape}"
                )
            else:
                values = np.unique(label)
                if not np.isin(values, (0, 1)).all():
                    raise TrainingError(f"{volume.name}: a binary task needs labels in {{0, 1}}, found {values[:10]}")


def resample_volume(
    volume: Volume,
    target_spacing: tuple[float, ...],
    *,
    image_resampling: str = "linear",
    label_resampling: str = "nearest",
) -> Volume:
    """Resample ``volume``'s image and label (in place) from its spacing to ``target_spacing``."""
    if volume.spacing is None:
        raise TrainingError(f"{volume.name}: volume has no spacing to resample from")
    if len(target_spacing) != len(volume.spacing):
        raise TrainingError(
            f"target spacing {tuple(target_spacing)} has {len(target_spacing)} sizes but {volume.name} has "
            f"{len(volume.spacing)} spatial axes"
        )
    shape = resampled_shape(volume.spatial_shape, volume.spacing, target_spacing)
    geometry = dict(spacing=volume.spacing, target_spacing=target_spacing)
    volume.image = resample_image(volume.image, shape, image_resampling, **geometry)
    if volume.label is not None:
        volume.label = resample_label(volume.label, shape, label_resampling, **geometry)
    volume.spacing = tuple(float(t) for t in target_spacing)
    return volume


def prepare_volume(
    volume: Volume,
    *,
    normalization: str = "zscore",
    intensity_stats: list[dict[str, float]] | None = None,
    target_spacing: tuple[float, ...] | None = None,
    image_resampling: str = "linear",
    label_resampling: str = "nearest",
) -> Volume:
    """Normalise ``volume``'s image (:func:`normalize`), then resample it to ``target_spacing``
    (None: keep the grid), in place; returns it."""
    volume.image = normalize(volume.image, normalization, intensity_stats)
    if target_spacing is not None:
        resample_volume(volume, target_spacing, image_resampling=image_resampling, label_resampling=label_resampling)
    return volume


def read_volumes(
    specs: list[str],
    spatial_dims: int = 3,
    *,
    raw_key: str = "raw",
    label_key: str = "label",
    spacing: tuple[float, ...] | None = None,
    label_map: dict[int, int] | None = None,
) -> list[Volume]:
    """Read labelled volumes as stored (``specs`` as :func:`expand_specs` takes them)."""
    return [
        read_volume(
            spec,
            spatial_dims,
            need_label=True,
            raw_key=raw_key,
            label_key=label_key,
            spacing=spacing,
            label_map=label_map,
        )
        for spec in expand_specs(specs)
    ]


def load_volumes(
    specs: list[str],
    spatial_dims: int = 3,
    *,
    normalization: str = "zscore",
    raw_key: str = "raw",
    label_key: str = "label",
    spacing: tuple[float, ...] | None = None,
    label_map: dict[int, int] | None = None,
    intensity_stats: list[dict[str, float]] | None = None,
    target_spacing: tuple[float, ...] | None = None,
    image_resampling: str = "linear",
    label_resampling: str = "nearest",
) -> list[Volume]:
    """Read labelled volumes for training (:func:`read_volumes`) and prepare each
    (:func:`prepare_volume`: normalise, then resample to ``target_spacing`` when given)."""
    volumes = read_volumes(
        specs, spatial_dims, raw_key=raw_key, label_key=label_key, spacing=spacing, label_map=label_map
    )
    for volume in volumes:
        prepare_volume(
            volume,
            normalization=normalization,
            intensity_stats=intensity_stats,
            target_spacing=target_spacing,
            image_resampling=image_resampling,
            label_resampling=label_resampling,
        )
    return volumes


# -- normalisation -----------------------------------------------------------------------------
#: ``ct``: clip to the dataset's foreground 0.5-99.5 percentiles, z-score with its foreground mean and
#: std; ``zscore``: per volume and channel, inside the non-zero mask; ``minmax``: to [0, 1]; ``none``.
NORMALIZATIONS = ("zscore", "ct", "minmax", "none")
#: The per-channel statistics ``ct`` needs (computed by :mod:`.fingerprint` on labelled voxels).
CT_STATS = ("mean", "std", "percentile_00_5", "percentile_99_5")


def normalize(image: np.ndarray, how: str, intensity_stats: list[dict[str, float]] | None = None) -> np.ndarray:
    """Per-channel intensity normalisation of a (C, *spatial) image.

    Args:
        image: (C, *spatial) float array.
        how: one of :data:`NORMALIZATIONS`. ``zscore`` uses the voxels where any channel is non-zero
            when zeros mark a background (voxels outside stay 0), else the whole volume.
        intensity_stats: for ``ct``, one dict per channel with the keys of :data:`CT_STATS`.

    Returns:
        float32 array of the same shape.
    """
    if how == "none":
        return image
    axes = tuple(range(1, image.ndim))
    if how == "zscore":
        mask = np.any(image != 0, axis=0)
        if mask.all() or not mask.any():
            mean = image.mean(axis=axes, keepdims=True, dtype=np.float64)
            std = image.std(axis=axes, keepdims=True, dtype=np.float64)
            return ((image - mean) / np.maximum(std, 1e-8)).astype(np.float32)
        out = np.zeros_like(image, dtype=np.float32)
        for channel in range(image.shape[0]):
            inside = image[channel][mask].astype(np.float64)
            out[channel][mask] = (inside - inside.mean()) / max(inside.std(), 1e-8)
        return out
    if how == "ct":
        if intensity_stats is None or len(intensity_stats) != image.shape[0]:
            found = "none" if intensity_stats is None else f"{len(intensity_stats)} channel(s)"
            raise TrainingError(
                f"normalisation 'ct' needs the dataset's foreground intensity statistics for each of the "
                f"{image.shape[0]} channel(s) (from smp3d plan), got {found}"
            )
        out = np.empty_like(image, dtype=np.float32)
        for channel, stats in enumerate(intensity_stats):
            missing = [key for key in CT_STATS if key not in stats]
            if missing:
                raise TrainingError(f"normalisation 'ct': channel {channel} statistics lack {missing}")
            clipped = np.clip(image[channel], stats["percentile_00_5"], stats["percentile_99_5"])
            out[channel] = (clipped - stats["mean"]) / max(float(stats["std"]), 1e-8)
        return out
    if how == "minmax":
        low = image.min(axis=axes, keepdims=True)
        high = image.max(axis=axes, keepdims=True)
        return ((image - low) / np.maximum(high - low, 1e-8)).astype(np.float32)
    raise TrainingError(f"unknown normalisation {how!r}; expected one of {', '.join(NORMALIZATIONS)}")


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
        raise TrainingError(f"{path}: unsupported output type {suffix!r}; expected one of {', '.join(ALL_SUFFIXES)}")
    atomic_write(path, write)
