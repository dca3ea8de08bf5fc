"""NNUNet: any encoder with nnU-Net's decoder and its deep-supervision heads."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

from ...base import SegmentationHead, SegmentationModel, build_classification_head, check_classes
from ...base import initialization as init
from ...base.assembly import build_encoder
from ...base.model import _skip_checks
from ...encoders.protocol import StridesArg
from ...layers import conv
from .decoder import NNUNetDecoder

__all__ = ["NNUNet"]


class NNUNet(SegmentationModel):
    """nnU-Net's U-Net (Isensee et al., Nature Methods 2021): an encoder, nnU-Net's decoder
    (:class:`~smp3d.decoders.nnunet.NNUNetDecoder`) and 1x1 output heads, in 2D or 3D.

    With ``encoder_name="resenc_m"``/``"resenc_l"``/``"resenc_xl"`` (nnU-Net's ``ResidualEncoderUNet``,
    ``decoder_convs_per_block=1``) or ``"plain_nnunet"`` (its ``PlainConvUNet``, 2 convs per block) and
    the plan's ``encoder_depth``, ``strides`` and ``kernel_sizes``, the network is nnU-Net's, and
    :func:`smp3d.from_nnunet` loads nnU-Net's weights into it. Any other encoder works too.

    Args:
        encoder_name: a registered encoder (``smp3d.list_encoders()``).
        encoder_depth: number of encoder stages (nnU-Net's ``n_stages``; its 3d_fullres plans often use 6).
        encoder_weights: ``None``, a pretrained tag, or a local ``.safetensors`` file/folder.
        decoder_kernel_sizes: kernel of each encoder stage, finest first; ``None`` takes the encoder's
            ``kernel_sizes`` attribute when it has one (nnU-Net's encoders do), else 3.
        decoder_convs_per_block: conv units per decoder block, an int or one per block (deepest first).
        decoder_conv_bias: biases on the decoder's convolutions (nnU-Net: True).
        in_channels: channels of the input (as in :class:`smp3d.Unet`).
        classes: channels of the output mask.
        activation: applied to the mask (``None``, a name such as ``"softmax"``, or a callable).
        aux_params: options of the optional classification head, as in :class:`smp3d.Unet`.
        spatial_dims: 2 for images ``(B, C, H, W)``, 3 for volumes ``(B, C, H, W, D)``.
        strides: per-stage encoder strides, ints or per-axis tuples; ``None`` takes the encoder's.
        deep_supervision: add a 1x1 head to every coarser decoder level; in training mode ``forward``
            then returns ``[mask, coarser masks ...]`` (all decoder levels, as nnU-Net's network does;
            nnU-Net's loss gives the coarsest weight 0), in eval mode only the mask.
        kwargs: passed to the encoder's builder (e.g. ``features``, ``blocks``, ``kernel_sizes``).

    Input sizes must be divisible by the total reduction (the transposed convolutions upsample by
    exact ratios).
    """

    def __init__(
        self,
        encoder_name: str = "resenc_m",
        encoder_depth: int = 5,
        encoder_weights: str | None = None,
        decoder_kernel_sizes: int | Sequence[int | Sequence[int]] | None = None,
        decoder_convs_per_block: int | Sequence[int] = 2,
        decoder_conv_bias: bool = True,
        in_channels: int = 3,
        classes: int = 1,
        activation: str | Callable[..., nn.Module] | None = None,
        aux_params: dict[str, Any] | None = None,
        spatial_dims: int = 3,
        strides: StridesArg = None,
        deep_supervision: bool = False,
        **kwargs: Any,
    ):
        super().__init__()
        check_classes(classes)
        if not isinstance(deep_supervision, bool):
            raise ValueError(f"deep_supervision must be True or False, got {deep_supervision!r}.")
        if not isinstance(decoder_conv_bias, bool):
            raise ValueError(f"decoder_conv_bias must be True or False, got {decoder_conv_bias!r}.")
        self.encoder = build_encoder(
            "NNUNet",
            encoder_name,
            in_channels=in_channels,
            depth=encoder_depth,
            weights=encoder_weights,
            spatial_dims=spatial_dims,
            strides=strides,
            **kwargs,
        )
        if decoder_kernel_sizes is None:
            decoder_kernel_sizes = getattr(self.encoder, "kernel_sizes", None)
        self.decoder = NNUNetDecoder(
            encoder_channels=self.encoder.out_channels,
            reductions=self.encoder.reductions,
            kernel_sizes=decoder_kernel_sizes,
            convs_per_block=decoder_convs_per_block,
            spatial_dims=spatial_dims,
            conv_bias=decoder_conv_bias,
        )
        # The decoder ends at the encoder's first feature; the head brings it to the input's size.
        self.segmentation_head = SegmentationHead(
            self.decoder.level_channels[0],
            classes,
            kernel_size=1,
            activation=activation,
            upsampling=self.decoder.level_reductions[0],
            spatial_dims=spatial_dims,
        )
        self.classification_head = build_classification_head(aux_params, self.encoder.out_channels[-1], spatial_dims)
        self.deep_supervision = deep_supervision
        self.deep_supervision_heads = (
            nn.ModuleList(conv(spatial_dims)(channels, classes, 1) for channels in self.decoder.level_channels[1:])
            if deep_supervision
            else nn.ModuleList()
        )
        self.name = f"nnunet-{encoder_name}"
        self.initialize()
        init.initialize_head(self.deep_supervision_heads)

    @property
    def deep_supervision_reductions(self) -> tuple[tuple[int, ...], ...]:
        """Per-axis reduction of each mask ``forward`` returns in training mode with deep supervision."""
        ones = (1,) * self.spatial_dims
        return (ones, *self.decoder.level_reductions[1 : 1 + len(self.deep_supervision_heads)])

    def forward(self, x: torch.Tensor) -> Any:
        if torch.jit.is_scripting():  # a scripted model is for inference: no list output
            return self._masks(x)
        if not (self.deep_supervision and self.training):
            return super().forward(x)
        if not _skip_checks():
            self.check_input(x)
        memory_format = self._input_memory_format(x)
        if memory_format is not None:
            x = x.contiguous(memory_format=memory_format)
        features = self.encoder(x)
        levels = self.decoder.forward_levels(features)
        masks = [self.segmentation_head(levels[0])]
        for i, head in enumerate(self.deep_supervision_heads):
            masks.append(head(levels[i + 1]))
        if self.classification_head is not None:
            return masks, self.classification_head(features[-1])
        return masks
