"""MedNeXt: a ConvNeXt-style U-Net (Roy et al., MICCAI 2023) with any registered encoder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

from ...base import SegmentationHead, SegmentationModel, build_classification_head, check_classes
from ...base.assembly import build_encoder
from ...base.model import _skip_checks
from ...encoders.protocol import StridesArg
from ...layers import conv
from .decoder import MedNeXtDecoder

__all__ = ["MedNeXt"]

#: The decoder layout used when the encoder does not name one (``encoder.decoder_defaults``).
DECODER_FALLBACK: dict[str, Any] = {"expansion_ratios": 2, "blocks": 2, "kernel_size": 3, "residual": True}


class MedNeXt(SegmentationModel):
    """MedNeXt (Roy et al., "MedNeXt: Transformer-driven Scaling of ConvNets for Medical Image Segmentation",
    MICCAI 2023), in 2D or 3D.

    With a ``mednext_*`` encoder (sizes ``s``, ``b``, ``m``, ``l``) and its defaults this is MedNeXt v1
    of that size: the encoder carries the size's decoder layout (``encoder.decoder_defaults``), the
    head is a 1x1 conv, and ``deep_supervision=True`` adds MedNeXt's 1x1 outputs on the coarser levels.
    MedNeXt checkpoints load with :func:`smp3d.decoders.mednext.load_mednext_state_dict`; a kernel-5
    model starts from a trained kernel-3 one with :func:`smp3d.upkern`. Any other encoder works too
    (its skips are added after an up block that matches their channels).

    Args:
        encoder_name: a registered encoder, e.g. ``"mednext_b"``.
        encoder_depth: encoder stages, 1..5 (MedNeXt: 5); decoder stages are one fewer.
        encoder_weights: ``None``, a pretrained tag, or a local ``.safetensors`` file/folder.
        kernel_size: depthwise kernel size of a MedNeXt encoder and of the decoder (3 or 5 in MedNeXt);
            ``None`` keeps the encoder's (3). Passed to the encoder's builder when given.
        decoder_kernel_size: depthwise kernel of the decoder; ``None`` takes the encoder's
            ``decoder_defaults`` (MedNeXt's layout of its size), else 3.
        decoder_expansion_ratios: expansion ratio per decoder stage (deepest first) or one int; ``None``
            takes the encoder's ``decoder_defaults``, else 2.
        decoder_blocks: blocks per decoder stage (deepest first) or one int; ``None`` takes the
            encoder's ``decoder_defaults``, else 2.
        decoder_residual: residual connections in the decoder's up blocks; ``None`` takes the
            encoder's ``decoder_defaults``, else True.
        in_channels: channels of the input, as in every architecture.
        classes: channels of the output mask.
        activation: applied to the mask (``None``, a name such as ``"softmax"``, or a callable).
        aux_params: options of the optional classification head, as in :class:`smp3d.Unet`.
        spatial_dims: 2 for images ``(B, C, H, W)``, 3 for volumes ``(B, C, H, W, D)``.
        strides: per-stage encoder strides, ints or per-axis tuples; ``None`` takes the encoder's.
        deep_supervision: add a 1x1 head per coarser level; in training mode ``forward`` then returns
            ``[mask, coarser masks ...]`` (the deepest level's mask excluded, as nnU-Net does; its head is kept
            so MedNeXt checkpoints load), in eval mode only the mask.
        kwargs: passed to the encoder's builder.

    Input sizes must be divisible by ``output_stride`` (the up blocks double exact sizes).
    """

    requires_divisible_input_shape = True

    def __init__(
        self,
        encoder_name: str = "mednext_s",
        encoder_depth: int = 5,
        encoder_weights: str | None = None,
        kernel_size: int | None = None,
        decoder_kernel_size: int | None = None,
        decoder_expansion_ratios: int | Sequence[int] | None = None,
        decoder_blocks: int | Sequence[int] | None = None,
        decoder_residual: bool | None = None,
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
        if kernel_size is not None:
            kwargs["kernel_size"] = kernel_size
        self.encoder = build_encoder(
            "MedNeXt",
            encoder_name,
            in_channels=in_channels,
            depth=encoder_depth,
            weights=encoder_weights,
            spatial_dims=spatial_dims,
            strides=strides,
            **kwargs,
        )
        defaults = {**DECODER_FALLBACK, **getattr(self.encoder, "decoder_defaults", {})}
        if kernel_size is not None:
            defaults["kernel_size"] = kernel_size
        given = {
            "kernel_size": decoder_kernel_size,
            "expansion_ratios": decoder_expansion_ratios,
            "blocks": decoder_blocks,
            "residual": decoder_residual,
        }
        self.decoder = MedNeXtDecoder(
            encoder_channels=self.encoder.out_channels,
            reductions=self.encoder.reductions,
            spatial_dims=spatial_dims,
            **{key: defaults[key] if value is None else value for key, value in given.items()},
        )
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
        # One 1x1 head per level beyond the first (none without deep supervision: no state-dict keys).
        self.deep_supervision_heads = nn.ModuleList(
            conv(spatial_dims)(channels, classes, 1) for channels in self.decoder.level_channels[1:] if deep_supervision
        )
        self.name = f"mednext-{encoder_name}"
        self.initialize()

    def initialize(self) -> None:
        super().initialize()
        for head in self.deep_supervision_heads:
            nn.init.xavier_uniform_(head.weight)
            nn.init.zeros_(head.bias)

    @property
    def deep_supervision_reductions(self) -> tuple[tuple[int, ...], ...]:
        """Per-axis reduction of each mask ``forward`` returns in training mode (item 0: the full-size mask)."""
        reductions = self.decoder.level_reductions
        ones = (1,) * len(reductions[0])
        return (ones, *reductions[1 : len(reductions) - 1]) if self.deep_supervision else (ones,)

    def forward(self, x: torch.Tensor) -> Any:
        """Masks ``(B, classes, *spatial)``; with deep supervision in training mode a list of masks, finest first
        (shapes: the input's size divided by :attr:`deep_supervision_reductions`). With ``aux_params``, a pair
        ``(masks, labels)``."""
        if torch.jit.is_scripting():  # a scripted model is for inference: no list output
            return self._masks(x)
        if not _skip_checks():
            self.check_input(x)
        memory_format = self._input_memory_format(x)
        if memory_format is not None:
            x = x.contiguous(memory_format=memory_format)
        features = self.encoder(x)
        if self.deep_supervision and self.training:
            levels = self.decoder.forward_levels(features)
            masks = [self.segmentation_head(levels[0])]
            # The deepest level's head exists (MedNeXt has it) but, as in nnU-Net, is not supervised.
            for i, head in enumerate(self.deep_supervision_heads):
                if i + 2 < len(levels):
                    masks.append(head(levels[i + 1]))
            if self.classification_head is not None:
                return masks, self.classification_head(features[-1])
            return masks
        mask = self.segmentation_head(self.decoder(features))
        if self.classification_head is not None:
            return mask, self.classification_head(features[-1])
        return mask
