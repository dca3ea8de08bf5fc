"""Sliding-window inference over (B, C, *spatial) volumes of any number of spatial axes."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.factories import channels_last_format
from .windows import (
    BLEND_MODES,
    importance_map,
    per_axis,
    resolve_overlap,
    resolve_patch_size,
    symmetric_padding,
    window_starts,
    window_step,
)

PADDING_MODES = ("constant", "reflect", "replicate", "circular")


def sliding_window_inference(
    model: Callable[[torch.Tensor], torch.Tensor],
    volume: torch.Tensor,
    patch_size: int | None | Sequence[int | None],
    overlap: float | Sequence[float] = 0.5,
    blend: str = "gaussian",
    batch_size: int = 4,
    *,
    sigma_scale: float | Sequence[float] = 0.125,
    padding_mode: str = "constant",
    cval: float = 0.0,
    device: torch.device | str | None = None,
    output_device: torch.device | str | None = None,
    autocast: torch.dtype | None = None,
    channels_last: bool = False,
    inference_mode: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """Predict a whole volume by running `model` on overlapping windows and blending the results.

    Windows sit on a regular grid per axis with step ``int(patch * (1 - overlap))`` (at least 1), the
    last window ending flush with the axis; an axis shorter than the patch is padded (centred) for the
    model and cropped back in the result. Each voxel of the result is the weighted mean of the
    predictions of all windows that cover it, weighted by the importance map of the window (see
    :func:`smp3d.inference.importance_map`). Placement, padding and Gaussian weights match MONAI's
    ``sliding_window_inference`` for the same ``roi_size``, ``overlap``, ``mode`` and ``sigma_scale``.

    Window coordinates are computed up front as Python ints; the model sees `batch_size` windows per
    call (drawn across the batch items too); predictions are multiplied by the importance map and
    added in place into a float32 sum, whose per-voxel weight total is computed once. No value of the
    volume or of the predictions is read on the host.

    Args:
        model: any callable mapping a (N, C, *patch) tensor to a (N, K, *patch) tensor: an ``nn.Module``
            or e.g. ``lambda x: net(x).softmax(1)``. K may differ from C; the spatial size must be kept.
        volume: (B, C, *spatial) tensor, any number of spatial axes (2D: (B, C, H, W), 3D: (B, C, H, W, D)).
            It may live on another device than the model (e.g. on the CPU, with a CUDA model).
        patch_size: window size, an int for every axis or one entry per spatial axis; ``None`` or -1 on
            an axis takes the whole axis.
        overlap: fraction of a window shared with its neighbour, in [0, 1), one value or one per axis.
        blend: ``"gaussian"`` (down-weights window borders) or ``"constant"`` (plain average).
        batch_size: number of windows per model call.
        sigma_scale: Gaussian standard deviation as a fraction of the patch size, one value or per axis
            (``"gaussian"`` only).
        padding_mode: how axes shorter than the patch are padded: ``"constant"`` (with `cval`),
            ``"reflect"``, ``"replicate"`` or ``"circular"`` (as in ``torch.nn.functional.pad``).
        cval: fill value for ``padding_mode="constant"``.
        device: where the model runs. Default: the device of the model's first parameter (or buffer)
            when `model` is an ``nn.Module`` that has one, else the device of `volume`. Each batch of
            windows is moved there (asynchronously from pinned memory when the volume is on the CPU).
        output_device: where the result is accumulated and returned. Default: the model's device. Use
            ``"cpu"`` for volumes whose result does not fit in accelerator memory; predictions are then
            copied back per batch, overlapping with the next model call on CUDA.
        autocast: a dtype such as ``torch.bfloat16`` runs the model under ``torch.autocast`` with it;
            ``None`` (default) adds no autocast context (an enclosing one still applies). Predictions of
            any floating dtype are accumulated in float32.
        channels_last: give the model windows in ``channels_last`` (2D) / ``channels_last_3d`` (3D)
            memory format; use with a model converted with ``model.to(memory_format=...)``.
        inference_mode: run under ``torch.inference_mode()`` (default). ``False`` adds no grad-mode
            context, so gradients can flow to the model's parameters if the caller enables them.
        progress: show a tqdm progress bar over model calls.

    Returns:
        (B, K, *spatial) tensor on `output_device`, float32 (float64 when `volume` is float64).
    """
    spatial_shape, patch, steps, padding = _check_arguments(
        volume, patch_size, overlap, blend, batch_size, sigma_scale, padding_mode
    )
    model_device = _canonical_device(device if device is not None else _model_device(model, volume))
    output_device = _canonical_device(output_device) if output_device is not None else model_device
    grad_context = torch.inference_mode() if inference_mode else contextlib.nullcontext()
    with grad_context:
        return _run(
            model,
            volume,
            spatial_shape,
            patch,
            steps,
            padding,
            blend=blend,
            batch_size=batch_size,
            sigma_scale=sigma_scale,
            padding_mode=padding_mode,
            cval=cval,
            model_device=model_device,
            output_device=output_device,
            autocast=autocast,
            channels_last=channels_last,
            progress=progress,
        )


def _check_arguments(volume, patch_size, overlap, blend, batch_size, sigma_scale, padding_mode):
    if not isinstance(volume, torch.Tensor):
        raise TypeError(f"`volume` must be a torch.Tensor of shape (B, C, *spatial); got {type(volume).__name__}.")
    if volume.ndim < 3:
        raise ValueError(
            f"`volume` must have shape (B, C, *spatial) with at least one spatial axis, e.g. (B, C, H, W) or "
            f"(B, C, H, W, D); got {volume.ndim} dims {tuple(volume.shape)}."
        )
    spatial_shape = tuple(volume.shape[2:])
    if isinstance(patch_size, Sequence) and len(patch_size) != len(spatial_shape):
        raise ValueError(
            f"`patch_size` {tuple(patch_size)} has {len(patch_size)} entries but `volume` {tuple(volume.shape)} has "
            f"{len(spatial_shape)} spatial axes; give one int or one entry per spatial axis."
        )
    patch = resolve_patch_size(patch_size, spatial_shape)
    overlaps = resolve_overlap(overlap, len(spatial_shape))
    if not isinstance(blend, str) or blend not in BLEND_MODES:
        raise ValueError(f"Unknown blend {blend!r}; expected one of {BLEND_MODES}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int (windows per model call); got {batch_size!r}.")
    per_axis(sigma_scale, len(spatial_shape), "sigma_scale")  # length check; values are checked with the map
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"Unknown padding_mode {padding_mode!r}; expected one of {PADDING_MODES}.")
    padding = tuple(symmetric_padding(size, p) for size, p in zip(spatial_shape, patch, strict=True))
    padded_shape = tuple(size + before + after for size, (before, after) in zip(spatial_shape, padding, strict=True))
    steps = tuple(window_step(p, o, size) for p, o, size in zip(patch, overlaps, padded_shape, strict=True))
    return spatial_shape, patch, steps, padding


def _model_device(model, volume: torch.Tensor) -> torch.device:
    if isinstance(model, nn.Module):
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            return tensor.device
    return volume.device


def _canonical_device(device) -> torch.device:
    """`"cuda"` and `"cuda:0"` name the same device when 0 is current; compare them as equal."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    if device.type == "cpu":
        return torch.device("cpu")
    return device


def _window_slices(spatial_shape, patch, steps, padding):
    """Per window: the region it writes in the (unpadded) result, and the part of the prediction that
    lands there. Only axes shorter than the patch are padded, and those hold a single window that
    covers the whole axis, so the padded part of a prediction is simply sliced off."""
    per_axis_slices = []
    for size, p, step, (before, after) in zip(spatial_shape, patch, steps, padding, strict=True):
        if before or after:
            per_axis_slices.append([(slice(0, size), slice(before, before + size))])
        else:
            per_axis_slices.append([(slice(start, start + p), slice(0, p)) for start in window_starts(size, p, step)])
    windows = []
    for combination in itertools.product(*per_axis_slices):
        windows.append((tuple(out for out, _ in combination), tuple(pred for _, pred in combination)))
    return windows


def _run(
    model,
    volume,
    spatial_shape,
    patch,
    steps,
    padding,
    *,
    blend,
    batch_size,
    sigma_scale,
    padding_mode,
    cval,
    model_device,
    output_device,
    autocast,
    channels_last,
    progress,
):
    spatial_dims = len(spatial_shape)
    memory_format = _memory_format(channels_last, spatial_dims)
    accumulate_dtype = torch.float64 if volume.dtype == torch.float64 else torch.float32
    windows = _window_slices(spatial_shape, patch, steps, padding)
    # The volume is never padded as a whole: a batch of windows is padded after it is gathered.
    # F.pad takes (before, after) pairs from the last axis backwards.
    pad_arguments = [amount for pair in reversed(padding) for amount in pair]
    needs_padding = any(pad_arguments)

    weights = importance_map(patch, blend, sigma_scale, model_device, accumulate_dtype).unsqueeze(0)
    # Weight total per voxel: the same for every batch item, so computed once on the result's grid.
    weight_total = torch.zeros(spatial_shape, dtype=accumulate_dtype, device=output_device)
    output_weights = weights if output_device == model_device else weights.to(output_device)
    for out_slices, pred_slices in windows:
        weight_total[out_slices] += output_weights[(0, *pred_slices)]

    jobs = [(item, out_slices, pred_slices) for item in range(volume.shape[0]) for out_slices, pred_slices in windows]
    batches = [jobs[start : start + batch_size] for start in range(0, len(jobs), batch_size)]
    transfer_in = volume.device != model_device
    pin = transfer_in and volume.device.type == "cpu" and model_device.type == "cuda"
    # On CUDA, copies of predictions to another device are asynchronous; the accumulation of a batch waits
    # for its copy only after the next batch's model call has been queued, so the two overlap.
    deferred_copy = output_device != model_device and model_device.type == "cuda"
    autocast_context = (
        (lambda: torch.autocast(model_device.type, dtype=autocast)) if autocast is not None else contextlib.nullcontext
    )

    total = None
    pending = None
    iterator = batches
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(batches, desc="sliding window", unit="batch")
    for batch in iterator:
        # A window reads the region of the unpadded volume that it writes in the result.
        patches = torch.stack([volume[(item, slice(None), *out_slices)] for item, out_slices, _ in batch])
        if pin:
            patches = patches.pin_memory()
        if transfer_in:
            patches = patches.to(model_device, non_blocking=True)
        if needs_padding:
            patches = _pad(patches, pad_arguments, padding_mode, cval)
        if memory_format is not None:
            patches = patches.contiguous(memory_format=memory_format)
        with autocast_context():
            prediction = model(patches)
        _check_prediction(prediction, patches)
        if total is None:
            total = torch.zeros(
                (volume.shape[0], prediction.shape[1], *spatial_shape), dtype=accumulate_dtype, device=output_device
            )
        if output_device == model_device:
            for index, (item, out_slices, pred_slices) in enumerate(batch):
                total[(item, slice(None), *out_slices)].addcmul_(
                    prediction[(index, slice(None), *pred_slices)], weights[(slice(None), *pred_slices)]
                )
            continue
        weighted = (prediction * weights).to(accumulate_dtype)
        if deferred_copy:
            copied = weighted.to(output_device, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            if pending is not None:
                _add_batch(total, *pending)
            pending = (copied, batch, event)
        else:
            _add_batch(total, weighted.to(output_device), batch, None)
    if pending is not None:
        _add_batch(total, *pending)
    return total.div_(weight_total)


def _add_batch(total, weighted, batch, event):
    if event is not None:
        event.synchronize()
    for index, (item, out_slices, pred_slices) in enumerate(batch):
        total[(item, slice(None), *out_slices)] += weighted[(index, slice(None), *pred_slices)]


def _pad(patches, pad_arguments, padding_mode, cval):
    if padding_mode == "constant":
        return F.pad(patches, pad_arguments, mode="constant", value=cval)
    return F.pad(patches, pad_arguments, mode=padding_mode)


def _memory_format(channels_last: bool, spatial_dims: int):
    if not channels_last:
        return None
    fmt = channels_last_format(spatial_dims)
    if fmt is None:
        raise ValueError(f"`channels_last=True` needs 2 or 3 spatial axes; the volume has {spatial_dims}.")
    return fmt


def _check_prediction(prediction, patches):
    if not isinstance(prediction, torch.Tensor):
        raise TypeError(
            f"The model must return a single (N, K, *patch) tensor; it returned {type(prediction).__name__}. "
            f"Wrap it, e.g. `lambda x: model(x)[0]`."
        )
    expected = (patches.shape[0], *patches.shape[2:])
    if prediction.ndim != patches.ndim or (prediction.shape[0], *prediction.shape[2:]) != expected:
        raise ValueError(
            f"The model must keep the window's batch and spatial size: it got {tuple(patches.shape)} and returned "
            f"{tuple(prediction.shape)}; expected (N, K, *patch) = ({patches.shape[0]}, K, "
            f"{', '.join(map(str, patches.shape[2:]))})."
        )
