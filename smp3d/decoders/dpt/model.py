"""DPT: dense prediction transformer decoder over a plain ViT (or any encoder's features)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

from ...base import SegmentationModel, build_classification_head, check_classes
from ...base.assembly import build_encoder, check_channels
from ...base.checks import explain_batch_norm_error
from ...encoders.protocol import StridesArg
from .decoder import READOUTS, DPTDecoder, DPTSegmentationHead

__all__ = ["DPT"]


class DPT(SegmentationModel):
    """DPT (Ranftl et al., 2021, https://arxiv.org/abs/2103.13413): the features of several blocks of a
    plain ViT, reassembled into a pyramid and fused deepest first, in 2D or 3D.

    In 2D (``spatial_dims=2``) the arguments, defaults, state-dict layout and outputs are those of
    segmentation_models_pytorch 0.6's ``DPT`` (its checkpoints load strictly), except
    ``encoder_weights`` (default ``None``). Any input size divisible by :attr:`output_stride` works
    (timm's fixed image size is not imposed; position embeddings are resized).

    Args:
        encoder_name: a single-scale ``tu-`` ViT (``tu-vit_base_patch16_224``, ``tu-vit_small_patch14_dinov2``
            ...; see docs/transformers.md) or any other registered encoder: a hierarchical encoder's
            levels are reassembled the same way.
        encoder_depth: number of encoder features used (ViT: blocks read), default 4.
        encoder_weights: ``None``, a pretrained tag (timm's, for ``tu-``), or a local file/folder.
        encoder_output_indices: the ViT blocks read (0-based); ``None`` spreads them uniformly, as smp.
        decoder_readout: how prefix (class) tokens enter the features: ``"cat"`` (concatenate the class
            token, then Linear + GELU), ``"add"`` (add their mean) or ``"ignore"``.
        decoder_intermediate_channels: channels after each feature's 1x1 projection, one per feature used.
            ``None``: smp's ``(256, 512, 1024, 1024)``, cut or extended with 1024 to the number of features
            (a 0-channel placeholder feature is not used); an int: that count for every feature.
        decoder_fusion_channels: channels of the reassembled and fused maps.
        in_channels: channels of the input.
        classes: channels of the output mask.
        activation: applied to the mask: ``None``, ``"sigmoid"``, ``"softmax"``, ... or a callable.
        aux_params: ``{"classes", "pooling", "dropout", "activation"}`` for a classification head on the
            deepest feature; the model then returns ``(masks, labels)``.
        spatial_dims: 3 for volumes ``(B, C, H, W, D)`` (default), 2 for images ``(B, C, H, W)``.
        strides: per-stage encoder strides; for a ViT ``(patch, 1, ..., 1)`` (or pass ``patch_size=(16, 16, 4)``).
        kwargs: passed to the encoder's builder (for ``tu-`` ViTs: ``patch_size``, ``position_grid``,
            ``drop_path_rate`` ...).

    Feature ``l`` (1-based) is reassembled to reduction ``2 ** (l + 1)`` per axis, scaled by the shape of
    the encoder's deepest reduction (see :mod:`smp3d.decoders.dpt.decoder`), and the mask is upsampled
    back to the input size. Refused at construction (ValueError): ``decoder_readout`` not one of
    ``"cat"``, ``"add"``, ``"ignore"``, ``decoder_intermediate_channels`` not one positive int per feature.
    """

    requires_divisible_input_shape = True
    # Scriptable with a scriptable encoder (a CNN); the tu- ViT encoders refuse TorchScript themselves.

    def __init__(
        self,
        encoder_name: str = "tu-vit_base_patch16_224.augreg_in21k",
        encoder_depth: int = 4,
        encoder_weights: str | None = None,
        encoder_output_indices: Sequence[int] | None = None,
        decoder_readout: str = "cat",
        decoder_intermediate_channels: Sequence[int] | int | None = None,
        decoder_fusion_channels: int = 256,
        in_channels: int = 3,
        classes: int = 1,
        activation: str | Callable[..., nn.Module] | None = None,
        aux_params: dict[str, Any] | None = None,
        spatial_dims: int = 3,
        strides: StridesArg = None,
        **kwargs: Any,
    ):
        super().__init__()
        if decoder_readout not in READOUTS:
            raise ValueError(f"DPT: decoder_readout must be one of {READOUTS}, got {decoder_readout!r}.")
        check_classes(classes)
        decoder_fusion_channels = check_channels(decoder_fusion_channels, "decoder_fusion_channels", "DPT")
        if isinstance(decoder_intermediate_channels, int) and not isinstance(decoder_intermediate_channels, bool):
            decoder_intermediate_channels = check_channels(
                decoder_intermediate_channels, "decoder_intermediate_channels", "DPT"
            )
        elif decoder_intermediate_channels is not None and (
            isinstance(decoder_intermediate_channels, (str, bytes))
            or not isinstance(decoder_intermediate_channels, Sequence)
            or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in decoder_intermediate_channels)
        ):
            raise ValueError(
                f"DPT: decoder_intermediate_channels must be a sequence of positive ints (one per encoder feature) "
                f"or one positive int for all, got {decoder_intermediate_channels!r}."
            )
        if encoder_output_indices is not None:
            kwargs["output_indices"] = encoder_output_indices
        self.encoder = build_encoder(
            "DPT",
            encoder_name,
            in_channels=in_channels,
            depth=encoder_depth,
            weights=encoder_weights,
            spatial_dims=spatial_dims,
            strides=strides,
            single_scale_ok=True,
            **kwargs,
        )
        prefix = int(getattr(self.encoder, "num_prefix_tokens", 0))
        if prefix == 0 and decoder_readout != "ignore":
            warnings.warn(
                f"DPT: encoder {encoder_name!r} has no prefix tokens (e.g. a class token), but decoder_readout="
                f"{decoder_readout!r}; decoder_readout='ignore' is the usual choice for such encoders.",
                UserWarning,
                stacklevel=3,
            )
        self._with_tokens = prefix > 0 and hasattr(self.encoder, "forward_tokens")
        used = sum(1 for c in self.encoder.out_channels[1:] if c > 0)
        if decoder_intermediate_channels is None:
            decoder_intermediate_channels = ((256, 512) + (1024,) * max(0, used - 2))[:used]
        elif isinstance(decoder_intermediate_channels, int):
            decoder_intermediate_channels = (decoder_intermediate_channels,) * used
        self.decoder = DPTDecoder(
            encoder_channels=self.encoder.out_channels,
            encoder_reductions=self.encoder.reductions,
            has_prefix_tokens=prefix > 0,
            readout=decoder_readout,
            intermediate_channels=tuple(decoder_intermediate_channels),
            fusion_channels=decoder_fusion_channels,
            spatial_dims=spatial_dims,
        )
        self.segmentation_head = DPTSegmentationHead(
            decoder_fusion_channels,
            classes,
            activation=activation,
            kernel_size=3,
            spatial_dims=spatial_dims,
        )
        self.classification_head = build_classification_head(aux_params, self.encoder.out_channels[-1], spatial_dims)
        self.name = f"dpt-{encoder_name}"
        self.initialize()

    @property
    def output_stride(self) -> tuple[int, ...]:
        """Per-axis multiple every input size must be: the encoder's deepest reduction times the decoder's
        downsampling of a level (a ViT with patch 16: 32)."""
        return self.decoder.input_multiple

    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003 - nn.Module's signature
        # As SegmentationModel's, but the deepest map is the decoder's coarsest reassembled level.
        try:
            return nn.Module.__call__(self, *args, **kwargs)
        except ValueError as error:
            if not self.training or not args:
                raise
            reductions = (*self.encoder.reductions, self.output_stride)
            explained = explain_batch_norm_error(error, args[0], reductions, type(self).__name__)
            if explained is None:
                raise
            raise explained from error

    def _encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Features, and the prefix tokens of each feature when the encoder has them (``num_prefix_tokens > 0``)."""
        if self._with_tokens:
            return self.encoder.forward_tokens(x)
        return self.encoder(x), None

    def _masks(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if torch.jit.is_scripting():  # only encoders without prefix tokens script (the ViTs refuse TorchScript)
            features = self.encoder(x)
            prefix_tokens: list[torch.Tensor] | None = None
        else:
            features, prefix_tokens = self._encode(x)
        masks = self.segmentation_head(self.decoder(features, prefix_tokens), x.shape[2:])
        if self.classification_head is not None:
            return masks, self.classification_head(features[-1])
        return masks
