"""Segformer: the all-MLP decoder of SegFormer over any encoder's feature pyramid."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.nn as nn

from ...base import SegmentationHead, SegmentationModel, build_classification_head, check_classes
from ...base.assembly import build_encoder, check_channels, check_encoder_depth, final_upsampling
from ...encoders.protocol import StridesArg
from .decoder import TARGET_LEVEL, SegformerDecoder

__all__ = ["Segformer"]


class Segformer(SegmentationModel):
    """Segformer (Xie et al., 2021, https://arxiv.org/abs/2105.15203): a light all-MLP decoder,
    with any registered encoder (a MiT transformer as in the paper, or a CNN), in 2D or 3D.

    In 2D (``spatial_dims=2``) the arguments, defaults, state-dict layout and outputs are those of
    segmentation_models_pytorch 0.6's ``Segformer``, except ``encoder_weights`` (default ``None``) and
    ``upsampling`` (see below).

    Args:
        encoder_name: a registered encoder (``smp3d.list_encoders()``) or a prefixed name.
        encoder_depth: number of encoder stages, 3..5. Every feature from level 1 on is used
            (a 0-channel placeholder feature is skipped).
        encoder_weights: ``None``, a pretrained tag, or a local ``.safetensors`` file/folder.
        decoder_segmentation_channels: channels of the per-feature linear projections and of the fused map.
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
        kwargs: passed to the encoder's builder.

    The projections are resized to the actual size of encoder level 2. smp resizes to a quarter of
    the input size instead: the same size for inputs divisible by the total reduction with the
    default strides, but only level 2's size stays right with per-axis or stride-1 stages. Input
    sizes must be divisible by the encoder's total reduction, per axis.

    Refused at construction (ValueError): ``encoder_depth`` below 3 (the decoder's output is at
    encoder level 2 and fuses at least that level and a deeper one), ``decoder_segmentation_channels``
    not a positive int.
    """

    requires_divisible_input_shape = True

    def __init__(
        self,
        encoder_name: str = "resnet34",
        encoder_depth: int = 5,
        encoder_weights: str | None = None,
        decoder_segmentation_channels: int = 256,
        in_channels: int = 3,
        classes: int = 1,
        activation: str | Callable[..., nn.Module] | None = None,
        upsampling: int | Sequence[int] | None = None,
        aux_params: dict[str, Any] | None = None,
        spatial_dims: int = 3,
        strides: StridesArg = None,
        **kwargs: Any,
    ):
        super().__init__()
        check_encoder_depth(
            encoder_depth,
            range(TARGET_LEVEL + 1, 6),
            "Segformer",
            f"Its output is at encoder level {TARGET_LEVEL} and fuses it with at least one deeper level.",
        )
        check_classes(classes)
        decoder_segmentation_channels = check_channels(
            decoder_segmentation_channels, "decoder_segmentation_channels", "Segformer"
        )
        self.encoder = build_encoder(
            "Segformer",
            encoder_name,
            in_channels=in_channels,
            depth=encoder_depth,
            weights=encoder_weights,
            spatial_dims=spatial_dims,
            strides=strides,
            **kwargs,
        )
        self.decoder = SegformerDecoder(
            encoder_channels=self.encoder.out_channels,
            segmentation_channels=decoder_segmentation_channels,
            spatial_dims=spatial_dims,
        )
        self.segmentation_head = SegmentationHead(
            decoder_segmentation_channels,
            classes,
            kernel_size=1,
            activation=activation,
            upsampling=final_upsampling(upsampling, self.encoder.reductions[TARGET_LEVEL], "Segformer"),
            spatial_dims=spatial_dims,
        )
        self.classification_head = build_classification_head(aux_params, self.encoder.out_channels[-1], spatial_dims)
        self.name = f"segformer-{encoder_name}"
        self.initialize()
