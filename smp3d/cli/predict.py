"""``smp3d predict``: segment images with a saved model and the sliding window."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..training import (
    Dist,
    Volume,
    check_patch_fits_model,
    prepare_volume,
    read_trainer_file,
    read_volume,
    resolve_device,
    write_prediction,
)
from ..training.errors import TrainingError as CLIError
from ..training.geometry import resample_image
from ..training.volumes import ALL_SUFFIXES, stem_of, suffix_of
from . import show_progress


def _is_model_folder(directory: Path) -> bool:
    return (directory / "config.json").exists() and (directory / "model.safetensors").exists()


def model_folder(directory: Path) -> Path:
    """The folder of saved weights that ``--checkpoint directory`` means: ``directory`` itself when it
    holds ``config.json`` and ``model.safetensors``, else the ``best/`` folder of the run directory
    ``directory`` (the model with the best ``val_mean_dice_foreground``), which is announced on stderr."""
    if _is_model_folder(directory):
        return directory
    best = directory / "best"
    if _is_model_folder(best):
        print(
            f"--checkpoint {directory} is a run directory: using its best/ (the model with the best "
            "val_mean_dice_foreground; pass --checkpoint DIR/last for the last epoch's)",
            file=sys.stderr,
            flush=True,
        )
        return best
    if _is_model_folder(directory / "last"):
        raise CLIError(
            f"--checkpoint {directory}: this run directory has no best/ model yet (no validation improved); "
            f"use --checkpoint {directory / 'last'}"
        )
    raise CLIError(
        f"--checkpoint {directory}: expected config.json and model.safetensors in it, or a run directory of "
        "smp3d train (with best/)"
    )


def load_checkpoint(directory: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The model saved in ``directory`` (or in ``directory/best`` for a run directory, see
    :func:`model_folder`) and its training configuration (empty when the folder was written by
    ``save_pretrained`` rather than ``smp3d train``)."""
    from ..base.hub import from_pretrained

    if not directory.is_dir():
        raise CLIError(f"--checkpoint {directory}: not a directory (expected a folder written by smp3d train)")
    directory = model_folder(directory)
    trainer = read_trainer_file(directory) or {}
    try:
        model = from_pretrained(directory)
    except (ValueError, KeyError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CLIError(f"--checkpoint {directory}: cannot load the model ({first})") from None
    return model, trainer.get("config", {})


def output_paths(inputs: list[str], output: str) -> list[Path]:
    """One output path per input: ``output`` itself for one input, else files in the folder ``output``."""
    out = Path(output)
    if len(inputs) == 1 and not (output.endswith(("/", "\\")) or out.is_dir()):
        return [out]
    if out.exists() and not out.is_dir():
        raise CLIError(f"--output {output}: several inputs need an output directory, not a file")
    paths = []
    for spec in inputs:
        suffix = suffix_of(spec)
        suffix = suffix if suffix in ALL_SUFFIXES else ".npy"
        paths.append(out / f"{stem_of(spec)}_prediction{suffix}")
    return paths


def predict_volume(
    models: nn.Module | list[nn.Module],
    volume: Volume,
    *,
    patch: tuple[int, ...],
    overlap: float,
    batch_size: int,
    blend: str,
    mode: str,
    device: torch.device,
    amp: bool | str,
    output_device: torch.device | None = None,
    progress: bool = False,
    tta_axes: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Probabilities (C, *spatial) of one volume: the mean over ``models`` and the mirrorings of ``tta_axes``."""
    from ..inference.predict import predict_probabilities
    from ..training.schedule import amp_dtype

    image = torch.from_numpy(volume.image)[None]
    channels_last = device.type == "cuda" and image.dim() in (4, 5)
    probabilities = predict_probabilities(
        models,
        image.to(output_device or device),
        patch,
        mode=mode,
        tta_axes=tta_axes,
        overlap=overlap,
        blend=blend,
        batch_size=batch_size,
        amp=amp_dtype(amp),
        channels_last=channels_last,
        output_device=output_device,
        progress=progress,
    )
    return probabilities[0]


def to_original_grid(probabilities: torch.Tensor, volume: Volume) -> torch.Tensor:
    """(C, *spatial) probabilities of a resampled ``volume`` brought back (linearly) to its file's shape."""
    if volume.original_shape is None or tuple(probabilities.shape[1:]) == tuple(volume.original_shape):
        return probabilities
    array = resample_image(
        probabilities.float().cpu().numpy(),
        volume.original_shape,
        "linear",
        spacing=volume.spacing,
        target_spacing=volume.original_spacing,
    )
    return torch.from_numpy(array)


def to_labels(probabilities: torch.Tensor, mode: str, threshold: float = 0.5) -> np.ndarray:
    if mode == "multiclass":
        labels = probabilities.argmax(0)
    else:
        labels = probabilities > threshold
        if labels.shape[0] == 1:
            labels = labels[0]
    array = labels.cpu().numpy()
    top = int(array.max()) if array.size else 0
    return array.astype(np.uint8 if top < 256 else np.int32)


def load_ensemble(directories: list[str]) -> tuple[list[nn.Module], dict[str, Any]]:
    """The models of ``directories`` (one or several, e.g. the folds of a cross-validation) and the first
    one's training configuration; they must agree on dimensions, input channels and classes."""
    models, trainers = [], []
    for name in directories:
        model, trainer = load_checkpoint(Path(name))
        models.append(model)
        trainers.append(trainer)

    def signature(model: nn.Module, trainer: dict[str, Any]) -> tuple:
        classes = int(getattr(model.segmentation_head[0], "out_channels", trainer.get("classes", 1)))
        return model.spatial_dims, model.in_channels, classes, trainer.get("mode")

    first = signature(models[0], trainers[0])
    for name, model, trainer in zip(directories[1:], models[1:], trainers[1:], strict=True):
        other = signature(model, trainer)
        if other != first:
            raise CLIError(
                f"--checkpoint {name} does not match {directories[0]}: (spatial dims, in channels, classes, mode) "
                f"{other} vs {first}; ensemble only models of one task"
            )
    return models, trainers[0]


def run_predict(args: Any) -> int:
    from ..inference.predict import keep_largest_component

    models, trainer = load_ensemble(list(args.checkpoint))
    directory = Path(args.checkpoint[0])
    model: Any = models[0]  # a SegmentationModel: spatial_dims, segmentation_head, in_channels
    spatial_dims = int(model.spatial_dims)
    classes = int(getattr(model.segmentation_head[0], "out_channels", trainer.get("classes", 1)))
    mode = trainer.get("mode") or ("binary" if classes == 1 else "multiclass")
    patch = tuple(args.patch) if args.patch else tuple(trainer.get("patch") or ())
    if not patch:
        raise CLIError(f"--patch is required: {directory} has no {'trainer.json'} with the training patch size")
    if len(patch) == 1:
        patch = patch * spatial_dims
    if len(patch) != spatial_dims:
        raise CLIError(f"--patch has {len(patch)} sizes but the model is {spatial_dims}D")
    for m in models:
        check_patch_fits_model(m, patch)
    tta_axes = None if args.tta is None else (tuple(args.tta) or tuple(range(spatial_dims)))
    if tta_axes is not None:
        bad = [a for a in tta_axes if not 0 <= a < spatial_dims]
        if bad:
            raise CLIError(f"--tta axes {bad} out of range: the model is {spatial_dims}D (axes 0..{spatial_dims - 1})")
    if args.keep_largest and args.probabilities:
        raise CLIError("--keep-largest cleans label maps; it cannot be combined with --probabilities")
    how = trainer.get("normalize", "zscore") if args.normalize is None else args.normalize
    spacing = tuple(args.spacing) if args.spacing else trainer.get("spacing")
    if spacing is not None and len(spacing) == 1:
        spacing = tuple(spacing) * spatial_dims
    device = resolve_device(args.device, Dist())
    output_device = torch.device(args.output_device) if args.output_device else None
    models = [m.to(device).eval() for m in models]  # on CUDA a model keeps itself in channels-last
    outputs = output_paths(args.input, args.output)
    for spec, out in zip(args.input, outputs, strict=True):
        volume = read_volume(spec, spatial_dims, need_label=False, raw_key=args.dataset, spacing=spacing)
        if volume.image.shape[0] != model.in_channels:
            raise CLIError(
                f"{spec}: image has {volume.image.shape[0]} channels but the model expects {model.in_channels}"
            )
        prepare_volume(
            volume,
            normalization=how,
            intensity_stats=trainer.get("intensity_stats"),
            target_spacing=trainer.get("target_spacing"),
            image_resampling=trainer.get("image_resampling", "linear"),
        )
        probabilities = predict_volume(
            models,
            volume,
            patch=patch,
            overlap=args.overlap,
            batch_size=args.batch_size,
            blend=args.blend,
            mode=mode,
            device=device,
            amp=args.amp,
            output_device=output_device,
            progress=show_progress(args),
            tta_axes=tta_axes,
        )
        # Back onto the input's own grid (its affine is written unchanged).
        probabilities = to_original_grid(probabilities, volume)
        if args.probabilities:
            array = probabilities.float().cpu().numpy()
        else:
            array = to_labels(probabilities, mode, args.threshold)
            if args.keep_largest:
                array = keep_largest_component(array, stacked=mode != "multiclass" and array.ndim > spatial_dims)
        write_prediction(out, array, volume)
        print(f"{spec} -> {out}  {tuple(array.shape)} {array.dtype}", file=sys.stderr if args.quiet else sys.stdout)
    return 0
