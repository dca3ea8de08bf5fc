"""PAN: Pyramid Attention Network on a dilated encoder."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch.nn as nn

from ...base import SegmentationHead, SegmentationModel, build_classification_head, check_classes
from ...base.assembly import build_encoder, check_channels, check_encoder_depth, final_upsampling
from ...encoders.protocol import StridesArg
from .decoder import PANDecoder

__all__ = ["PAN"]


class PAN(SegmentationModel):
    """Pyramid Attention Network (Li et al., 2018, https://arxiv.org/abs/1805.10180) with any
    registered encoder, in 2D or 3D.

    In 2D (``spatial_dims=2``) the arguments, defaults, state-dict layout and outputs are those of
    segmentation_models_pytorch 0.6's ``PAN``, except ``encoder_weights`` (default ``None``) and
    ``upsampling`` (see below).

    Args:
        encoder_name: a registered encoder (``smp3d.list_encoders()``) or a prefixed name.
        encoder_depth: number of encoder stages, 3..5: Feature Pyramid Attention on the deepest
            feature, a Global Attention Upsample block for each level from ``encoder_depth - 1``
            down to level 2.
        encoder_weights: ``None``, a pretrained tag, or a local ``.safetensors`` file/folder.
        encoder_output_stride: the encoder's deepest strides become dilation until its total
            reduction is at most this, per axis (an int or a per-axis tuple; smp allows 16 or 32,
            which give smp's results in 2D). Axes already at or below it are left alone.
        decoder_channels: channels of every decoder block.
        decoder_interpolation: resize mode of the Global Attention Upsample blocks: ``"bilinear"``
            (``"linear"``/``"trilinear"``, with aligned corners), ``"nearest"``, ``"nearest-exact"``,
            ``"area"`` or ``"bicubic"`` (2D only). ``upscale_mode`` is its deprecated name.
        in_channels: channels of the input.
        classes: channels of the output mask.
        activation: applied to the mask: ``None``, ``"sigmoid"``, ``"softmax"``, ... or a callable.
        upsampling: final upsampling of the mask. ``None`` (default) upsamples back to the input size:
            per axis, the reduction of encoder feature 2 (in 2D with the default strides this equals
            smp's default of 4, which is wrong for anisotropic strides). An int or a per-axis tuple is
            used as given, as in smp.
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

    Input size: divisible by the (dilated) encoder's total reduction, per axis; any size above it
    works. smp's Feature Pyramid Attention halves the deepest feature three times and fails below
    8 voxels per axis (inputs below 128 pixels at output stride 16); here an axis stops halving at
    1 voxel, so 1 voxel per axis of the deepest feature is the minimum (results equal smp's
    wherever smp runs). Training needs batches of at least 2: the global branches apply BatchNorm
    to one value per channel and sample, as in smp.

    Refused at construction (ValueError): ``encoder_depth`` below 3; an ``encoder_output_stride``
    the encoder cannot reach (it lacks the ``make_dilated`` hook, or the target is not one of its
    per-axis reductions); an unknown interpolation mode.
    """

    requires_divisible_input_shape = True

    def __init__(
        self,
        encoder_name: str = "resnet34",
        encoder_depth: int = 5,
        encoder_weights: str | None = None,
        encoder_output_stride: int | Sequence[int] = 16,
        decoder_channels: int = 32,
        decoder_interpolation: str = "bilinear",
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
            range(PANDecoder.OUTPUT_LEVEL + 1, 6),
            "PAN",
            "It decodes down to encoder feature 2 and needs a deeper feature for its pyramid attention.",
        )
        check_classes(classes)
        decoder_channels = check_channels(decoder_channels, "decoder_channels", "PAN")
        upscale_mode = kwargs.pop("upscale_mode", None)
        if upscale_mode is not None:
            warnings.warn("upscale_mode is deprecated; use decoder_interpolation.", DeprecationWarning, stacklevel=2)
            decoder_interpolation = upscale_mode
        self.encoder = build_encoder(
            "PAN",
            encoder_name,
            in_channels=in_channels,
            depth=encoder_depth,
            weights=encoder_weights,
            spatial_dims=spatial_dims,
            strides=strides,
            output_stride=encoder_output_stride,
            **kwargs,
        )
        self.decoder = PANDecoder(
            encoder_channels=self.encoder.out_channels,
            reductions=self.encoder.reductions,
            decoder_channels=decoder_channels,
            interpolation=decoder_interpolation,
            spatial_dims=spatial_dims,
        )
        self.segmentation_head = SegmentationHead(
            decoder_channels,
            classes,
            kernel_size=3,
            activation=activation,
            upsampling=final_upsampling(upsampling, self.encoder.reductions[PANDecoder.OUTPUT_LEVEL], "PAN"),
            spatial_dims=spatial_dims,
        )
        self.classification_head = build_classification_head(aux_params, self.encoder.out_channels[-1], spatial_dims)
        self.name = f"pan-{encoder_name}"
        self.build_deep_supervision(deep_supervision, deep_supervision_levels, classes, activation)
        self.initialize()
