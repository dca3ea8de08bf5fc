"""SwinUNETR: MONAI's Swin UNETR with any registered encoder (its Swin transformer by default)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...base import SegmentationHead, SegmentationModel, build_classification_head, check_classes
from ...base.assembly import build_encoder, check_channels, check_encoder_depth
from ...encoders.protocol import StridesArg
from ...layers.blocks import NormSpec
from ..monai_keys import convert_state_dict, load_converted, state_dict_of
from .decoder import SwinUNETRDecoder

__all__ = ["MONAI_KEY_MAP", "SwinUNETR", "pad_to_multiple"]

#: MONAI ``SwinUNETR`` key -> smp3d key (first matching rule; then ``<name>.conv.weight`` -> ``<name>.weight``).
MONAI_KEY_MAP: list[tuple[str, str]] = [
    *((rf"^swinViT\.layers{k}c\.0\.layer\.", f"encoder.stages.{k - 1}.conv_block.") for k in range(1, 5)),
    *((rf"^swinViT\.layers{k}\.0\.", f"encoder.stages.{k - 1}.") for k in range(1, 5)),
    (r"^swinViT\.", "encoder."),
    *((rf"^encoder{k}\.layer\.", f"decoder.skips.{k - 1}.") for k in range(1, 5)),
    (r"^encoder10\.layer\.", "decoder.bottleneck."),
    *((rf"^decoder{k}\.", f"decoder.blocks.{5 - k}.") for k in range(1, 6)),
    (r"^out\.conv\.conv\.", "segmentation_head.0."),
]


def pad_to_multiple(x: torch.Tensor, multiple: tuple[int, ...]) -> tuple[torch.Tensor, list[int]]:
    """Zero-pad ``x`` at the end of each spatial axis to a multiple of ``multiple``; also return the sizes."""
    sizes = list(x.shape[2:])
    pad = [(-s) % m for s, m in zip(sizes, multiple, strict=True)]
    if any(pad):
        spec: list[int] = []
        for p in reversed(pad):
            spec += [0, p]
        x = F.pad(x, spec)
    return x, sizes


def crop_to(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """``x[..., :sizes[0], :sizes[1], ...]`` over the spatial axes (a view; no copy when nothing is cut)."""
    if list(x.shape[2:]) == sizes:
        return x
    return x[(slice(None), slice(None), *(slice(0, s) for s in sizes))]


class SwinUNETR(SegmentationModel):
    """Swin UNETR (Hatamizadeh et al., "Swin UNETR: Swin Transformers for Semantic Segmentation of Brain
    Tumors in MRI Images", 2022), in 2D or 3D, with MONAI's layout: ``from_monai`` loads a MONAI
    ``SwinUNETR`` (model or state dict, its pretrained checkpoints included) strictly, with equal outputs.

    Args:
        encoder_name: a 5-level encoder; ``"swinvit_t"`` (feature_size 24), ``"swinvit_s"`` (36),
            ``"swinvit_b"`` (48), ``"swinvit_v2_*"`` (Swin UNETR v2) are MONAI's Swin transformer; any other
            hierarchical encoder works too (e.g. ``"resnet34"``).
        encoder_depth: encoder stages, 1..5 (MONAI's is 5).
        encoder_weights: ``None``, a pretrained tag, or a local ``.safetensors`` file/folder.
        decoder_feature_size: channels of the two finest decoder levels (doubling after). ``None``: the
            encoder's ``feature_size`` attribute (the Swin encoders'), else 24 (MONAI's default).
        decoder_use_norm: normalization of the conv blocks (``"instancenorm"``: MONAI's ``"instance"``).
        in_channels: input channels.
        classes: output channels (classes).
        activation: the head's activation (None, a name or a callable), as for every architecture.
        aux_params: the classification head's arguments, as for every architecture.
        spatial_dims: 2 or 3.
        strides: per-stage strides of the encoder, as for every architecture.
        kwargs: passed to the encoder's builder (for the Swin encoders: ``feature_size``, ``window_size``,
            ``blocks``, ``heads``, ``use_v2``, ``merging``, ``drop_path_rate``...).

    Any input size works: the input is zero-padded at the end of each axis to a multiple of the output
    stride (MONAI refuses sizes not divisible by 32) and the mask cropped back.
    """

    requires_divisible_input_shape = False
    _is_torch_scriptable = False
    _torch_script_refusal = "its input padding and the Swin encoder's window bookkeeping are Python-level"

    def __init__(
        self,
        encoder_name: str = "swinvit_t",
        encoder_depth: int = 5,
        encoder_weights: str | None = None,
        decoder_feature_size: int | None = None,
        decoder_use_norm: NormSpec = "instancenorm",
        in_channels: int = 3,
        classes: int = 1,
        activation: str | Callable[..., nn.Module] | None = None,
        aux_params: dict[str, Any] | None = None,
        spatial_dims: int = 3,
        strides: StridesArg = None,
        **kwargs: Any,
    ):
        super().__init__()
        check_classes(classes)
        check_encoder_depth(encoder_depth, range(1, 6), "SwinUNETR")
        self.encoder = build_encoder(
            "SwinUNETR",
            encoder_name,
            in_channels=in_channels,
            depth=encoder_depth,
            weights=encoder_weights,
            spatial_dims=spatial_dims,
            strides=strides,
            **kwargs,
        )
        if decoder_feature_size is None:
            decoder_feature_size = getattr(self.encoder, "feature_size", 24)
        check_channels(decoder_feature_size, "decoder_feature_size", "SwinUNETR")
        empty = [i for i, c in enumerate(self.encoder.out_channels) if c == 0]
        if empty:
            raise ValueError(
                f"SwinUNETR merges a skip at every level, but the encoder {encoder_name!r} has no feature at level(s) "
                f"{empty} (0 channels: placeholders of a pyramid that starts at reduction "
                f"{self.encoder.reductions[empty[-1] + 1]}). Use an encoder with a feature at every level."
            )
        self.decoder = SwinUNETRDecoder(
            self.encoder.out_channels,
            self.encoder.reductions,
            decoder_feature_size,
            use_norm=decoder_use_norm,
            spatial_dims=spatial_dims,
        )
        self.segmentation_head = SegmentationHead(
            self.decoder.out_channels, classes, kernel_size=1, activation=activation, spatial_dims=spatial_dims
        )
        self.classification_head = build_classification_head(aux_params, self.encoder.out_channels[-1], spatial_dims)
        self.name = f"swinunetr-{encoder_name}"
        self.initialize()

    def _masks(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x, sizes = pad_to_multiple(x, self.output_stride)
        out = super()._masks(x)
        if isinstance(out, tuple):
            return crop_to(out[0], sizes), out[1]
        return crop_to(out, sizes)

    @classmethod
    def from_monai(cls, source: nn.Module | Mapping[str, torch.Tensor], **kwargs: Any) -> SwinUNETR:
        """A SwinUNETR with the weights of a MONAI ``SwinUNETR`` (a model, or its state dict).

        The architecture is read from the state dict's shapes (input channels, classes, feature size, blocks
        and heads per stage, window (cubic), patch size, MLP ratio, qkv bias, patch norm, v2, decoder norm)
        and, from a model, its attributes (window size, merging order, ``normalize``); ``kwargs`` override
        any of them (e.g. ``merging="mergingv2"`` or ``window_size=(7, 7, 3)`` for a bare state dict). Keys
        are renamed by :data:`MONAI_KEY_MAP` and loaded strictly: a key missing on either side or a shape
        mismatch raises, naming them. Outputs then equal MONAI's (float tolerance; see
        ``tests/test_monai_parity.py``).
        """
        state = state_dict_of(source, "SwinUNETR")
        config = _config_from_state(state)
        if isinstance(source, nn.Module):
            config.update(_config_from_module(source))
        config.update(kwargs)
        model = cls(**config)
        load_converted(model, convert_state_dict(state, MONAI_KEY_MAP, (), "SwinUNETR"), "SwinUNETR")
        return model


def _need(state: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise KeyError(
            f"SwinUNETR.from_monai: the state dict has no {key!r}; is it a MONAI SwinUNETR's? (for a training "
            f"checkpoint pass checkpoint['state_dict'], keys without a 'module.' prefix)"
        )
    return state[key]


def _config_from_state(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    embed = _need(state, "swinViT.patch_embed.proj.weight")
    feature_size, in_channels, *patch = embed.shape
    spatial_dims = len(patch)
    blocks, heads = [], []
    for k in range(1, 5):
        prefix = f"swinViT.layers{k}.0.blocks."
        indices = {int(key[len(prefix) :].split(".")[0]) for key in state if key.startswith(prefix)}
        blocks.append(len(indices))
        heads.append(_need(state, f"{prefix}0.attn.relative_position_bias_table").shape[1])
    n = _need(state, "swinViT.layers1.0.blocks.0.attn.relative_position_index").shape[0]
    window = round(n ** (1 / spatial_dims))
    config: dict[str, Any] = {
        "encoder_name": "swinvit_v2_t" if any(k.startswith("swinViT.layers1c.") for k in state) else "swinvit_t",
        "in_channels": int(in_channels),
        "classes": int(_need(state, "out.conv.conv.weight").shape[0]),
        "spatial_dims": spatial_dims,
        "strides": (tuple(int(p) for p in patch), 2, 2, 2, 2),
        "feature_size": int(feature_size),
        "blocks": tuple(blocks),
        "heads": tuple(int(h) for h in heads),
        "mlp_ratio": _need(state, "swinViT.layers1.0.blocks.0.mlp.linear1.weight").shape[0] / feature_size,
        "qkv_bias": "swinViT.layers1.0.blocks.0.attn.qkv.bias" in state,
        "patch_norm": "swinViT.patch_embed.norm.weight" in state,
        "decoder_use_norm": _norm_from_state(state, "encoder1.layer.norm1"),
    }
    if window**spatial_dims == n:  # a cubic window; otherwise window_size must be given
        config["window_size"] = window
    return config


def _norm_from_state(state: Mapping[str, torch.Tensor], prefix: str) -> NormSpec:
    if f"{prefix}.running_mean" in state:
        return "batchnorm"
    if f"{prefix}.weight" in state:
        return {"type": "instancenorm", "affine": True}
    return "instancenorm"


def _config_from_module(model: nn.Module) -> dict[str, Any]:
    swin = model.swinViT
    downsample = swin.layers1[0].downsample
    config: dict[str, Any] = {
        "window_size": tuple(int(w) for w in swin.window_size),
        "merging": "merging" if type(downsample).__name__ == "PatchMerging" else "mergingv2",
        "normalize_features": bool(getattr(model, "normalize", True)),
    }
    norm = model.encoder1.layer.norm1
    if isinstance(norm, nn.modules.batchnorm._BatchNorm):
        config["decoder_use_norm"] = "batchnorm"
    elif isinstance(norm, nn.modules.instancenorm._InstanceNorm):
        config["decoder_use_norm"] = {"type": "instancenorm", "affine": True} if norm.affine else "instancenorm"
    else:
        raise ValueError(
            f"SwinUNETR.from_monai: the MONAI model's norm_name gives {type(norm).__name__}; smp3d's SwinUNETR takes "
            f"instance or batch normalization (decoder_use_norm)."
        )
    return config
