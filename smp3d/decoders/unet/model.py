"""Unet: the encoder's feature pyramid decoded with skip connections."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.nn as nn

from ...base import SegmentationHead, SegmentationModel, build_classification_head, check_classes
from ...base.assembly import build_encoder, check_decoder_channels, pop_deprecated_norm
from ...encoders.protocol import StridesArg
from ...layers.blocks import NormSpec
from .decoder import TRANSPOSED, UnetDecoder

__all__ = ["Unet"]


class Unet(SegmentationModel):
    """U-Net (Ronneberger et al., 2015) with any registered encoder, in 2D or 3D.

    In 2D (``spatial_dims=2``) the arguments, defaults, state-dict layout and outputs are those
    of segmentation_models_pytorch 0.6's ``Unet``, except ``encoder_weights`` defaulting to
    ``None``.

    Args:
        encoder_name: a registered encoder (``smp3d.list_encoders()``) or a prefixed name.
        encoder_depth: number of encoder stages, 1..5; also the number of decoder blocks.
        encoder_weights: ``None``, a pretrained tag, or a local ``.safetensors`` file/folder.
        decoder_use_norm: normalization of the decoder convs: ``"batchnorm"``, ``"instancenorm"``,
            ``"layernorm"``, ``"identity"``, ``"inplace"``, a bool, or ``{"type": ..., **kwargs}``.
        decoder_channels: output channels of the decoder blocks, deepest first (``encoder_depth`` items).
        decoder_attention_type: ``None`` or ``"scse"``.
        decoder_interpolation: ``"nearest"``, ``"nearest-exact"``, ``"area"``, ``"linear"``
            (``"bilinear"``/``"trilinear"``), ``"bicubic"`` (2D only), or ``"transposed"`` for a
            learned transposed convolution (then input sizes must be divisible by ``output_stride``).
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

    Input sizes need not be divisible by the total reduction: each block interpolates to its
    skip connection's size (except with ``decoder_interpolation="transposed"``).
    """

    requires_divisible_input_shape = False

    def __init__(
        self,
        encoder_name: str = "resnet34",
        encoder_depth: int = 5,
        encoder_weights: str | None = None,
        decoder_use_norm: NormSpec = "batchnorm",
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        decoder_attention_type: str | None = None,
        decoder_interpolation: str = "nearest",
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
            "Unet",
            encoder_name,
            in_channels=in_channels,
            depth=encoder_depth,
            weights=encoder_weights,
            spatial_dims=spatial_dims,
            strides=strides,
            **kwargs,
        )
        decoder_channels = check_decoder_channels(decoder_channels, len(self.encoder.out_channels) - 1, "Unet")
        self.decoder = UnetDecoder(
            encoder_channels=self.encoder.out_channels,
            reductions=self.encoder.reductions,
            decoder_channels=decoder_channels,
            use_norm=decoder_use_norm,
            attention_type=decoder_attention_type,
            interpolation=decoder_interpolation,
            spatial_dims=spatial_dims,
            add_center_block=getattr(self.encoder, "last_feature_pooled", False),
        )
        self.segmentation_head = SegmentationHead(
            decoder_channels[-1], classes, kernel_size=3, activation=activation, spatial_dims=spatial_dims
        )
        self.classification_head = build_classification_head(aux_params, self.encoder.out_channels[-1], spatial_dims)
        # A transposed convolution upsamples by exact ratios, so sizes must divide evenly.
        self.requires_divisible_input_shape = decoder_interpolation == TRANSPOSED
        self.name = f"u-{encoder_name}"
        self.build_deep_supervision(deep_supervision, deep_supervision_levels, classes, activation)
        self.initialize()
