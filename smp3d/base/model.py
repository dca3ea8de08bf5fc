"""SegmentationModel: encoder -> decoder -> heads, for 2D and 3D."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _NormBase

from ..layers.factories import channels_last_format
from . import checkpointing
from . import initialization as init
from .checks import check_input, check_input_matches, explain_batch_norm_error
from .heads import build_deep_supervision_heads, mask_reduction
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
    ``(masks, labels)`` with an auxiliary classification head. With deep supervision (architectures
    whose decoder has several resolution levels, ``deep_supervision=True``) a model in training mode
    returns a list ``[masks, coarser masks ...]`` in place of ``masks``; see
    :meth:`build_deep_supervision` and :attr:`deep_supervision_reductions`.

    Every subclass records its constructor arguments, so any model can be saved and reloaded:
    ``save_pretrained(dir)``, ``from_pretrained(dir_or_repo_id)``, ``push_to_hub(repo_id)``
    (safetensors + ``config.json`` + model card; see :mod:`smp3d.base.hub`).
    """

    # (``encoder``, ``decoder``, ``segmentation_head``, ``classification_head`` carry no class-level
    # annotations: TorchScript reads those as attribute types, and ``nn.Module`` is none.)
    # ``deep_supervision_heads``: one 1x1 head per supervised decoder level beyond the first (an empty
    # nn.ModuleList without deep supervision), set by :meth:`build_deep_supervision`.

    #: Whether the input's spatial size must be divisible by the encoder's total reduction.
    requires_divisible_input_shape = True
    #: Whether ``torch.jit.script`` can compile this architecture, and why not (smp's flag; see
    #: :mod:`smp3d.base.scripting`). Every architecture here scripts (its eval-mode forward).
    _is_torch_scriptable = True
    _torch_script_refusal = ""
    # Python-side settings and metadata: TorchScript compiles forward only.
    __jit_unused_properties__ = [
        "encoder_checkpointing",
        "decoder_checkpointing",
        "channels_last",
        "spatial_dims",
        "in_channels",
        "output_stride",
        "deep_supervision_reductions",
    ]

    def __init__(self) -> None:
        super().__init__()
        self._is_encoder_frozen = False
        self._channels_last: bool | None = None
        self._checkpointing = {"encoder": False, "decoder": False}
        self.deep_supervision = False

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

    # -- deep supervision ----------------------------------------------------------------------

    def build_deep_supervision(self, enabled: bool, levels: int | None, classes: int, activation: object) -> None:
        """Give the model one 1x1 head per supervised decoder level beyond the first (call before
        :meth:`initialize`).

        ``levels`` is the number of masks ``forward`` returns in training mode, finest first: ``None``
        (default) means every level of the decoder except the deepest, as nnU-Net trains; the decoder
        says which levels exist (``level_channels``, ``level_reductions``). Eval mode is unaffected.
        """
        owner = type(self).__name__
        if not isinstance(enabled, bool):
            raise ValueError(f"{owner}: deep_supervision must be True or False, got {enabled!r}.")
        self._mask_reduction = mask_reduction(self.decoder, self.segmentation_head)
        if not enabled:
            if levels is not None and (isinstance(levels, bool) or not isinstance(levels, int)):
                raise ValueError(f"{owner}: deep_supervision_levels must be None or an int, got {levels!r}.")
            self.deep_supervision_heads = nn.ModuleList()
            return
        self.deep_supervision_heads = build_deep_supervision_heads(
            self.decoder, levels, classes, activation, self.spatial_dims, owner
        )
        self.deep_supervision = True

    @property
    def deep_supervision_reductions(self) -> tuple[tuple[int, ...], ...]:
        """Per-axis reduction (w.r.t. the input) of each mask ``forward`` returns in training mode,
        finest first: the full-resolution mask's (all ones unless ``upsampling`` says otherwise), then
        one per deep-supervision head. Pass it to :class:`smp3d.losses.DeepSupervisionLoss`."""
        if not hasattr(self, "_mask_reduction"):
            raise AttributeError(
                f"{type(self).__name__} has no deep supervision: its decoder has a single resolution level."
            )
        heads = len(self.deep_supervision_heads)
        coarser = tuple(tuple(r) for r in self.decoder.level_reductions[1 : 1 + heads])
        return (self._mask_reduction, *coarser)

    def _deep_supervision_masks(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """``[masks, coarser masks ...]`` from one pass of the decoder (training mode only)."""
        levels = self.decoder.forward_levels(features)
        masks = [self.segmentation_head(levels[0])]
        for i, head in enumerate(self.deep_supervision_heads):
            masks.append(head(levels[i + 1]))
        return masks

    def __prepare_scriptable__(self) -> SegmentationModel:
        # torch.jit.script calls this first: refuse with the reason before TorchScript fails deep inside.
        check_scriptable(self)
        return self

    def initialize(self) -> None:
        init.initialize_decoder(self.decoder)
        init.initialize_head(self.segmentation_head)
        for head in getattr(self, "deep_supervision_heads", ()):
            init.initialize_head(head)
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
        """Raise a clear error if ``x`` does not fit this model: layout, channels, empty axes and
        divisibility (ValueError), device (ValueError) and dtype (TypeError; see
        :func:`~smp3d.base.checks.check_input_matches` for autocast)."""
        owner = type(self).__name__
        multiple = self.output_stride if self.requires_divisible_input_shape else None
        check_input(x, self.spatial_dims, self.in_channels, multiple, owner=owner)
        check_input_matches(x, next(self.parameters(), None), owner=owner)

    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003 - nn.Module's signature
        # Only the error path differs from nn.Module's: torch's batch-norm error on a single value per
        # channel (batch 1 in training) becomes one line that names the feature size and the fixes.
        try:
            return super().__call__(*args, **kwargs)
        except ValueError as error:
            if not self.training or not args:
                raise
            explained = explain_batch_norm_error(error, args[0], self.encoder.reductions, type(self).__name__)
            if explained is None:
                raise
            raise explained from error

    def forward(
        self, x: torch.Tensor
    ) -> (
        torch.Tensor | tuple[torch.Tensor, torch.Tensor] | list[torch.Tensor] | tuple[list[torch.Tensor], torch.Tensor]
    ):
        if not torch.jit.is_scripting():  # Python-side checks and layout policy: eager (and traced) only
            if not _skip_checks():
                self.check_input(x)
            memory_format = self._input_memory_format(x)
            if memory_format is not None:
                x = x.contiguous(memory_format=memory_format)
            if self.deep_supervision and self.training:  # a scripted model is for inference: no list output
                features = self.encoder(x)
                deep_masks = self._deep_supervision_masks(features)
                if self.classification_head is not None:
                    return deep_masks, self.classification_head(features[-1])
                return deep_masks
        return self._masks(x)

    def _masks(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """encoder -> decoder -> heads without checks: the eval-mode forward, and all a script compiles."""
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
