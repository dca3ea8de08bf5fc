"""The Swin transformer of Swin UNETR (Hatamizadeh et al., 2022; MONAI's ``SwinTransformer``), for 2D and 3D.

A patch embedding (conv, kernel = stride = ``patch_size``) gives feature 1; each later stage runs Swin
blocks (window attention, every second block on windows shifted by half a window) at the resolution of
the previous feature, then a patch merging (neighbouring voxels concatenated, LayerNorm, linear to twice
the channels) that halves the resolution. With ``use_v2=True`` (Swin UNETR v2) a residual conv block runs
before the blocks of each stage. Features are layer-normalised over channels without parameters
(MONAI's ``normalize=True``; ``normalize_features=False`` turns it off).

==========  ============  ===========================  ===========================
name        feature_size  out_channels (depth 5)       MONAI
==========  ============  ===========================  ===========================
swinvit_t   24            24, 48, 96, 192, 384         ``SwinUNETR(feature_size=24)`` (its default)
swinvit_s   36            36, 72, 144, 288, 576        ``feature_size=36``
swinvit_b   48            48, 96, 192, 384, 768        ``feature_size=48`` (its self-supervised weights)
==========  ============  ===========================  ===========================

``swinvit_v2_*`` are the same sizes with ``use_v2=True``. Blocks per stage ``(2, 2, 2, 2)``, heads
``(3, 6, 12, 24)``, window 7 (per axis, or a tuple such as ``(7, 7, 3)``), MLP ratio 4 unless given.

Window attention, as MONAI computes it (so that its weights give its outputs): inputs are padded at the
end of each axis to a multiple of the window (never refused); an axis not longer than the window uses a
window of its whole length and no shift; shifted windows get a mask (-100 between tokens from different
regions of the rolled map) built for the actual padded size; the relative position bias is gathered from
a table of ``prod(2 * window - 1)`` rows with MONAI's index, and for windows shrunk to a short axis the
first ``n x n`` entries of the full window's index (MONAI's rule). Attention runs through
``F.scaled_dot_product_attention`` with the bias (and mask) as an additive float mask.

Strides: stage 1's is the patch size (any positive int per axis); later stages merge 2 voxels per axis
(or 1: that axis is left alone, its neighbours not concatenated). Odd sizes are padded before merging
(MONAI's rule), so feature sizes are ``ceil(n / reduction)``.

Merging order: MONAI's ``downsample="merging"`` (the default of ``SwinUNETR``, kept here as
``merging="merging"``) concatenates the 8 neighbours of a 3D voxel in the order (0,0,0), (1,0,0), (0,1,0),
(0,0,1), (1,1,0), (1,0,1), (0,1,1), (1,1,1) (offsets per axis); ``"mergingv2"`` in the product order
(last axis fastest). In 2D both use (0,0), (1,0), (0,1), (1,1).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from smp3d.encoders import Encoder, EncoderSpec, resolve_strides
from smp3d.layers import as_tuple, check_spatial_dims, conv
from smp3d.layers.unetr_blocks import ResidualConvBlock, channels_to_first, channels_to_last

__all__ = [
    "ENCODERS",
    "PatchMerging",
    "SwinBlock",
    "SwinStage",
    "SwinViTEncoder",
    "WindowAttention",
    "relative_position_index",
    "shifted_window_mask",
    "window_partition",
    "window_reverse",
]

MAX_DEPTH = 5
#: MONAI's value between tokens of different regions in a shifted window (added before the softmax).
MASK_VALUE = -100.0


# -- windows ------------------------------------------------------------------------------------------


def window_partition(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """``(B, *S, C)`` with every ``S`` a multiple of ``window`` -> ``(B * windows, prod(window), C)``,
    windows in raster order, voxels in raster order inside each."""
    batch, *sizes, channels = x.shape
    nd = len(sizes)
    shape = [batch]
    for size, w in zip(sizes, window, strict=True):
        shape += [size // w, w]
    x = x.view(*shape, channels)
    order = [0, *range(1, 2 * nd, 2), *range(2, 2 * nd + 1, 2), 2 * nd + 1]
    return x.permute(order).reshape(-1, math.prod(window), channels)


def window_reverse(windows: torch.Tensor, window: Sequence[int], sizes: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * windows, prod(window), C)`` -> ``(B, *sizes, C)``."""
    nd = len(sizes)
    counts = [s // w for s, w in zip(sizes, window, strict=True)]
    channels = windows.shape[-1]
    x = windows.view(-1, *counts, *window, channels)
    order = [0]
    for axis in range(nd):
        order += [1 + axis, 1 + nd + axis]
    order.append(2 * nd + 1)
    return x.permute(order).reshape(x.shape[0], *sizes, channels)


def relative_position_index(window: Sequence[int]) -> torch.Tensor:
    """``(n, n)`` int64 index into a table of ``prod(2 * w - 1)`` rows (``n = prod(window)``): the row of
    the offset between voxel ``i`` and voxel ``j`` of a window, axes flattened first-major (MONAI's layout)."""
    grids = torch.meshgrid(*(torch.arange(w) for w in window), indexing="ij")
    coords = torch.stack([g.flatten() for g in grids])  # (nd, n)
    relative = coords[:, :, None] - coords[:, None, :]  # (nd, n, n)
    index = torch.zeros(relative.shape[1:], dtype=torch.long)
    for axis, w in enumerate(window):
        stride = math.prod(2 * v - 1 for v in window[axis + 1 :])
        index += (relative[axis] + w - 1) * stride
    return index


def effective_window(
    sizes: Sequence[int], window: Sequence[int], shift: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """MONAI's rule: an axis not longer than its window takes a window of its length and no shift."""
    use_window = tuple(s if s <= w else w for s, w in zip(sizes, window, strict=True))
    use_shift = tuple(0 if s <= w else h for s, w, h in zip(sizes, window, shift, strict=True))
    return use_window, use_shift


def _region_ids(length: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    # regions of the rolled axis: [0, L - w), [L - w, L - shift), [L - shift, L)
    position = torch.arange(length, device=device)
    return (position >= length - window).long() + (position >= length - shift).long()


def _build_mask(
    sizes: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...], device: torch.device
) -> torch.Tensor:
    ids = torch.zeros((), dtype=torch.long, device=device)
    for size, w, s in zip(sizes, window, shift, strict=True):
        ids = ids[..., None] * 3 + _region_ids(size, w, s if s > 0 else 0, device)
    windows = window_partition(ids[None, ..., None], window).squeeze(-1)  # (windows, n)
    different = windows[:, None, :] != windows[:, :, None]
    return torch.zeros(different.shape, device=device).masked_fill_(different, MASK_VALUE)


@functools.lru_cache(maxsize=64)
def _cached_mask(sizes: tuple, window: tuple, shift: tuple, device: torch.device) -> torch.Tensor:
    return _build_mask(sizes, window, shift, device)


def shifted_window_mask(
    sizes: Sequence[int], window: Sequence[int], shift: Sequence[int], device: torch.device
) -> torch.Tensor:
    """``(windows, n, n)`` additive mask (0 or -100) of shifted-window attention on a padded map of
    ``sizes``; cached per size outside of compiled graphs (it depends on sizes only)."""
    args = (tuple(sizes), tuple(window), tuple(shift), device)
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return _build_mask(*args)
    return _cached_mask(*args)


# -- blocks -------------------------------------------------------------------------------------------


class Mlp(nn.Module):
    """linear1 -> GELU -> dropout -> linear2 -> dropout (MONAI's ``MLPBlock`` keys)."""

    def __init__(self, channels: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.linear1 = nn.Linear(channels, hidden)
        self.linear2 = nn.Linear(hidden, channels)
        self.fn = nn.GELU()
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.linear2(self.drop(self.fn(self.linear1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample with probability ``p`` in training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a relative position bias, N-D.

    ``relative_position_bias_table`` ``(prod(2 * window - 1), heads)`` and the buffer
    ``relative_position_index`` ``(n, n)`` have MONAI's shapes and layout.
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        window: Sequence[int],
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        self.heads = heads
        self.window = tuple(window)
        self.scale = (channels // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros(math.prod(2 * w - 1 for w in window), heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(channels, channels)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def position_bias(self, n: int) -> torch.Tensor:
        """``(heads, n, n)``: the bias of a window of ``n`` tokens (MONAI's ``index[:n, :n]`` for shrunk windows)."""
        index = self.relative_position_index
        if n != index.shape[0]:
            index = index[:n, :n]
        bias = self.relative_position_bias_table[index.reshape(-1)]
        return bias.view(n, n, self.heads).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``(B * windows, n, C)``; ``mask``: ``(windows, n, n)`` additive, or ``None``."""
        batch, n, channels = x.shape
        qkv = self.qkv(x).view(batch, n, 3, self.heads, channels // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B * windows, heads, n, head_dim)
        bias = self.position_bias(n).to(q.dtype).unsqueeze(0)  # (1, heads, n, n)
        if mask is not None:
            # (windows, heads, n, n), repeated over the batch; CPU's fused attention kernel takes only 4-D
            # inputs and masks (a 3-D mask or 5-D inputs fall back to the unfused math path, 3-4x slower)
            windows = mask.shape[0]
            bias = bias + mask.to(q.dtype).unsqueeze(1)
            if batch != windows:
                bias = bias.unsqueeze(0).expand(batch // windows, -1, -1, -1, -1).reshape(batch, self.heads, n, n)
        dropout = self.attn_drop if self.training else 0.0
        if bias.requires_grad and torch.is_grad_enabled() and q.device.type == "cpu":
            # a mask that needs a gradient sends CPU's SDPA to its math path, whose -inf-safe softmax costs
            # three more passes over the scores: the plain computation is the same math without them
            scores = (q * self.scale) @ k.transpose(-2, -1)
            scores += bias  # broadcast over the windows; in place: matmul's backward does not read its output
            out = F.dropout(scores.softmax(-1), dropout, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, scale=self.scale)
        out = out.transpose(1, 2).reshape(batch, n, channels)
        return self.proj_drop(self.proj(out))


class SwinBlock(nn.Module):
    """norm1 -> (shifted) window attention -> residual; norm2 -> MLP -> residual. Channels-last input
    ``(B, *S, C)``; ``window``/``shift`` are the effective ones of the stage (see :func:`effective_window`)."""

    def __init__(
        self,
        channels: int,
        heads: int,
        window: Sequence[int],
        shifted: bool,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(channels)
        self.attn = WindowAttention(channels, heads, window, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = Mlp(channels, int(channels * mlp_ratio), drop)

    def attention(
        self, x: torch.Tensor, window: tuple[int, ...], shift: tuple[int, ...], mask: torch.Tensor | None
    ) -> torch.Tensor:
        sizes = x.shape[1:-1]
        nd = len(sizes)
        x = self.norm1(x)
        pad = [(w - s % w) % w for s, w in zip(sizes, window, strict=True)]
        if any(pad):
            spec = [0, 0]
            for p in reversed(pad):
                spec += [0, p]
            x = F.pad(x, spec)
        padded = x.shape[1:-1]
        axes = tuple(range(1, nd + 1))
        rolled = any(shift)
        if rolled:
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=axes)
        windows = self.attn(window_partition(x, window), mask if rolled else None)
        x = window_reverse(windows, window, padded)
        if rolled:
            x = torch.roll(x, shifts=tuple(shift), dims=axes)
        if any(pad):
            x = x[(slice(None), *(slice(0, s) for s in sizes))]
        return x

    def forward(
        self, x: torch.Tensor, window: tuple[int, ...], shift: tuple[int, ...], mask: torch.Tensor | None
    ) -> torch.Tensor:
        x = x + self.drop_path(self.attention(x, window, shift if self.shifted else (0,) * len(window), mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def merge_offsets(spatial_dims: int, merging: str) -> list[tuple[int, ...]]:
    """The order in which patch merging concatenates the ``2**spatial_dims`` neighbours (see module docs)."""
    if spatial_dims == 2:
        return [(0, 0), (1, 0), (0, 1), (1, 1)]
    if merging == "merging" and spatial_dims == 3:
        return [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1)]
    return list(itertools.product(range(2), repeat=spatial_dims))


class PatchMerging(nn.Module):
    """Concatenate neighbouring voxels (2 per merged axis) -> LayerNorm -> linear to ``2 * channels``.

    ``stride`` per axis is 2 (merge) or 1 (keep); odd sizes are padded with zeros at the end first.
    """

    def __init__(self, channels: int, stride: Sequence[int], merging: str = "merging"):
        super().__init__()
        self.stride = tuple(stride)
        offsets = merge_offsets(len(self.stride), merging)
        #: neighbour offsets concatenated, in order (only those along merged axes)
        self.offsets = [o for o in offsets if all(s == 2 or d == 0 for d, s in zip(o, self.stride, strict=True))]
        self.norm = nn.LayerNorm(len(self.offsets) * channels)
        self.reduction = nn.Linear(len(self.offsets) * channels, 2 * channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, *S, C)`` -> ``(B, *ceil(S / stride), 2C)``."""
        sizes = x.shape[1:-1]
        pad = [s % 2 if t == 2 else 0 for s, t in zip(sizes, self.stride, strict=True)]
        if any(pad):
            spec = [0, 0]
            for p in reversed(pad):
                spec += [0, p]
            x = F.pad(x, spec)
        parts = [
            x[(slice(None), *(slice(d, None, s) for d, s in zip(offset, self.stride, strict=True)))]
            for offset in self.offsets
        ]
        return self.reduction(self.norm(torch.cat(parts, dim=-1)))


class SwinStage(nn.Module):
    """[residual conv block (v2)] -> Swin blocks -> patch merging, on a channels-first map."""

    def __init__(
        self,
        channels: int,
        blocks: int,
        heads: int,
        window: Sequence[int],
        stride: Sequence[int],
        drop_path: Sequence[float],
        merging: str = "merging",
        use_v2: bool = False,
        spatial_dims: int = 3,
        **block_kwargs: Any,
    ):
        super().__init__()
        self.window = tuple(window)
        self.shift = tuple(w // 2 for w in window)
        if use_v2:
            self.conv_block = ResidualConvBlock(channels, channels, 3, 1, "instancenorm", spatial_dims)
        self.blocks = nn.ModuleList(
            SwinBlock(channels, heads, window, shifted=i % 2 == 1, drop_path=drop_path[i], **block_kwargs)
            for i in range(blocks)
        )
        self.downsample = PatchMerging(channels, stride, merging)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "conv_block"):
            x = self.conv_block(x)
        x = channels_to_last(x)  # (B, *S, C)
        sizes = tuple(x.shape[1:-1])
        window, shift = effective_window(sizes, self.window, self.shift)
        mask = None
        if any(shift) and len(self.blocks) > 1:
            padded = tuple(math.ceil(s / w) * w for s, w in zip(sizes, window, strict=True))
            mask = shifted_window_mask(padded, window, shift, x.device)
        for block in self.blocks:
            x = block(x, window, shift, mask)
        x = self.downsample(x)
        return channels_to_first(x)


class PatchEmbed(nn.Module):
    """Conv with kernel = stride = ``patch``, the input padded at the end of each axis to a multiple of it;
    optionally a LayerNorm over channels (MONAI's ``patch_norm``)."""

    def __init__(self, in_channels: int, channels: int, patch: Sequence[int], norm: bool, spatial_dims: int):
        super().__init__()
        self.patch = tuple(patch)
        self.proj = conv(spatial_dims)(in_channels, channels, self.patch, stride=self.patch)
        if norm:
            self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = x.shape[2:]
        pad = [(p - s % p) % p for s, p in zip(sizes, self.patch, strict=True)]
        if any(pad):
            spec: list[int] = []
            for p in reversed(pad):
                spec += [0, p]
            x = F.pad(x, spec)
        x = self.proj(x)
        if hasattr(self, "norm"):
            x = channels_to_first(self.norm(channels_to_last(x)))
        return x


class SwinViTEncoder(Encoder):
    """Swin UNETR's Swin transformer as an encoder: ``depth`` features (patch embedding, then one per stage).

    Args:
        feature_size: channels of feature 1 (stage ``i`` has ``feature_size * 2**(i-1)``).
        blocks: Swin blocks per stage (4 stages; the first ``depth - 1`` are built).
        heads: attention heads per stage.
        window_size: window per axis (an int or a tuple).
        mlp_ratio, qkv_bias: MLP width ratio and the bias of the qkv projection.
        drop_rate, attn_drop_rate, drop_path_rate: dropout after embedding/MLP/projection, on the attention
            weights, and stochastic depth (linearly increasing over all blocks).
        patch_norm: LayerNorm after the patch embedding.
        use_v2: Swin UNETR v2 (a residual conv block before each stage's blocks).
        merging: ``"merging"`` (MONAI's default) or ``"mergingv2"``: the neighbour order of patch merging.
        normalize_features: layer-normalise every feature over channels without parameters (MONAI's ``normalize``).

    ``strides``: stage 1 is the patch size (any positive int per axis, default 2); later stages 1 or 2 per axis.
    """

    def __init__(
        self,
        in_channels: int = 3,
        depth: int = 5,
        spatial_dims: int = 3,
        strides: Sequence[int | Sequence[int]] | None = None,
        feature_size: int = 24,
        blocks: Sequence[int] = (2, 2, 2, 2),
        heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int | Sequence[int] = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        patch_norm: bool = False,
        use_v2: bool = False,
        merging: str = "merging",
        normalize_features: bool = True,
        name: str = "swinvit",
    ):
        spatial_dims = check_spatial_dims(spatial_dims)
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= MAX_DEPTH:
            raise ValueError(f"{name} supports encoder_depth 1..{MAX_DEPTH}, got {depth!r}.")
        stages = MAX_DEPTH - 1
        for what, value in (("blocks", blocks), ("heads", heads)):
            if (
                isinstance(value, (str, bytes))
                or not isinstance(value, Sequence)
                or len(value) != stages
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
            ):
                raise ValueError(f"{name}: {what} must be {stages} positive ints (one per stage), got {value!r}.")
        if isinstance(feature_size, bool) or not isinstance(feature_size, int) or feature_size < 1:
            raise ValueError(f"{name}: feature_size must be a positive int, got {feature_size!r}.")
        widths = [feature_size * 2**i for i in range(MAX_DEPTH)]
        for i, (width, h) in enumerate(zip(widths, heads, strict=False)):
            if width % h:
                raise ValueError(
                    f"{name}: stage {i + 2} has {width} channels (feature_size={feature_size} * {2**i}), not divisible "
                    f"by its {h} heads; use a feature_size divisible by {max(1, h // 2**i)} (MONAI: multiples of 12)."
                )
        if merging not in ("merging", "mergingv2"):
            raise ValueError(f"{name}: merging must be 'merging' (MONAI's default) or 'mergingv2', got {merging!r}.")
        window = as_tuple(window_size, spatial_dims, "window_size")
        if any(w < 1 for w in window):
            raise ValueError(f"{name}: window_size must be positive per axis, got {window_size!r}.")
        stage_strides = resolve_strides(strides, depth, spatial_dims, name=name)
        for i, stride in enumerate(stage_strides[1:], start=2):
            if any(s not in (1, 2) for s in stride):
                raise ValueError(
                    f"{name}: strides item {i} is {stride}; stages after the patch embedding merge 2 voxels or 1 per "
                    f"axis, so each later stride must be 1 or 2 per axis (stage 1's, the patch size, may be any)."
                )
        super().__init__((in_channels, *widths[:depth]), stage_strides, spatial_dims)
        self.feature_size = feature_size
        self.window_size = window
        self.normalize_features = normalize_features
        self.patch_embed = PatchEmbed(in_channels, feature_size, stage_strides[0], patch_norm, spatial_dims)
        self.pos_drop = nn.Dropout(drop_rate)
        total = sum(blocks)  # stochastic depth rising linearly over all blocks (plain Python: meta builds)
        rates = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
        self.stages = nn.ModuleList()
        for i in range(depth - 1):
            first = sum(blocks[:i])
            self.stages.append(
                SwinStage(
                    widths[i],
                    blocks[i],
                    heads[i],
                    window,
                    stage_strides[i + 1],
                    rates[first : first + blocks[i]],
                    merging=merging,
                    use_v2=use_v2,
                    spatial_dims=spatial_dims,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                )
            )
        self.apply(_init_weights)

    def _normalize(self, x: torch.Tensor, channels: int) -> torch.Tensor:
        if not self.normalize_features:
            return x
        # channels from the metadata, not x.shape: a traced size would make the exported shape dynamic
        return channels_to_first(F.layer_norm(channels_to_last(x), (channels,)))

    def stage_modules(self, stage: int) -> list[nn.Module]:
        """Stage 1 is the patch embedding; stage ``i > 1`` the Swin stage ending with its merging."""
        raise NotImplementedError(
            "the Swin encoder cannot trade strides for dilation (its windows and mergings assume the strides)"
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [x]
        x = self.pos_drop(self.patch_embed(x))
        features.append(self._normalize(x, self.out_channels[1]))
        for stage in self.stages:
            x = stage(x)
            features.append(self._normalize(x, self.out_channels[len(features)]))
        return features


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


SIZES = {"t": 24, "s": 36, "b": 48}


def _spec(size: str, use_v2: bool) -> EncoderSpec:
    feature_size = SIZES[size]
    name = f"swinvit{'_v2' if use_v2 else ''}_{size}"
    return EncoderSpec(
        build=partial(SwinViTEncoder, feature_size=feature_size, use_v2=use_v2, name=name),
        out_channels=(3, *(feature_size * 2**i for i in range(MAX_DEPTH))),
        family="swinvit",
        license="Apache-2.0",
        # position-bias tables (prod(2w - 1) rows) and patch mergings (2**dims neighbours) depend on the dims
        extra={"spatial_shaped_keys": ("relative_position_bias_table", "relative_position_index", "downsample.")},
        description=(
            f"{name}: the Swin transformer of Swin UNETR{' v2' if use_v2 else ''} (MONAI layout), feature_size "
            f"{feature_size}, blocks (2, 2, 2, 2), heads (3, 6, 12, 24), window 7; MONAI checkpoints load through "
            "smp3d.SwinUNETR.from_monai"
        ),
    )


ENCODERS: dict[str, EncoderSpec] = {
    f"swinvit{'_v2' if v2 else ''}_{size}": _spec(size, v2) for v2 in (False, True) for size in SIZES
}
