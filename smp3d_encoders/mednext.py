"""MedNeXt encoders (Roy et al., "MedNeXt: Transformer-driven Scaling of ConvNets for Medical Image
Segmentation", MICCAI 2023; layouts of MIC-DKFZ/MedNeXt ``create_mednext_v1``), for 2D and 3D.

A 1x1 stem maps the input to ``base_channels`` (32); stage 1 is a row of MedNeXt blocks at full
resolution; every later stage ``i`` starts with a MedNeXt down block (``base_channels * 2**(i-1)``
channels out) and continues with blocks of that width. The deepest stage is MedNeXt's bottleneck.
Stage ``i``'s down block and blocks share the expansion ratio ``expansion_ratios[i-1]``, as in
MedNeXt (its ``down_{i-1}`` uses the ratio of the stage it enters).

Sizes (expansion ratios and block counts of the five encoder stages; the decoder's four follow in
:data:`DECODER_LAYOUTS`, deepest first):

====== ======================== ======================== =========================
size   encoder ratios           encoder blocks           decoder ratios / blocks
====== ======================== ======================== =========================
S      2, 2, 2, 2, 2            2, 2, 2, 2, 2            2, 2, 2, 2 / 2, 2, 2, 2
B      2, 3, 4, 4, 4            2, 2, 2, 2, 2            4, 4, 3, 2 / 2, 2, 2, 2
M      2, 3, 4, 4, 4            3, 4, 4, 4, 4            4, 4, 3, 2 / 4, 4, 4, 3
L      3, 4, 8, 8, 8            3, 4, 8, 8, 8            8, 8, 4, 3 / 8, 8, 4, 3
====== ======================== ======================== =========================

``kernel_size`` is the depthwise kernel (3 or 5 in the paper; any odd size works);
:func:`smp3d.upkern` initialises a kernel-5 model from a trained kernel-3 one. The encoder exposes
its size's decoder layout as ``decoder_defaults`` (read by :class:`smp3d.MedNeXt`).

Strides: one per stage and per axis, each at most ``kernel_size``. Stage 1's stride is 1 by default
(MedNeXt's); a stride ``s > 1`` there turns the 1x1 stem into a patchify conv (kernel = stride =
``s``, as ConvNeXt's stem). Later stages stride their down block; sizes map to ``ceil(n / stride)``.
There are no pretrained weights for this family (MedNeXt checkpoints load through
:func:`smp3d.decoders.mednext.load_mednext_state_dict`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.nn as nn

from smp3d.encoders import Encoder, EncoderSpec, resolve_strides
from smp3d.layers import check_spatial_dims, conv
from smp3d.layers.mednext import MedNeXtDownBlock, mednext_stage

__all__ = ["DECODER_LAYOUTS", "ENCODERS", "ENCODER_LAYOUTS", "MedNeXtEncoder"]

MAX_DEPTH = 5

#: size -> (expansion ratios, blocks) of the five encoder stages (MedNeXt's ``exp_r[:5]``, ``block_counts[:5]``).
ENCODER_LAYOUTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "s": ((2, 2, 2, 2, 2), (2, 2, 2, 2, 2)),
    "b": ((2, 3, 4, 4, 4), (2, 2, 2, 2, 2)),
    "m": ((2, 3, 4, 4, 4), (3, 4, 4, 4, 4)),
    "l": ((3, 4, 8, 8, 8), (3, 4, 8, 8, 8)),
}
#: size -> (expansion ratios, blocks) of the four decoder stages, deepest first (``exp_r[5:]``, ``block_counts[5:]``).
DECODER_LAYOUTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "s": ((2, 2, 2, 2), (2, 2, 2, 2)),
    "b": ((4, 4, 3, 2), (2, 2, 2, 2)),
    "m": ((4, 4, 3, 2), (4, 4, 4, 3)),
    "l": ((8, 8, 4, 3), (8, 8, 4, 3)),
}


def _positive_ints(value: Any, count: int, what: str, name: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,) * count
    if (
        not isinstance(value, Sequence)
        or len(value) < count
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        raise ValueError(f"{name}: {what} must be a positive int or at least {count} positive ints, got {value!r}.")
    return tuple(value[:count])


def check_kernel_size(kernel_size: Any, name: str) -> int:
    """An odd positive int (the depthwise convs pad ``kernel_size // 2`` on each side)."""
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"{name}: kernel_size must be an odd positive int (3 or 5 in MedNeXt), got {kernel_size!r}.")
    return kernel_size


class MedNeXtEncoder(Encoder):
    """Stem + ``depth`` stages of MedNeXt blocks; stage ``i > 1`` starts with a MedNeXt down block.

    ``stem`` is the 1x1 (or patchify) conv; ``stages[i]`` holds ``down`` (absent in stage 1) and
    ``blocks`` (an ``nn.Sequential`` of :class:`~smp3d.layers.mednext.MedNeXtBlock`).

    Args:
        kernel_size: depthwise kernel size, odd (3 or 5 in MedNeXt).
        base_channels: width of stage 1; stage ``i`` has ``base_channels * 2**(i-1)`` channels.
        expansion_ratios: per stage (or one int), the 1x1 expansion of its blocks and down block.
        blocks: per stage (or one int), the number of MedNeXt blocks after its down block.
        residual: identity residuals in the blocks and 1x1 conv residuals in the down blocks (MedNeXt's
            ``do_res`` and ``do_res_up_down``, both on in its sizes).
        decoder_expansion_ratios, decoder_blocks: the decoder layout this encoder is paired with, deepest
            first (MedNeXt's four decoder stages); exposed as ``decoder_defaults``, not used here.
    """

    _is_torch_scriptable = True

    def __init__(
        self,
        in_channels: int = 3,
        depth: int = 5,
        spatial_dims: int = 3,
        strides: Sequence[int | Sequence[int]] | None = None,
        kernel_size: int = 3,
        base_channels: int = 32,
        expansion_ratios: int | Sequence[int] = 2,
        blocks: int | Sequence[int] = 2,
        residual: bool = True,
        decoder_expansion_ratios: int | Sequence[int] = 2,
        decoder_blocks: int | Sequence[int] = 2,
        name: str = "mednext",
    ):
        spatial_dims = check_spatial_dims(spatial_dims)
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= MAX_DEPTH:
            raise ValueError(f"{name} supports encoder_depth 1..{MAX_DEPTH}, got {depth!r}.")
        kernel_size = check_kernel_size(kernel_size, name)
        if isinstance(base_channels, bool) or not isinstance(base_channels, int) or base_channels < 1:
            raise ValueError(f"{name}: base_channels must be a positive int, got {base_channels!r}.")
        if not isinstance(residual, bool):
            raise ValueError(f"{name}: residual must be True or False, got {residual!r}.")
        ratios = _positive_ints(expansion_ratios, depth, "expansion_ratios", name)
        counts = _positive_ints(blocks, depth, "blocks", name)
        decoder_ratios = _positive_ints(decoder_expansion_ratios, MAX_DEPTH - 1, "decoder_expansion_ratios", name)
        decoder_counts = _positive_ints(decoder_blocks, MAX_DEPTH - 1, "decoder_blocks", name)
        stage_strides = resolve_strides(
            strides, depth, spatial_dims, default=(1, 2, 2, 2, 2), max_stride=kernel_size, name=name
        )
        widths = [base_channels * 2**i for i in range(depth)]
        super().__init__((in_channels, *widths), stage_strides, spatial_dims)
        self.kernel_size = kernel_size
        #: Arguments of :class:`~smp3d.decoders.mednext.MedNeXtDecoder` that MedNeXt pairs with this encoder:
        #: its ``depth - 1`` finest decoder stages, deepest first.
        self.decoder_defaults: dict[str, Any] = {
            "expansion_ratios": decoder_ratios[MAX_DEPTH - depth :],
            "blocks": decoder_counts[MAX_DEPTH - depth :],
            "kernel_size": kernel_size,
            "residual": residual,
        }

        first = stage_strides[0]
        # Stride 1: MedNeXt's 1x1 stem; otherwise a patchify conv that sees every input voxel once.
        self.stem = conv(spatial_dims)(in_channels, base_channels, first, stride=first)
        self.stages = nn.ModuleList()
        for i, (width, stride) in enumerate(zip(widths, stage_strides, strict=True)):
            stage = nn.Module()
            if i > 0:
                stage.down = MedNeXtDownBlock(
                    widths[i - 1], width, ratios[i], kernel_size, spatial_dims, residual, stride=stride
                )
            stage.blocks = mednext_stage(width, counts[i], ratios[i], kernel_size, spatial_dims, residual)
            self.stages.append(stage)

    def stage_modules(self, stage: int) -> list[nn.Module]:
        """Stage ``stage``: the stem (stage 1) or the down block, then the blocks."""
        level = self.stages[stage - 1]
        return [self.stem if stage == 1 else level.down, level.blocks]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [x]
        x = self.stem(x)
        for stage in self.stages:
            if hasattr(stage, "down"):  # every stage but the first (TorchScript resolves hasattr at compile time)
                x = stage.down(x)
            x = stage.blocks(x)
            features.append(x)
        return features


def _spec(size: str) -> EncoderSpec:
    ratios, counts = ENCODER_LAYOUTS[size]
    decoder_ratios, decoder_counts = DECODER_LAYOUTS[size]
    name = f"mednext_{size}"
    return EncoderSpec(
        build=partial(
            MedNeXtEncoder,
            expansion_ratios=ratios,
            blocks=counts,
            decoder_expansion_ratios=decoder_ratios,
            decoder_blocks=decoder_counts,
            name=name,
        ),
        out_channels=(3, 32, 64, 128, 256, 512),
        strides=(1, 2, 2, 2, 2),
        family="mednext",
        license="Apache-2.0",
        description=(
            f"{name}: MedNeXt-{size.upper()} encoder (Roy et al., MICCAI 2023), ratios {ratios}, blocks {counts}, "
            "kernel_size 3 or 5; no pretrained weights"
        ),
    )


ENCODERS: dict[str, EncoderSpec] = {f"mednext_{size}": _spec(size) for size in ENCODER_LAYOUTS}
