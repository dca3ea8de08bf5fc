"""The U-Net++ decoder (Zhou et al., 2018): a nested grid of U-Net blocks, for any spatial_dims.

Node ``x_{d}_{l}`` of the grid (smp's names, kept for state-dict parity) produces a map at the
resolution of the encoder's skip ``l + 1`` counted from the deepest feature. Column ``d = 0`` is
the main decoder path; the nodes with ``d > 0`` re-decode each skip connection from the level
below, and every node concatenates all nodes already computed at its resolution (dense skips).
Each node is a :class:`~smp3d.decoders.unet.UnetDecoderBlock` that upsamples to the size of its
skip, so per-axis (anisotropic) reductions and sizes not divisible by the output stride work.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ...layers import interpolation_mode
from ...layers.blocks import NormSpec
from ..unet import UnetCenterBlock, UnetDecoderBlock

__all__ = ["EmptyNode", "UnetPlusPlusDecoder"]


class EmptyNode(nn.Module):
    """A grid node with 0 output channels (above a 0-channel placeholder feature): returns an
    empty ``(B, 0, *size)`` tensor and has no parameters, like smp's empty decoder block."""

    def forward(self, x: torch.Tensor, size: list[int], skip: torch.Tensor | None = None) -> torch.Tensor:
        return x.new_zeros([x.shape[0], 0] + list(size))


class UnetPlusPlusDecoder(nn.Module):
    """The nested dense decoder; returns the map of the last node ``(B, decoder_channels[-1], *input size)``.

    Args:
        encoder_channels: the encoder's ``out_channels`` (item 0 is the input).
        reductions: the encoder's ``reductions``, one per-axis tuple per feature.
        decoder_channels: output channels of the main-path nodes ``x_0_*``, deepest first; one per
            encoder stage. The other nodes keep the channels of the skip they re-decode.
        use_norm: normalization of the convolutions (see :func:`smp3d.layers.create_norm`).
        attention_type: ``None`` or ``"scse"``, inside every node.
        interpolation: upsampling mode of every node (see :func:`smp3d.layers.interpolation_mode`).
        spatial_dims: 2 or 3.
        add_center_block: build a :class:`~smp3d.decoders.unet.UnetCenterBlock` ``center``. As in
            smp 0.6.0 it is part of the state dict but NOT applied in ``forward`` (so that trained
            smp models give the same outputs).
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        reductions: Sequence[Sequence[int]],
        decoder_channels: Sequence[int],
        use_norm: NormSpec = "batchnorm",
        attention_type: str | None = None,
        interpolation: str = "nearest",
        spatial_dims: int = 3,
        add_center_block: bool = False,
    ):
        super().__init__()
        depth = len(encoder_channels) - 1
        if depth < 2:
            raise ValueError(
                f"The U-Net++ decoder needs an encoder with at least 2 stages (one skip connection to nest), "
                f"got {depth} (encoder_channels={tuple(encoder_channels)})."
            )
        if len(decoder_channels) != depth:
            suggestion = tuple((256, 128, 64, 32, 16)[-depth:]) if depth <= 5 else None
            raise ValueError(
                f"decoder_channels has {len(decoder_channels)} items but the encoder has {depth} stages "
                f"(encoder_depth={depth}); give one channel count per decoder column"
                + (f", e.g. decoder_channels={suggestion}." if suggestion else ".")
            )
        if interpolation == "transposed":
            raise ValueError(
                "UnetPlusPlus does not support decoder_interpolation='transposed' (smp's does not either); "
                "use 'nearest', 'nearest-exact', 'area', 'linear' ('bilinear'/'trilinear') or 'bicubic' (2D)."
            )
        interpolation_mode(interpolation, spatial_dims)  # fail now, not at the first forward

        # Deepest first: deep[k] is feature depth - k; node x_{d}_{l} outputs at level depth - l - 1.
        deep = list(encoder_channels[1:])[::-1]
        inputs = [deep[0], *decoder_channels[:-1]]
        skips = [*deep[1:], 0]
        self.depth = depth
        self.center = UnetCenterBlock(deep[0], use_norm, spatial_dims) if add_center_block else nn.Identity()

        def node(cin: int, cskip: int, cout: int, level: int) -> nn.Module:
            if cout == 0:
                return EmptyNode()
            scale = tuple(hi // lo for hi, lo in zip(reductions[level + 1], reductions[level], strict=True))
            return UnetDecoderBlock(cin, cskip, cout, scale, use_norm, attention_type, interpolation, spatial_dims)

        blocks: dict[str, nn.Module] = {}
        for column in range(depth - 1):
            level = depth - column - 1
            for row in range(column + 1):
                if row == 0:
                    cin, cout = inputs[column], decoder_channels[column]
                else:
                    cin, cout = skips[column - 1], skips[column]
                # The skip input concatenates the nodes x_{row+1..column}_{column} and the encoder feature.
                blocks[f"x_{row}_{column}"] = node(cin, skips[column] * (column + 1 - row), cout, level)
        blocks[f"x_0_{depth - 1}"] = node(inputs[-1], 0, decoder_channels[-1], 0)
        self.blocks = nn.ModuleDict(blocks)
        # Levels for deep supervision: the main-path nodes x_0_{depth-1-k} (level k at encoder feature k's size).
        self.level_channels = tuple(decoder_channels[::-1])
        self.level_reductions = tuple(tuple(r) for r in reductions[:depth])

    def _grid(self, features: Sequence[torch.Tensor]) -> dict[tuple[int, int], torch.Tensor]:
        """Every node of the grid but the last, by ``(row, column)``."""
        depth = self.depth
        deep = list(features[1:])[::-1]
        nodes: dict[tuple[int, int], torch.Tensor] = {}
        for diagonal in range(depth - 1):
            for row in range(depth - 1 - diagonal):
                column = row + diagonal
                skip = deep[column + 1]
                block = self.blocks[f"x_{row}_{column}"]
                if diagonal == 0:
                    nodes[row, column] = block(deep[row], skip.shape[2:], skip)
                else:
                    dense = [nodes[i, column] for i in range(row + 1, column + 1)]
                    nodes[row, column] = block(nodes[row, column - 1], skip.shape[2:], torch.cat([*dense, skip], 1))
        return nodes

    def _node(self, key: str, x: torch.Tensor, size: list[int], skip: torch.Tensor | None) -> torch.Tensor:
        """Run node ``key`` (TorchScript indexes a ModuleDict only by a literal: it finds the node by name)."""
        out = x
        for name, block in self.blocks.items():
            if name == key:
                out = block(x, size, skip)
        return out

    def _scripted_forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """:meth:`forward` for TorchScript: the same grid, nodes found by name (see :meth:`_node`)."""
        depth = self.depth
        deep = features[1:]
        deep.reverse()
        nodes: dict[str, torch.Tensor] = {}
        for diagonal in range(depth - 1):
            for row in range(depth - 1 - diagonal):
                column = row + diagonal
                skip = deep[column + 1]
                if diagonal == 0:
                    x, dense_skip = deep[row], skip
                else:
                    dense = [nodes[f"x_{i}_{column}"] for i in range(row + 1, column + 1)]
                    dense.append(skip)
                    x, dense_skip = nodes[f"x_{row}_{column - 1}"], torch.cat(dense, 1)
                nodes[f"x_{row}_{column}"] = self._node(f"x_{row}_{column}", x, skip.shape[2:], dense_skip)
        last = nodes[f"x_0_{depth - 2}"]
        return self._node(f"x_0_{depth - 1}", last, features[0].shape[2:], None)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._scripted_forward(features)
        nodes = self._grid(features)
        return self.blocks[f"x_0_{self.depth - 1}"](nodes[0, self.depth - 2], features[0].shape[2:])

    def forward_levels(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """The main-path nodes ``x_0_*``, finest first (item 0 is ``forward``'s output); no extra compute."""
        nodes = self._grid(features)
        depth = self.depth
        levels = [self.blocks[f"x_0_{depth - 1}"](nodes[0, depth - 2], features[0].shape[2:])]
        for column in range(depth - 2, -1, -1):
            levels.append(nodes[0, column])
        return levels
