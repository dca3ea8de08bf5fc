"""MedNeXt checkpoints into :class:`~smp3d.MedNeXt`, and UpKern (kernel-3 weights -> kernel-5 model).

Key map from MIC-DKFZ/MedNeXt's ``MedNeXt`` (``create_mednext_v1``), for a model of encoder depth
``D`` (MedNeXt: 5); ``*`` is the rest of the key, unchanged unless noted:

==============================  ================================================
MedNeXt                         smp3d
==============================  ================================================
``stem.*``                      ``encoder.stem.*``
``enc_block_{i}.{j}.*``         ``encoder.stages.{i}.blocks.{j}.*``
``down_{i}.*``                  ``encoder.stages.{i+1}.down.*``
``bottleneck.{j}.*``            ``encoder.stages.{D-1}.blocks.{j}.*``
``up_{i}.*``                    ``decoder.stages.{D-2-i}.up.*``
``dec_block_{i}.{j}.*``         ``decoder.stages.{D-2-i}.blocks.{j}.*``
``out_0.conv_out.*``            ``segmentation_head.0.*`` (weight: axes 0 and 1 swapped)
``out_{i}.conv_out.*``, i >= 1  ``deep_supervision_heads.{i-1}.*`` (same swap)
``dummy_tensor``                dropped (a 1-element workaround for checkpointing)
==============================  ================================================

MedNeXt's output blocks are 1x1 transposed convolutions, whose weight is ``(in, out, 1, ...)``; ours
are 1x1 convolutions, ``(out, in, 1, ...)``: the same map with the first two axes swapped.

MONAI's port (``monai.networks.nets.MedNeXt``) is read too: ``enc_stages.{i}`` / ``down_blocks.{i}``
as ``enc_block_{i}`` / ``down_{i}``, ``up_blocks.{k}`` / ``dec_stages.{k}`` as decoder stage ``k``,
``out_blocks.{k}`` as ``deep_supervision_heads.{D-2-k}``. (MONAI's B, M and L give each down block the
ratio of the stage it leaves, MedNeXt the ratio of the stage it enters, so only S loads unchanged.)
Global response norm (``grn_*``) and MedNeXt's layer-norm option have no counterpart here and are refused.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["load_mednext_state_dict", "mednext_state_dict", "upkern", "upkern_state_dict"]

_HEAD = re.compile(r"^out_(\d+)\.conv_out\.(weight|bias)$")
_MONAI_HEAD = re.compile(r"^out_blocks\.(\d+)\.conv_out\.(weight|bias)$")


def _rename(key: str, depth: int) -> str | None:
    """smp3d's key for a MedNeXt / MONAI key (heads excluded), or None if the key is not known."""
    rules = (
        (r"^stem\.(.*)$", lambda m: f"encoder.stem.{m[1]}"),
        (r"^(?:enc_block_|enc_stages\.)(\d+)\.(.*)$", lambda m: f"encoder.stages.{m[1]}.blocks.{m[2]}"),
        (r"^(?:down_|down_blocks\.)(\d+)\.(.*)$", lambda m: f"encoder.stages.{int(m[1]) + 1}.down.{m[2]}"),
        (r"^bottleneck\.(.*)$", lambda m: f"encoder.stages.{depth - 1}.blocks.{m[1]}"),
        (r"^up_(\d+)\.(.*)$", lambda m: f"decoder.stages.{depth - 2 - int(m[1])}.up.{m[2]}"),
        (r"^dec_block_(\d+)\.(.*)$", lambda m: f"decoder.stages.{depth - 2 - int(m[1])}.blocks.{m[2]}"),
        (r"^up_blocks\.(\d+)\.(.*)$", lambda m: f"decoder.stages.{m[1]}.up.{m[2]}"),
        (r"^dec_stages\.(\d+)\.(.*)$", lambda m: f"decoder.stages.{m[1]}.blocks.{m[2]}"),
    )
    for pattern, build in rules:
        match = re.match(pattern, key)
        if match:
            return build(match)
    return None


def mednext_state_dict(state_dict: Mapping[str, torch.Tensor], depth: int = 5) -> dict[str, torch.Tensor]:
    """A MedNeXt (or MONAI MedNeXt) state dict in smp3d's layout (see the module's key map).

    ``depth`` is the smp3d model's ``encoder_depth``. A ``module.`` prefix (DataParallel) is removed.
    Raises a KeyError naming every key it cannot place.
    """
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for raw_key, value in state_dict.items():
        key = raw_key[len("module.") :] if raw_key.startswith("module.") else raw_key
        if key == "dummy_tensor":
            continue
        if "grn_" in key or "global_resp_" in key:
            raise KeyError(
                f"{raw_key!r}: global response norm (MedNeXt's grn=True) has no counterpart in smp3d.MedNeXt; "
                "only checkpoints with grn=False load."
            )
        head, monai_head = _HEAD.match(key), _MONAI_HEAD.match(key)
        if head or monai_head:
            level = int(head[1]) if head else depth - 1 - int(monai_head[1])
            kind = (head or monai_head)[2]
            target = "segmentation_head.0" if level == 0 else f"deep_supervision_heads.{level - 1}"
            out[f"{target}.{kind}"] = value.transpose(0, 1) if kind == "weight" else value
            continue
        renamed = _rename(key, depth)
        if renamed is None:
            unknown.append(raw_key)
        else:
            out[renamed] = value
    if unknown:
        raise KeyError(f"Keys of no MedNeXt layout: {unknown[:10]}{' ...' if len(unknown) > 10 else ''}.")
    return out


def load_mednext_state_dict(model: nn.Module, source: Mapping[str, torch.Tensor] | str | os.PathLike) -> nn.Module:
    """Load a MedNeXt checkpoint into ``model`` (an :class:`smp3d.MedNeXt`) strictly; returns the model.

    ``source`` is a state dict or a file: an nnU-Net (v1) MedNeXt checkpoint (``model_final_checkpoint.model``,
    its ``"state_dict"`` is used) or a saved state dict, read with ``torch.load(weights_only=True)``.
    Deep-supervision outputs in the checkpoint need ``deep_supervision=True`` on the model, and vice versa.
    """
    if isinstance(source, (str, os.PathLike)):
        try:
            loaded = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - re-raised with what to do
            raise ValueError(
                f"Cannot read {os.fspath(source)!r} with torch.load(weights_only=True) ({type(error).__name__}: "
                f"{error}). Load it yourself in a trusted environment and pass model['state_dict'] instead."
            ) from error
        source = loaded.get("state_dict", loaded) if isinstance(loaded, Mapping) else loaded
    if not isinstance(source, Mapping):
        raise TypeError(f"Expected a state dict (a mapping of tensors) or a path, got {type(source).__name__}.")
    depth = model.encoder.depth
    model.load_state_dict(mednext_state_dict(source, depth), strict=True)
    return model


def upkern_state_dict(
    target: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``source`` tensors shaped as ``target``'s: every convolution kernel whose spatial size differs is
    resized by (bi/tri)linear interpolation of its spatial axes (MedNeXt's UpKern); every other tensor must
    have the same shape. Keys must be the same in both."""
    missing, extra = sorted(set(target) - set(source)), sorted(set(source) - set(target))
    if missing or extra:
        raise KeyError(f"UpKern needs the same keys in both models; missing {missing[:5]}, unexpected {extra[:5]}.")
    out = {}
    for key, want in target.items():
        have = source[key]
        if have.shape == want.shape:
            out[key] = have.clone()
            continue
        if have.dim() != want.dim() or have.dim() < 3 or have.shape[:2] != want.shape[:2]:
            raise ValueError(
                f"UpKern: {key!r} has shape {tuple(have.shape)} in the source and {tuple(want.shape)} in the target; "
                "only the spatial axes of a kernel may differ (same channels, same spatial_dims)."
            )
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[have.dim() - 2]
        out[key] = F.interpolate(have.float(), size=tuple(want.shape[2:]), mode=mode).to(have.dtype)
    return out


def upkern(model: nn.Module, source: nn.Module | Mapping[str, torch.Tensor]) -> nn.Module:
    """Initialise ``model`` (e.g. ``MedNeXt(kernel_size=5)``) from ``source``, the same architecture trained
    with another kernel size (e.g. 3): kernels are interpolated, everything else is copied. Returns ``model``.

    >>> k3 = MedNeXt("mednext_s", kernel_size=3, in_channels=1, classes=2)
    >>> k5 = upkern(MedNeXt("mednext_s", kernel_size=5, in_channels=1, classes=2), k3)
    """
    state = source.state_dict() if isinstance(source, nn.Module) else source
    with torch.no_grad():
        model.load_state_dict(upkern_state_dict(model.state_dict(), state), strict=True)
    return model
