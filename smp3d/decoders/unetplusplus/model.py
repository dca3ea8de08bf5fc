"""UnetPlusPlus: U-Net with nested, densely connected skip pathways."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.nn as nn

from ...base import SegmentationHead, SegmentationModel, build_classification_head, check_classes
from ...base.assembly import build_encoder, check_decoder_channels, check_encoder_depth, pop_deprecated_norm
from ...encoders.protocol import StridesArg
from ...layers.blocks import NormSpec
from .decoder import UnetPlusPlusDecoder

__all__ = ["UnetPlusPlus"]


class UnetPlusPlus(SegmentationModel):
    """U-Net++ (Zhou et al., 2018, https://arxiv.org/abs/1807.10165) with any registered encoder, in 2D or 3D.

    The skip connections of U-Net become a grid of decoder nodes: every skip is decoded again
    from each deeper level and all nodes at one resolution are concatenated (dense skips), which
    narrows the semantic gap between encoder and decoder features at the cost of more compute.

    In 2D (``spatial_dims=2``) the arguments, defaults, state-dict layout and outputs are those
    of segmentation_models_pytorch 0.6's ``UnetPlusPlus``, except ``encoder_weights`` defaulting
    to ``None``. Like smp, an encoder whose deepest feature is a bare pooling output
    (``last_feature_pooled``, e.g. VGG) gets a ``decoder.center`` block that smp builds but never
    applies; we keep it unapplied so that smp checkpoints give the same outputs.

    Args:
        encoder_name: a registered encoder (``smp3d.list_encoders()``) or a prefixed name.
        encoder_depth: number of encoder stages, 2..5; also the number of decoder columns.
        encoder_weights: ``None``, a pretrained tag, or a local ``.safetensors`` file/folder.
        decoder_use_norm: normalization of the decoder convs: ``"batchnorm"``, ``"instancenorm"``,
            ``"layernorm"``, ``"identity"``, ``"inplace"``, a bool, or ``{"type": ..., **kwargs}``.
        decoder_channels: output channels of the main decoder path, deepest first (``encoder_depth`` items).
        decoder_attention_type: ``None`` or ``"scse"``.
        decoder_interpolation: ``"nearest"``, ``"nearest-exact"``, ``"area"``, ``"linear"``
            (``"bilinear"``/``"trilinear"``) or ``"bicubic"`` (2D only).
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

    Refused at construction (ValueError): ``encoder_depth=1`` (the grid needs at least one skip
    connection to nest; smp fails on it too), a ``decoder_channels`` length other than
    ``encoder_depth``, and ``decoder_interpolation="transposed"``. Encoders are not refused by
    name (smp refuses MiT): a 0-channel placeholder feature gives empty grid nodes, and a pyramid
    whose reductions grow by other factors than 2 is upsampled to each skip's actual size.

    Input sizes need not be divisible by the total reduction: each node interpolates to its skip
    connection's size.
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
        check_encoder_depth(
            encoder_depth,
            range(2, 6),
            "UnetPlusPlus",
            "Its nested skip grid needs at least one skip connection, i.e. two encoder stages.",
        )
        self.encoder = build_encoder(
            "UnetPlusPlus",
            encoder_name,
            in_channels=in_channels,
            depth=encoder_depth,
            weights=encoder_weights,
            spatial_dims=spatial_dims,
            strides=strides,
            **kwargs,
        )
        decoder_channels = check_decoder_channels(decoder_channels, len(self.encoder.out_channels) - 1, "UnetPlusPlus")
        self.decoder = UnetPlusPlusDecoder(
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
        self.name = f"unetplusplus-{encoder_name}"
        self.build_deep_supervision(deep_supervision, deep_supervision_levels, classes, activation)
        self.initialize()
