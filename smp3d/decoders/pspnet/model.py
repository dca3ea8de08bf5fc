"""PSPNet: pyramid pooling on the deepest feature of a shallow encoder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.nn as nn

from ...base import SegmentationHead, SegmentationModel, build_classification_head, check_classes
from ...base.assembly import build_encoder, check_channels, final_upsampling, pop_deprecated_norm
from ...encoders.protocol import StridesArg
from ...layers.blocks import NormSpec
from .decoder import PSPDecoder

__all__ = ["PSPNet"]


class PSPNet(SegmentationModel):
    """Pyramid Scene Parsing Network (Zhao et al., 2017, https://arxiv.org/abs/1612.01105) with any
    registered encoder, in 2D or 3D.

    It decodes only the deepest feature (no skip connections): good global context, coarse
    boundaries. In 2D (``spatial_dims=2``) the arguments, defaults, state-dict layout and outputs
    are those of segmentation_models_pytorch 0.6's ``PSPNet``, except ``encoder_weights`` (default
    ``None``) and ``upsampling`` (see below).

    Args:
        encoder_name: a registered encoder (``smp3d.list_encoders()``) or a prefixed name.
        encoder_weights: ``None``, a pretrained tag, or a local ``.safetensors`` file/folder.
        encoder_depth: number of encoder stages (default 3); the pyramid pools the deepest feature.
        psp_out_channels: channels after the pyramid pooling module.
        decoder_use_norm: normalization of the decoder convs: ``"batchnorm"``, ``"instancenorm"``,
            ``"layernorm"``, ``"identity"``, ``"inplace"``, a bool, or ``{"type": ..., **kwargs}``
            (``psp_use_batchnorm`` is its deprecated name). The 1-cell branch never has one.
        psp_dropout: spatial (channel-wise) dropout rate after the pyramid pooling module.
        in_channels: channels of the input.
        classes: channels of the output mask.
        activation: applied to the mask: ``None``, ``"sigmoid"``, ``"softmax"``, ... or a callable.
        upsampling: final upsampling of the mask. ``None`` (default) upsamples back to the input size:
            per axis, the reduction of the deepest feature read from the encoder (in 2D with the default
            strides and ``encoder_depth=3`` this equals smp's default of 8, which is wrong for other depths
            or anisotropic strides). An int or a per-axis tuple is used as given, as in smp.
        aux_params: ``{"classes", "pooling", "dropout", "activation"}`` for a classification head on the
            deepest feature; the model then returns ``(masks, labels)``. ``None`` or ``{}``: no head
            (as in smp).
        spatial_dims: 3 for volumes ``(B, C, H, W, D)`` (default), 2 for images ``(B, C, H, W)``.
        strides: per-stage encoder strides, each an int or a per-axis tuple (anisotropic data).
        kwargs: passed to the encoder's builder.

    The pooling grids have 1, 2, 3 and 6 cells per axis. An axis of the deepest feature shorter
    than a grid (e.g. 2 slices) is fine: adaptive pooling then repeats voxels, and along that axis
    the branch sees the feature voxel by voxel (see :mod:`smp3d.decoders.pspnet.decoder`).

    Input sizes must be divisible by the encoder's total reduction, per axis. Refused at
    construction (ValueError): a deepest feature with fewer than 4 channels (one share per branch).
    """

    requires_divisible_input_shape = True

    def __init__(
        self,
        encoder_name: str = "resnet34",
        encoder_weights: str | None = None,
        encoder_depth: int = 3,
        psp_out_channels: int = 512,
        decoder_use_norm: NormSpec = "batchnorm",
        psp_dropout: float = 0.2,
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
        decoder_use_norm = pop_deprecated_norm(kwargs, decoder_use_norm, "psp_use_batchnorm")
        check_classes(classes)
        psp_out_channels = check_channels(psp_out_channels, "psp_out_channels", "PSPNet")
        self.encoder = build_encoder(
            "PSPNet",
            encoder_name,
            in_channels=in_channels,
            depth=encoder_depth,
            weights=encoder_weights,
            spatial_dims=spatial_dims,
            strides=strides,
            **kwargs,
        )
        self.decoder = PSPDecoder(
            encoder_channels=self.encoder.out_channels,
            use_norm=decoder_use_norm,
            out_channels=psp_out_channels,
            dropout=psp_dropout,
            spatial_dims=spatial_dims,
        )
        self.segmentation_head = SegmentationHead(
            psp_out_channels,
            classes,
            kernel_size=3,
            activation=activation,
            upsampling=final_upsampling(upsampling, self.encoder.reductions[-1], "PSPNet"),
            spatial_dims=spatial_dims,
        )
        self.classification_head = build_classification_head(
            aux_params or None, self.encoder.out_channels[-1], spatial_dims
        )
        self.name = f"psp-{encoder_name}"
        self.initialize()
