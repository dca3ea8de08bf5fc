"""UNETR: MONAI's UNETR with any registered encoder (its ViT by default)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn

from ...base import SegmentationHead, SegmentationModel, build_classification_head, check_classes
from ...base.assembly import build_encoder, check_channels
from ...encoders.protocol import StridesArg
from ...layers.blocks import NormSpec
from ..monai_keys import convert_state_dict, load_converted, state_dict_of
from ..swinunetr.model import _norm_from_state, crop_to, pad_to_multiple
from .decoder import UNETRDecoder

__all__ = ["MONAI_DROPPED_KEYS", "MONAI_KEY_MAP", "UNETR"]

#: MONAI ``UNETR`` key -> smp3d key (first matching rule; then ``<name>.conv.weight`` -> ``<name>.weight``).
MONAI_KEY_MAP: list[tuple[str, str]] = [
    (r"^vit\.", "encoder."),
    (r"^encoder1\.layer\.", "decoder.skips.0."),
    *((rf"^encoder{k}\.", f"decoder.skips.{k - 1}.") for k in range(2, 5)),
    *((rf"^decoder{k}\.", f"decoder.blocks.{5 - k}.") for k in range(2, 6)),
    (r"^out\.conv\.conv\.", "segmentation_head.0."),
]
#: Keys MONAI's ViT keeps without using them (cross-attention parts of its transformer blocks, absent
#: unless ``with_cross_attention=True``, which UNETR never sets); dropped by ``from_monai``.
MONAI_DROPPED_KEYS = (r"\.norm_cross_attn\.", r"\.cross_attn\.")


class UNETR(SegmentationModel):
    """UNETR (Hatamizadeh et al., "UNETR: Transformers for 3D Medical Image Segmentation", WACV 2022), in 2D or
    3D, with MONAI's layout: ``from_monai`` loads a MONAI ``UNETR`` (model or state dict) strictly, with equal
    outputs.

    Args:
        encoder_name: ``"unetr_vit_b16"`` (MONAI's defaults), ``"unetr_vit_s16"``, ``"unetr_vit_t16"``, another
            single-scale encoder, or a hierarchical one (its own pyramid is then used, e.g. ``"resnet34"``).
        encoder_depth: features used (MONAI's 4: blocks 3, 6, 9 and the last of 12).
        encoder_weights: ``None``, a pretrained tag, or a local ``.safetensors`` file/folder.
        feature_size: channels of the finest decoder level, doubling per level (MONAI's ``feature_size``, 16).
        decoder_use_norm: normalization of the conv blocks (``"instancenorm"``: MONAI's ``"instance"``).
        conv_block: MONAI's flag: conv blocks after each upsampling of a skip.
        res_block: MONAI's flag: residual blocks.
        in_channels: input channels.
        classes: output channels (classes).
        activation: the head's activation (None, a name or a callable), as for every architecture.
        aux_params: the classification head's arguments, as for every architecture.
        spatial_dims: 2 or 3.
        strides: per-stage strides, as for every architecture (of a ViT: the patch size first,
            e.g. ``((16, 16, 4), 1, 1, 1)``).
        kwargs: passed to the encoder's builder (for the UNETR ViT: ``img_size``, ``hidden_size``, ``mlp_dim``,
            ``num_heads``, ``num_layers``, ``qkv_bias``, ``dropout_rate``).

    Any input size works: the input is zero-padded at the end of each axis to a multiple of the output
    stride and the mask cropped back (MONAI's UNETR takes only its ``img_size``).
    """

    requires_divisible_input_shape = False
    _is_torch_scriptable = False
    _torch_script_refusal = "its input padding and the ViT's position-embedding resizing are Python-level"

    def __init__(
        self,
        encoder_name: str = "unetr_vit_b16",
        encoder_depth: int = 4,
        encoder_weights: str | None = None,
        feature_size: int = 16,
        decoder_use_norm: NormSpec = "instancenorm",
        conv_block: bool = True,
        res_block: bool = True,
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
        check_channels(feature_size, "feature_size", "UNETR")
        for flag, value in (("conv_block", conv_block), ("res_block", res_block)):
            if not isinstance(value, bool):
                raise ValueError(f"UNETR: {flag} must be True or False, got {value!r}.")
        self.encoder = build_encoder(
            "UNETR",
            encoder_name,
            in_channels=in_channels,
            depth=encoder_depth,
            weights=encoder_weights,
            spatial_dims=spatial_dims,
            strides=strides,
            single_scale_ok=True,
            **kwargs,
        )
        empty = [i for i, c in enumerate(self.encoder.out_channels) if c == 0]
        if empty:
            raise ValueError(
                f"UNETR merges a skip at every level, but the encoder {encoder_name!r} has no feature at level(s) "
                f"{empty} (0 channels: placeholders of a pyramid that starts at reduction "
                f"{self.encoder.reductions[empty[-1] + 1]}). Use an encoder with a feature at every level."
            )
        self.decoder = UNETRDecoder(
            self.encoder.out_channels,
            self.encoder.reductions,
            feature_size,
            single_scale=bool(getattr(self.encoder, "single_scale", False)),
            conv_block=conv_block,
            res_block=res_block,
            use_norm=decoder_use_norm,
            spatial_dims=spatial_dims,
        )
        self.segmentation_head = SegmentationHead(
            self.decoder.out_channels, classes, kernel_size=1, activation=activation, spatial_dims=spatial_dims
        )
        self.classification_head = build_classification_head(aux_params, self.encoder.out_channels[-1], spatial_dims)
        self.name = f"unetr-{encoder_name}"
        self.initialize()

    def _masks(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x, sizes = pad_to_multiple(x, self.output_stride)
        out = super()._masks(x)
        if isinstance(out, tuple):
            return crop_to(out[0], sizes), out[1]
        return crop_to(out, sizes)

    @classmethod
    def from_monai(cls, source: nn.Module | Mapping[str, torch.Tensor], **kwargs: Any) -> UNETR:
        """A UNETR with the weights of a MONAI ``UNETR`` (a model, or its state dict).

        The architecture is read from the state dict's shapes (input channels, classes, patch size, ``img_size``
        (a cubic token grid), hidden size, MLP width, blocks, qkv bias, ``feature_size``, ``conv_block``,
        ``res_block``, decoder norm) and, from a model, its attributes (heads, ``img_size``, dropout). A bare
        state dict does not hold the number of heads: ``hidden_size // 64`` is assumed (MONAI's 12 for 768) unless
        ``num_heads`` is given. ``kwargs`` override anything read. Keys are renamed by :data:`MONAI_KEY_MAP`,
        :data:`MONAI_DROPPED_KEYS` are dropped, and the rest loads strictly (a key missing on either side or a
        shape mismatch raises, naming them). Only ``proj_type="conv"`` (MONAI's default) is supported.
        """
        state = state_dict_of(source, "UNETR")
        if any(k.startswith("vit.patch_embedding.patch_embeddings.1.") for k in state):
            raise ValueError(
                "UNETR.from_monai: this checkpoint uses proj_type='perceptron' (a linear patch embedding); smp3d's "
                "UNETR has the conv patch embedding (proj_type='conv', MONAI's default) only."
            )
        config = _config_from_state(state)
        if isinstance(source, nn.Module):
            config.update(_config_from_module(source))
        config.update(kwargs)
        model = cls(**config)
        converted = convert_state_dict(state, MONAI_KEY_MAP, MONAI_DROPPED_KEYS, "UNETR")
        load_converted(model, converted, "UNETR")
        return model


def _need(state: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise KeyError(
            f"UNETR.from_monai: the state dict has no {key!r}; is it a MONAI UNETR's? (for a training checkpoint "
            f"pass checkpoint['state_dict'], keys without a 'module.' prefix)"
        )
    return state[key]


def _config_from_state(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    embed = _need(state, "vit.patch_embedding.patch_embeddings.weight")
    hidden, in_channels, *patch = embed.shape
    spatial_dims = len(patch)
    tokens = _need(state, "vit.patch_embedding.position_embeddings").shape[1]
    side = round(tokens ** (1 / spatial_dims))
    layers = {int(k.split(".")[2]) for k in state if k.startswith("vit.blocks.")}
    config: dict[str, Any] = {
        "encoder_name": "unetr_vit_b16",
        "in_channels": int(in_channels),
        "classes": int(_need(state, "out.conv.conv.weight").shape[0]),
        "spatial_dims": spatial_dims,
        "strides": (tuple(int(p) for p in patch), 1, 1, 1),
        "hidden_size": int(hidden),
        "mlp_dim": int(_need(state, "vit.blocks.0.mlp.linear1.weight").shape[0]),
        "num_heads": max(1, int(hidden) // 64),
        "num_layers": len(layers),
        "qkv_bias": "vit.blocks.0.attn.qkv.bias" in state,
        "feature_size": int(_need(state, "encoder1.layer.conv1.conv.weight").shape[0]),
        "conv_block": any(k.startswith("encoder2.blocks.0.1.") for k in state),
        "res_block": "decoder5.conv_block.conv3.conv.weight" in state,
        "decoder_use_norm": _norm_from_state(state, "encoder1.layer.norm1"),
    }
    if side**spatial_dims == tokens:  # a cubic grid; otherwise img_size must be given
        config["img_size"] = tuple(side * p for p in patch)
    return config


def _config_from_module(model: nn.Module) -> dict[str, Any]:
    attention = model.vit.blocks[0].attn
    config: dict[str, Any] = {
        "num_heads": int(attention.num_heads),
        "dropout_rate": float(attention.dropout_rate),
        "img_size": tuple(int(f) * int(p) for f, p in zip(model.feat_size, model.patch_size, strict=True)),
    }
    norm = model.encoder1.layer.norm1
    if isinstance(norm, nn.modules.batchnorm._BatchNorm):
        config["decoder_use_norm"] = "batchnorm"
    elif isinstance(norm, nn.modules.instancenorm._InstanceNorm):
        config["decoder_use_norm"] = {"type": "instancenorm", "affine": True} if norm.affine else "instancenorm"
    else:
        raise ValueError(
            f"UNETR.from_monai: the MONAI model's norm_name gives {type(norm).__name__}; smp3d's UNETR takes instance "
            f"or batch normalization (decoder_use_norm)."
        )
    return config
