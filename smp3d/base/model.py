"""SegmentationModel: encoder -> decoder -> heads, for 2D and 3D."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _NormBase

from . import initialization as init
from .checks import check_input
from .hub import SegmentationHubMixin

__all__ = ["SegmentationModel"]


def _skip_checks() -> bool:
    # Checks are Python-level shape logic: keep them out of traced and compiled graphs.
    return torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()


class SegmentationModel(nn.Module, SegmentationHubMixin):
    """Base of every architecture: subclasses set ``encoder``, ``decoder``,
    ``segmentation_head`` and ``classification_head`` (or ``None``), then call :meth:`initialize`.

    ``forward(x)`` takes ``(B, C, *spatial)`` and returns masks ``(B, classes, *spatial)``, or
    ``(masks, labels)`` with an auxiliary classification head.

    Every subclass records its constructor arguments, so any model can be saved and reloaded:
    ``save_pretrained(dir)``, ``from_pretrained(dir_or_repo_id)``, ``push_to_hub(repo_id)``
    (safetensors + ``config.json`` + model card; see :mod:`smp3d.base.hub`).
    """

    encoder: nn.Module
    decoder: nn.Module
    segmentation_head: nn.Module
    classification_head: nn.Module | None

    #: Whether the input's spatial size must be divisible by the encoder's total reduction.
    requires_divisible_input_shape: bool = True

    def __init__(self) -> None:
        super().__init__()
        self._is_encoder_frozen = False

    def initialize(self) -> None:
        init.initialize_decoder(self.decoder)
        init.initialize_head(self.segmentation_head)
        if self.classification_head is not None:
            init.initialize_head(self.classification_head)

    @property
    def spatial_dims(self) -> int:
        return self.encoder.spatial_dims

    @property
    def in_channels(self) -> int:
        return self.encoder.out_channels[0]

    @property
    def output_stride(self) -> tuple[int, ...]:
        """Per-axis total reduction of the encoder."""
        return tuple(self.encoder.reductions[-1])

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError if ``x`` does not fit this model (layout, channels, divisibility)."""
        multiple = self.output_stride if self.requires_divisible_input_shape else None
        check_input(x, self.spatial_dims, self.in_channels, multiple, owner=type(self).__name__)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not _skip_checks():
            self.check_input(x)
        features = self.encoder(x)
        masks = self.segmentation_head(self.decoder(features))
        if self.classification_head is not None:
            return masks, self.classification_head(features[-1])
        return masks

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Switch to eval mode and run ``forward`` under ``torch.inference_mode()``."""
        if self.training:
            self.eval()
        return self(x)

    def train(self, mode: bool = True) -> SegmentationModel:
        """Like ``nn.Module.train``, but a frozen encoder stays in eval mode."""
        if not isinstance(mode, bool):
            raise ValueError(f"training mode must be a bool, got {mode!r}.")
        self.training = mode
        for name, module in self.named_children():
            if not (self._is_encoder_frozen and name == "encoder"):
                module.train(mode)
        return self

    def _set_encoder_trainable(self, trainable: bool) -> None:
        for p in self.encoder.parameters():
            p.requires_grad_(trainable)
        for m in self.encoder.modules():
            if isinstance(m, _NormBase):  # running statistics follow the freeze too
                m.train(trainable and self.training)
        self._is_encoder_frozen = not trainable

    def freeze_encoder(self) -> None:
        """Stop gradients to the encoder and freeze its normalization statistics."""
        self._set_encoder_trainable(False)

    def unfreeze_encoder(self) -> None:
        """Undo :meth:`freeze_encoder`."""
        self._set_encoder_trainable(True)
