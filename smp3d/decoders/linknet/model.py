"""Linknet: a light decoder that adds (rather than concatenates) the encoder's skip connections."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn

from ...base import SegmentationHead, SegmentationModel, build_classification_head, check_classes
from ...base.assembly import build_encoder, pop_deprecated_norm
from ...encoders.protocol import StridesArg
from ...layers.blocks import NormSpec
from .decoder import LinknetDecoder

__all__ = ["Linknet"]

PREFINAL_CHANNELS = 32


class Linknet(SegmentationModel):
    """LinkNet (Chaurasia and Culurciello, 2017, https://arxiv.org/abs/1707.03718) with any
    registered encoder, in 2D or 3D.

    Every decoder block upsamples with a transposed convolution and adds the encoder feature of
    its level, which keeps the decoder small and fast. The upsampling factor of a block is the
    per-axis ratio of the encoder's reductions between two levels (kernel ``2r``, stride ``r``,
    padding ``r // 2`` for an even ratio ``r`` -- smp's kernel 4, stride 2, padding 1 for ``r = 2`` --,
    kernel ``2r - 1`` for an odd one, and no upsampling along an axis whose ratio is 1), so
    anisotropic strides work. Like smp, it uses 4 skip connections (the original network 3).

    In 2D (``spatial_dims=2``) the arguments, defaults, state-dict layout and outputs are those
    of segmentation_models_pytorch 0.6's ``Linknet``, except ``encoder_weights`` defaulting to ``None``.

    Args:
        encoder_name: a registered encoder (``smp3d.list_encoders()``) or a prefixed name.
        encoder_depth: number of encoder stages, 1..5; also the number of decoder blocks.
        encoder_weights: ``None``, a pretrained tag, or a local ``.safetensors`` file/folder.
        decoder_use_norm: normalization of the decoder convs: ``"batchnorm"``, ``"instancenorm"``,
            ``"layernorm"``, ``"identity"``, ``"inplace"``, a bool, or ``{"type": ..., **kwargs}``.
        in_channels: channels of the input.
        classes: channels of the output mask.
        activation: applied to the mask: ``None``, ``"sigmoid"``, ``"softmax"``, ... or a callable.
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

    Encoders are not refused by name (smp refuses MiT): a 0-channel placeholder feature is simply
    not added, and any per-axis ratio between levels is upsampled exactly. Refused at construction
    (ValueError): an encoder feature with fewer than 4 channels feeding a block (each block
    divides its input channels by 4).

    The transposed convolutions multiply sizes exactly, so input sizes must be divisible by the
    encoder's total reduction (``model.output_stride``, per axis); the model says so otherwise.
    """

    requires_divisible_input_shape = True

    def __init__(
        self,
        encoder_name: str = "resnet34",
        encoder_depth: int = 5,
        encoder_weights: str | None = None,
        decoder_use_norm: NormSpec = "batchnorm",
        in_channels: int = 3,
        classes: int = 1,
        activation: str | Callable[..., nn.Module] | None = None,
        aux_params: dict[str, Any] | None = None,
        spatial_dims: int = 3,
        strides: StridesArg = None,
        deep_supervision: bool = False,
        deep_supervision_levels: int | None = None,
        **kwargs: Any,
    ):
        super().__init__()
        decoder_use_norm = pop_deprecated_norm(kwargs, decoder_use_norm)
        check_classes(classes)
        self.encoder = build_encoder(
            "Linknet",
            encoder_name,
            in_channels=in_channels,
            depth=encoder_depth,
            weights=encoder_weights,
            spatial_dims=spatial_dims,
            strides=strides,
            **kwargs,
        )
        self.decoder = LinknetDecoder(
            encoder_channels=self.encoder.out_channels,
            reductions=self.encoder.reductions,
            prefinal_channels=PREFINAL_CHANNELS,
            use_norm=decoder_use_norm,
            spatial_dims=spatial_dims,
        )
        self.segmentation_head = SegmentationHead(
            PREFINAL_CHANNELS, classes, kernel_size=1, activation=activation, spatial_dims=spatial_dims
        )
        self.classification_head = build_classification_head(aux_params, self.encoder.out_channels[-1], spatial_dims)
        self.name = f"link-{encoder_name}"
        self.build_deep_supervision(deep_supervision, deep_supervision_levels, classes, activation)
        self.initialize()
