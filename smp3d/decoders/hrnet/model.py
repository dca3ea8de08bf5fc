"""HRNet: the HRNetV2 segmentation head over any encoder's feature pyramid (an HRNet by default)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.nn as nn

from ...base import SegmentationHead, SegmentationModel, build_classification_head, check_classes
from ...base.assembly import build_encoder, check_channels, check_encoder_depth, final_upsampling
from ...encoders.protocol import StridesArg
from ...layers.blocks import NormSpec
from .decoder import HRNetDecoder

__all__ = ["HRNet"]

TRANSPOSED = "transposed"
#: Names of interpolation back to the input size (multilinear whatever ``spatial_dims``).
INTERPOLATED = ("bilinear", "linear", "trilinear", "interpolate")


class HRNet(SegmentationModel):
    """HRNetV2 segmentation (Sun et al., 2019, https://arxiv.org/abs/1904.04514; Wang et al., 2019,
    https://arxiv.org/abs/1908.07919) with any registered encoder, in 2D or 3D.

    The encoder features from the first level reduced at least 4 times (level 2 with the default
    strides; for an HRNet encoder its four parallel branches) up to the deepest are resized to that
    level's size, concatenated, fused by a 1x1 conv-norm-ReLU, classified by a 1x1 conv and brought
    back to the input size. smp 0.6 has no such model; the arguments follow its other architectures.

    Args:
        encoder_name: a registered encoder (``smp3d.list_encoders()``), ``"hrnet_w18"`` by default.
        encoder_depth: number of encoder stages, 1..5 (HRNet encoders have only 5).
        encoder_weights: ``None``, a pretrained tag, or a local ``.safetensors`` file/folder.
        decoder_channels: channels of the fused map.
        decoder_use_norm: normalization of the decoder blocks (``"batchnorm"``, ``False``, ...).
        in_channels: channels of the input.
        classes: channels of the output mask.
        activation: applied to the mask: ``None``, ``"sigmoid"``, ``"softmax"``, ... or a callable.
        upsampling: how the mask returns to the input size. ``"bilinear"`` (default; also ``"linear"``,
            ``"trilinear"``, ``"interpolate"``, or ``None``): multilinear interpolation of the logits by
            the per-axis reduction of the first level used. ``"transposed"``: learned, transposed
            convolutions x2 per step (x1 along axes already at full size), each halving the channels,
            before the classifier; that reduction must then be a power of 2 per axis. An int or a
            per-axis tuple: interpolation by that factor, as the ``upsampling`` of smp's models.
        aux_params: ``{"classes", "pooling", "dropout", "activation"}`` for a classification head on the
            deepest feature; the model then returns ``(masks, labels)``.
        spatial_dims: 3 for volumes ``(B, C, H, W, D)`` (default), 2 for images ``(B, C, H, W)``.
        strides: per-stage encoder strides, each an int or a per-axis tuple (anisotropic data).
        deep_supervision: add a 1x1 head per coarser decoder level; in training mode the model then
            returns ``[masks, coarser masks ...]`` (finest first), in eval mode only the masks (see
            ``deep_supervision_reductions`` and :class:`smp3d.losses.DeepSupervisionLoss`).
        deep_supervision_levels: masks returned in training mode, the full-resolution one included;
            ``None``: every decoder level but the deepest (as nnU-Net).
        kwargs: passed to the encoder's builder (e.g. ``feature_location=""`` for the raw branches
            of an HRNet encoder instead of timm's widened ones).

    Input sizes must be divisible by the encoder's total reduction, per axis.
    """

    requires_divisible_input_shape = True

    def __init__(
        self,
        encoder_name: str = "hrnet_w18",
        encoder_depth: int = 5,
        encoder_weights: str | None = None,
        decoder_channels: int = 256,
        decoder_use_norm: NormSpec = "batchnorm",
        in_channels: int = 3,
        classes: int = 1,
        activation: str | Callable[..., nn.Module] | None = None,
        upsampling: str | int | Sequence[int] | None = "bilinear",
        aux_params: dict[str, Any] | None = None,
        spatial_dims: int = 3,
        strides: StridesArg = None,
        deep_supervision: bool = False,
        deep_supervision_levels: int | None = None,
        **kwargs: Any,
    ):
        super().__init__()
        check_encoder_depth(encoder_depth, range(1, 6), "HRNet")
        check_classes(classes)
        decoder_channels = check_channels(decoder_channels, "decoder_channels", "HRNet")
        if isinstance(upsampling, str) and upsampling not in (TRANSPOSED, *INTERPOLATED):
            raise ValueError(
                f"HRNet: upsampling must be 'bilinear' (interpolation), 'transposed' (learned), None, a positive "
                f"int or a per-axis tuple, got {upsampling!r}."
            )
        self.encoder = build_encoder(
            "HRNet",
            encoder_name,
            in_channels=in_channels,
            depth=encoder_depth,
            weights=encoder_weights,
            spatial_dims=spatial_dims,
            strides=strides,
            **kwargs,
        )
        self.decoder = HRNetDecoder(
            encoder_channels=self.encoder.out_channels,
            reductions=self.encoder.reductions,
            decoder_channels=decoder_channels,
            use_norm=decoder_use_norm,
            learned_upsampling=upsampling == TRANSPOSED,
            spatial_dims=spatial_dims,
        )
        factor = None if isinstance(upsampling, str) else upsampling
        self.segmentation_head = SegmentationHead(
            self.decoder.out_channels,
            classes,
            kernel_size=1,
            activation=activation,
            upsampling=final_upsampling(factor, self.decoder.output_reduction, "HRNet"),
            spatial_dims=spatial_dims,
        )
        self.classification_head = build_classification_head(aux_params, self.encoder.out_channels[-1], spatial_dims)
        self.name = f"hrnet-{encoder_name}"
        self.build_deep_supervision(deep_supervision, deep_supervision_levels, classes, activation)
        self.initialize()
