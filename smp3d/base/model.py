"""SegmentationModel: encoder -> decoder -> heads, for 2D and 3D."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _NormBase

from ..layers.factories import channels_last_format
from . import checkpointing
from . import initialization as init
from .checks import check_input
from .hub import SegmentationHubMixin
from .scripting import check_scriptable

__all__ = ["SegmentationModel"]


def _to_channels_last(t: torch.Tensor) -> torch.Tensor:
    fmt = channels_last_format(t.dim() - 2)
    return t if fmt is None else t.contiguous(memory_format=fmt)


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

    # (``encoder``, ``decoder``, ``segmentation_head``, ``classification_head`` carry no class-level
    # annotations: TorchScript reads those as attribute types, and ``nn.Module`` is none.)

    #: Whether the input's spatial size must be divisible by the encoder's total reduction.
    requires_divisible_input_shape = True
    #: Whether ``torch.jit.script`` can compile this architecture, and why not (smp's flag; an
    #: architecture made scriptable sets it True, see :mod:`smp3d.base.scripting`).
    _is_torch_scriptable = False
    _torch_script_refusal = "the decoder's forward is not written for TorchScript"
    # Python-side settings and metadata: TorchScript compiles forward only.
    __jit_unused_properties__ = [
        "encoder_checkpointing",
        "decoder_checkpointing",
        "channels_last",
        "spatial_dims",
        "in_channels",
        "output_stride",
    ]

    def __init__(self) -> None:
        super().__init__()
        self._is_encoder_frozen = False
        self._channels_last: bool | None = None
        self._checkpointing = {"encoder": False, "decoder": False}

    # -- activation checkpointing --------------------------------------------------------------

    @property
    def encoder_checkpointing(self) -> bool:
        """Whether the encoder's blocks recompute their activations in backward instead of keeping them
        (see :mod:`smp3d.base.checkpointing`). Assign to switch it."""
        return self._checkpointing["encoder"]

    @encoder_checkpointing.setter
    def encoder_checkpointing(self, enabled: bool) -> None:
        self.set_checkpointing(encoder=enabled)

    @property
    def decoder_checkpointing(self) -> bool:
        """Whether the decoder's blocks recompute their activations in backward. Assign to switch it."""
        return self._checkpointing["decoder"]

    @decoder_checkpointing.setter
    def decoder_checkpointing(self, enabled: bool) -> None:
        self.set_checkpointing(decoder=enabled)

    def set_checkpointing(self, encoder: bool | None = None, decoder: bool | None = None) -> SegmentationModel:
        """Turn activation checkpointing of the encoder and/or decoder on or off (``None``: leave it).

        Training memory falls to the blocks' inputs for about one more forward pass of compute;
        outputs, gradients and normalization statistics are those of an ordinary step. Returns the model.
        """
        for part, enabled, units in (
            ("encoder", encoder, lambda: checkpointing.encoder_units(self.encoder)),
            ("decoder", decoder, lambda: checkpointing.decoder_units(self.decoder)),
        ):
            if enabled is None:
                continue
            if not isinstance(enabled, bool):
                raise ValueError(f"{part} checkpointing must be True or False, got {enabled!r}.")
            checkpointing.set_checkpointed(units(), enabled)
            self._checkpointing[part] = enabled
        return self

    # -- memory format -------------------------------------------------------------------------

    @property
    def channels_last(self) -> bool | None:
        """The memory-format policy: ``None`` (default) runs in ``channels_last`` (2D) /
        ``channels_last_3d`` (3D) on CUDA and leaves the layout alone elsewhere; ``True`` / ``False``
        always / never. Set it with :meth:`set_channels_last`.

        Channels-last is cuDNN's fast layout for bf16/fp16 convolutions and lets BatchNorm run its
        NDHWC kernels; with it on, the input is converted once in ``forward`` and the weights when the
        model moves to the GPU, so no layout flips happen between blocks.
        """
        return self._channels_last

    def set_channels_last(self, enabled: bool | None) -> SegmentationModel:
        """Set :attr:`channels_last` and convert the weights to match now; returns the model."""
        if enabled not in (None, True, False):
            raise ValueError(f"channels_last must be None (auto: CUDA), True or False; got {enabled!r}.")
        self._channels_last = enabled
        if enabled is False:
            super()._apply(lambda t: t.contiguous())
        else:
            self._convert_weights()
        return self

    def _wants_channels_last(self, on_cuda: bool) -> bool:
        return self._channels_last if self._channels_last is not None else on_cuda

    def _convert_weights(self) -> None:
        first = next(self.parameters(), None)
        if first is not None and self._wants_channels_last(first.is_cuda):
            super()._apply(_to_channels_last)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - torch's signature
        # .to() / .cuda() / .half() all come here: keep the weights in the policy's layout after a move.
        module = super()._apply(fn, recurse)
        if self._channels_last is not False:
            self._convert_weights()
        return module

    def _input_memory_format(self, x: torch.Tensor) -> torch.memory_format | None:
        return channels_last_format(x.dim() - 2) if self._wants_channels_last(x.is_cuda) else None

    def __prepare_scriptable__(self) -> SegmentationModel:
        # torch.jit.script calls this first: refuse with the reason before TorchScript fails deep inside.
        check_scriptable(self)
        return self

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
        if not torch.jit.is_scripting():  # Python-side checks and layout policy: eager (and traced) only
            if not _skip_checks():
                self.check_input(x)
            memory_format = self._input_memory_format(x)
            if memory_format is not None:
                x = x.contiguous(memory_format=memory_format)
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
