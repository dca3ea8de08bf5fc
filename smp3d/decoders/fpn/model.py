"""FPN: a feature pyramid merged at the finest of its four levels."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.nn as nn

from ...base import SegmentationHead, SegmentationModel, build_classification_head, check_classes
from ...base.assembly import build_encoder, check_channels, check_encoder_depth, final_upsampling
from ...encoders.protocol import StridesArg
from .decoder import PYRAMID_LEVELS, FPNDecoder

__all__ = ["FPN"]


class FPN(SegmentationModel):
    """Feature Pyramid Network for segmentation (Lin et al., 2017, https://arxiv.org/abs/1612.03144;
    the "semantic FPN" head of Kirillov et al., 2019) with any registered encoder, in 2D or 3D.

    In 2D (``spatial_dims=2``) the arguments, defaults, state-dict layout and outputs are those of
    segmentation_models_pytorch 0.6's ``FPN``, except ``encoder_weights`` (default ``None``) and
    ``upsampling`` (see below).

    Args:
        encoder_name: a registered encoder (``smp3d.list_encoders()``) or a prefixed name.
        encoder_depth: number of encoder stages, 3..5. The pyramid uses the four deepest features
            (with ``encoder_depth=3`` the finest of them is the input itself).
        encoder_weights: ``None``, a pretrained tag, or a local ``.safetensors`` file/folder.
        decoder_pyramid_channels: channels of the pyramid levels.
        decoder_segmentation_channels: channels of the segmentation blocks; a multiple of 32
            (they use GroupNorm with 32 groups).
        decoder_merge_policy: ``"add"`` (sum the four maps) or ``"cat"`` (concatenate them).
        decoder_dropout: spatial (channel-wise) dropout rate after the merge.
        decoder_interpolation: mode of the top-down interpolation: ``"nearest"``, ``"nearest-exact"``,
            ``"area"``, ``"linear"`` (``"bilinear"``/``"trilinear"``) or ``"bicubic"`` (2D only).
        in_channels: channels of the input.
        classes: channels of the output mask.
        activation: applied to the mask: ``None``, ``"sigmoid"``, ``"softmax"``, ... or a callable.
        upsampling: final upsampling of the mask. ``None`` (default) upsamples back to the input size:
            per axis, the reduction of the finest pyramid level read from the encoder (in 2D with the
            default strides and ``encoder_depth=5`` this equals smp's default of 4, which is wrong for
            anisotropic strides or other depths). An int or a per-axis tuple is used as given, as in smp.
        aux_params: ``{"classes", "pooling", "dropout", "activation"}`` for a classification head on the
            deepest feature; the model then returns ``(masks, labels)``.
        spatial_dims: 3 for volumes ``(B, C, H, W, D)`` (default), 2 for images ``(B, C, H, W)``.
        strides: per-stage encoder strides, each an int or a per-axis tuple (anisotropic data).
        deep_supervision: add a 1x1 head per coarser decoder level; in training mode the model then
            returns ``[masks, coarser masks ...]`` (finest first), in eval mode only the masks (see
            ``deep_supervision_reductions`` and :class:`smp3d.losses.DeepSupervisionLoss`).
        deep_supervision_levels: masks returned in training mode, the full-resolution one included;
            ``None``: every decoder level but the deepest (as nnU-Net).
        kwargs: passed to the encoder's builder.

    Each top-down step and each upsampling of a segmentation block goes to the actual size of the
    next pyramid level, so per-axis and non-power-of-2 strides work; a segmentation block has one
    conv block per pyramid level it crosses, whatever the strides (smp's layout in 2D).

    Refused at construction (ValueError): ``encoder_depth`` below 3 (the pyramid needs four
    levels), ``decoder_segmentation_channels`` not a multiple of 32, an unknown merge policy or
    interpolation mode. Input sizes must be divisible by the encoder's total reduction, per axis.
    """

    requires_divisible_input_shape = True

    def __init__(
        self,
        encoder_name: str = "resnet34",
        encoder_depth: int = 5,
        encoder_weights: str | None = None,
        decoder_pyramid_channels: int = 256,
        decoder_segmentation_channels: int = 128,
        decoder_merge_policy: str = "add",
        decoder_dropout: float = 0.2,
        decoder_interpolation: str = "nearest",
        in_channels: int = 3,
        classes: int = 1,
        activation: str | Callable[..., nn.Module] | None = None,
        upsampling: int | Sequence[int] | None = None,
        aux_params: dict[str, Any] | None = None,
        spatial_dims: int = 3,
        strides: StridesArg = None,
        deep_supervision: bool = False,
        deep_supervision_levels: int | None = None,
        **kwargs: Any,
    ):
        super().__init__()
        check_encoder_depth(
            encoder_depth,
            range(PYRAMID_LEVELS - 1, 6),
            "FPN",
            f"Its pyramid has {PYRAMID_LEVELS} levels: the deepest {PYRAMID_LEVELS} features, counting the input.",
        )
        check_classes(classes)
        decoder_pyramid_channels = check_channels(decoder_pyramid_channels, "decoder_pyramid_channels", "FPN")
        decoder_segmentation_channels = check_channels(
            decoder_segmentation_channels, "decoder_segmentation_channels", "FPN"
        )
        self.encoder = build_encoder(
            "FPN",
            encoder_name,
            in_channels=in_channels,
            depth=encoder_depth,
            weights=encoder_weights,
            spatial_dims=spatial_dims,
            strides=strides,
            **kwargs,
        )
        self.decoder = FPNDecoder(
            encoder_channels=self.encoder.out_channels,
            reductions=self.encoder.reductions,
            pyramid_channels=decoder_pyramid_channels,
            segmentation_channels=decoder_segmentation_channels,
            dropout=decoder_dropout,
            merge_policy=decoder_merge_policy,
            interpolation=decoder_interpolation,
            spatial_dims=spatial_dims,
        )
        finest_level = len(self.encoder.out_channels) - PYRAMID_LEVELS
        self.segmentation_head = SegmentationHead(
            self.decoder.out_channels,
            classes,
            kernel_size=1,
            activation=activation,
            upsampling=final_upsampling(upsampling, self.encoder.reductions[finest_level], "FPN"),
            spatial_dims=spatial_dims,
        )
        self.classification_head = build_classification_head(aux_params, self.encoder.out_channels[-1], spatial_dims)
        self.name = f"fpn-{encoder_name}"
        self.build_deep_supervision(deep_supervision, deep_supervision_levels, classes, activation)
        self.initialize()
