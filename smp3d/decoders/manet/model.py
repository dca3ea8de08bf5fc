"""MAnet: multi-scale attention network."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.nn as nn

from ...base import SegmentationHead, SegmentationModel, build_classification_head, check_classes
from ...base.assembly import build_encoder, check_channels, check_decoder_channels, pop_deprecated_norm
from ...encoders.protocol import StridesArg
from ...layers.blocks import NormSpec
from .decoder import MAnetDecoder

__all__ = ["MAnet"]


class MAnet(SegmentationModel):
    """MA-Net (Fan et al., 2020, "MA-Net: A Multi-Scale Attention Network for Liver and Tumor
    Segmentation", IEEE Access 8, https://doi.org/10.1109/ACCESS.2020.3025372) with any
    registered encoder, in 2D or 3D.

    A position-wise attention block (PAB) captures global spatial dependencies on the deepest
    feature; multi-scale fusion attention blocks (MFAB) weight the channels of the decoder path
    with squeeze-and-excitation of both the decoder map and the skip connection.

    In 2D (``spatial_dims=2``) the arguments, defaults, state-dict layout and outputs are those
    of segmentation_models_pytorch 0.6's ``MAnet``, except ``encoder_weights`` defaulting to ``None``.

    Args:
        encoder_name: a registered encoder (``smp3d.list_encoders()``) or a prefixed name.
        encoder_depth: number of encoder stages, 1..5; also the number of decoder blocks.
        encoder_weights: ``None``, a pretrained tag, or a local ``.safetensors`` file/folder.
        decoder_use_norm: normalization of the decoder convs: ``"batchnorm"``, ``"instancenorm"``,
            ``"layernorm"``, ``"identity"``, ``"inplace"``, a bool, or ``{"type": ..., **kwargs}``.
        decoder_channels: output channels of the decoder blocks, deepest first (``encoder_depth`` items).
        decoder_pab_channels: channels of the PAB's queries and keys.
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

    The PAB's memory grows with the square of the number of positions of the deepest feature
    (``prod(input size / output stride)``): keep the total reduction high (e.g. 32 per axis) for
    large volumes. Refused at construction (ValueError): a ``decoder_channels`` length other than
    ``encoder_depth``, ``decoder_interpolation="transposed"``, a non-positive ``decoder_pab_channels``.

    Input sizes need not be divisible by the total reduction: each block interpolates to its skip
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
        decoder_pab_channels: int = 64,
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
        decoder_pab_channels = check_channels(decoder_pab_channels, "decoder_pab_channels", "MAnet")
        self.encoder = build_encoder(
            "MAnet",
            encoder_name,
            in_channels=in_channels,
            depth=encoder_depth,
            weights=encoder_weights,
            spatial_dims=spatial_dims,
            strides=strides,
            **kwargs,
        )
        decoder_channels = check_decoder_channels(decoder_channels, len(self.encoder.out_channels) - 1, "MAnet")
        self.decoder = MAnetDecoder(
            encoder_channels=self.encoder.out_channels,
            reductions=self.encoder.reductions,
            decoder_channels=decoder_channels,
            use_norm=decoder_use_norm,
            pab_channels=decoder_pab_channels,
            interpolation=decoder_interpolation,
            spatial_dims=spatial_dims,
        )
        self.segmentation_head = SegmentationHead(
            decoder_channels[-1], classes, kernel_size=3, activation=activation, spatial_dims=spatial_dims
        )
        self.classification_head = build_classification_head(aux_params, self.encoder.out_channels[-1], spatial_dims)
        self.name = f"manet-{encoder_name}"
        self.build_deep_supervision(deep_supervision, deep_supervision_levels, classes, activation)
        self.initialize()
