"""UPerNet: pyramid pooling on the deepest feature plus a feature pyramid, fused at reduction 4."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.nn as nn

from ...base import SegmentationHead, SegmentationModel, build_classification_head, check_classes
from ...base.assembly import build_encoder, check_channels, check_encoder_depth, final_upsampling, pop_deprecated_norm
from ...encoders.protocol import StridesArg
from ...layers.blocks import NormSpec
from .decoder import FIRST_LEVEL, UPerNetDecoder

__all__ = ["UPerNet"]


class UPerNet(SegmentationModel):
    """UPerNet, the unified perceptual parsing network (Xiao et al., 2018,
    https://arxiv.org/abs/1807.10221), with any registered encoder, in 2D or 3D.

    In 2D (``spatial_dims=2``) the arguments, defaults, state-dict layout and outputs are those of
    segmentation_models_pytorch 0.6's ``UPerNet``, except ``encoder_weights`` (default ``None``) and
    ``upsampling`` (see below).

    Args:
        encoder_name: a registered encoder (``smp3d.list_encoders()``) or a prefixed name.
        encoder_depth: number of encoder stages, 3..5. The decoder uses the features from level 2
            on (reduction 4 and deeper with the default strides): the deepest goes through pyramid
            pooling, the others form the feature pyramid.
        encoder_weights: ``None``, a pretrained tag, or a local ``.safetensors`` file/folder.
        decoder_channels: channels of the pyramid pooling output, of every pyramid level and of the
            fused map.
        decoder_use_norm: normalization of the decoder convs: ``"batchnorm"``, ``"layernorm"`` (over
            channels), ``"identity"``, ``"inplace"``, a bool, or ``{"type": ..., **kwargs}`` (the conv
            fusing the pyramid pooling branches always uses batch norm, as in smp). Instance norm is
            refused: the 1-cell pooling branch has a single value per channel to normalize.
        in_channels: channels of the input.
        classes: channels of the output mask.
        activation: applied to the mask: ``None``, ``"sigmoid"``, ``"softmax"``, ... or a callable.
        upsampling: final upsampling of the mask. ``None`` (default) upsamples back to the input size:
            per axis, the reduction of encoder level 2 (the decoder's output) read from the encoder. In
            2D with the default strides this equals smp's default of 4, which is wrong for anisotropic
            or stride-1 stages. An int or a per-axis tuple is used as given, as in smp.
        aux_params: ``{"classes", "pooling", "dropout", "activation"}`` for a classification head on the
            deepest feature; the model then returns ``(masks, labels)``.
        spatial_dims: 3 for volumes ``(B, C, H, W, D)`` (default), 2 for images ``(B, C, H, W)``.
        strides: per-stage encoder strides, each an int or a per-axis tuple (anisotropic data).
        deep_supervision: add a 1x1 head per coarser decoder level; in training mode the model then
            returns ``[masks, coarser masks ...]`` (finest first), in eval mode only the masks (see
            ``deep_supervision_reductions`` and :class:`smp3d.losses.DeepSupervisionLoss`).
        deep_supervision_levels: masks returned in training mode, the full-resolution one included;
            ``None``: every decoder level but the deepest (as nnU-Net).
        kwargs: passed to the encoder's builder (smp's deprecated ``decoder_use_batchnorm`` is
            accepted with a warning and used as ``decoder_use_norm``).

    The pooling grids (1, 2, 3 and 6 cells) apply to every axis; an axis shorter than 6 cells is
    simply repeated by the adaptive pool. Every resize goes to the actual size of the next level.
    The batch norm after the 1-cell pooling branch (smp's layout) has no batch statistics for a
    batch of one sample, where smp raises in training; here that branch then normalizes with its
    running statistics (see :class:`~smp3d.decoders.upernet.decoder.SingleCellBatchNorm`), so
    batch-1 training, common with large volumes, works. Outputs in eval mode are unchanged.

    Refused at construction (ValueError): ``encoder_depth`` below 3 (the decoder needs at least
    two levels from level 2 on), ``decoder_channels`` not a positive int, an unknown norm, instance
    norm (undefined on the 1-cell pooling branch; smp fails there too, at initialization or forward).
    Input sizes must be divisible by the encoder's total reduction, per axis.
    """

    requires_divisible_input_shape = True

    def __init__(
        self,
        encoder_name: str = "resnet34",
        encoder_depth: int = 5,
        encoder_weights: str | None = None,
        decoder_channels: int = 256,
        decoder_use_norm: NormSpec = "batchnorm",
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
            range(FIRST_LEVEL + 1, 6),
            "UPerNet",
            f"It uses the features from level {FIRST_LEVEL} on and needs at least two of them "
            "(one for pyramid pooling, one for the feature pyramid).",
        )
        decoder_use_norm = pop_deprecated_norm(kwargs, decoder_use_norm)
        check_classes(classes)
        decoder_channels = check_channels(decoder_channels, "decoder_channels", "UPerNet")
        self.encoder = build_encoder(
            "UPerNet",
            encoder_name,
            in_channels=in_channels,
            depth=encoder_depth,
            weights=encoder_weights,
            spatial_dims=spatial_dims,
            strides=strides,
            **kwargs,
        )
        self.decoder = UPerNetDecoder(
            encoder_channels=self.encoder.out_channels,
            reductions=self.encoder.reductions,
            decoder_channels=decoder_channels,
            use_norm=decoder_use_norm,
            spatial_dims=spatial_dims,
        )
        self.segmentation_head = SegmentationHead(
            decoder_channels,
            classes,
            kernel_size=1,
            activation=activation,
            upsampling=final_upsampling(upsampling, self.encoder.reductions[FIRST_LEVEL], "UPerNet"),
            spatial_dims=spatial_dims,
        )
        self.classification_head = build_classification_head(aux_params, self.encoder.out_channels[-1], spatial_dims)
        self.name = f"upernet-{encoder_name}"
        self.build_deep_supervision(deep_supervision, deep_supervision_levels, classes, activation)
        self.initialize()
