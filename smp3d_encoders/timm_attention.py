"""N-D versions of timm's attention layers: window, grid and global attention over any number of axes.

timm's transformer families (Swin, MaxViT / CoAtNet / MaxxViT, PVT v2, ...) are written for 2D token
grids: they unpack ``B, H, W, C = x.shape``, partition windows of ``(wh, ww)`` tokens, index 2D
relative-position tables, and assert that sizes divide by the window. The classes here subclass
timm's (matched by module and class name in :mod:`smp3d_encoders.timm_nd`, so isinstance, names and
state-dict keys stay) and replace only ``forward``:

- **Partitions** (:func:`window_partition`, :func:`grid_partition` and their reverses) work on
  channels-last ``(B, *spatial, C)`` tensors with any number of spatial axes.
- **Window sizes per axis** come from the actual feature size: along each axis the window is
  ``min(window, size)``, the window of an added axis being the 2D one when that is square (a depth
  of 2 tokens gets a window of 2: ``(7, 7, 2)``). This is timm's own rule (which it applies to the
  ``img_size`` given at build time) applied to the input at hand. Swin's shift follows the same rule
  per axis (no shift along an axis that fits in one window).
- **Padding, never an assertion**: sizes are padded at the end to a multiple of the window (or grid)
  and the output is cropped. Swin keeps timm's semantics (padded tokens take part, as they do in timm's
  2D model); MaxViT masks the padded keys out of the attention (timm refuses such sizes in 2D).
- **Shifted-window masks** are computed for the padded size of the actual input, over every axis.
- **Relative position bias** keeps timm's 2D parameter (so timm's checkpoints load key for key): for an
  N-D window the bias of a token pair is the table entry of its (height, width) offset, the same for
  every offset along the added axes. This is the 2D table inflated by copying along each new offset
  axis, evaluated without materialising it, and it is what makes a depth-constant volume give the 2D
  features at every depth slice. Where the window is larger than the table along height or width
  (CoAtNet's global attention on a feature larger than at ``img_size``) the table is interpolated
  (bilinear, centre offset kept).
- **Attention** runs through :func:`torch.nn.functional.scaled_dot_product_attention`.

Layers that downsample tokens functionally (Swin's patch merging) take per-axis strides through
``set_stride``: height and width merge 2x2 as in timm, an added axis merges 2 by averaging the pair
(so the 2D linear layer and its weights are kept) or is left as it is with stride 1.

The same classes are used in 2D, where they give timm's outputs whenever timm accepts the input and
accept any other size too (padding instead of timm's size assertions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "ATTENTION_MIXINS",
    "grid_partition",
    "grid_reverse",
    "relative_position_bias",
    "window_partition",
    "window_reverse",
]


def _extend(value: Sequence[int], n: int, neutral: int) -> tuple[int, ...]:
    """A 2D per-axis value as ``n`` entries: added axes get the 2D value when it is square, else ``neutral``."""
    value = tuple(int(v) for v in value)
    if len(value) >= n:
        return value[:n]
    fill = value[0] if all(v == value[0] for v in value) else neutral
    return value + (fill,) * (n - len(value))


# -- partitions over any number of axes ----------------------------------------------------------


def pad_to_multiple(x: torch.Tensor, multiples: Sequence[int]) -> torch.Tensor:
    """Zero-pad the spatial axes of a channels-last ``(B, *spatial, C)`` tensor at their end to multiples."""
    pads = [0, 0]
    for size, m in reversed(list(zip(x.shape[1:-1], multiples, strict=True))):
        pads += [0, (m - size % m) % m]
    return F.pad(x, pads) if any(pads) else x


def _crop(x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """The first ``sizes`` entries of each spatial axis of a channels-last tensor."""
    if tuple(x.shape[1:-1]) == tuple(sizes):
        return x
    return x[(slice(None), *(slice(0, s) for s in sizes))]


def window_partition(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """``(B, *spatial, C)`` (each size a multiple of its window) -> ``(B * windows, *window, C)``."""
    n, channels = len(window), x.shape[-1]
    shape = [x.shape[0]]
    for size, w in zip(x.shape[1:-1], window, strict=True):
        shape += [size // w, w]
    order = [0, *range(1, 2 * n, 2), *range(2, 2 * n + 1, 2), 2 * n + 1]
    return x.reshape(*shape, channels).permute(order).reshape(-1, *window, channels)


def window_reverse(windows: torch.Tensor, window: Sequence[int], sizes: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * windows, *window, C)`` -> ``(B, *sizes, C)``."""
    n, channels = len(window), windows.shape[-1]
    counts = [s // w for s, w in zip(sizes, window, strict=True)]
    order = [0]
    for i in range(n):
        order += [1 + i, 1 + n + i]
    order.append(2 * n + 1)
    return windows.reshape(-1, *counts, *window, channels).permute(order).reshape(-1, *sizes, channels)


def grid_partition(x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Strided (dilated) windows: ``(B, *spatial, C)`` -> ``(B * windows, *grid, C)``, tokens ``size // grid`` apart."""
    n, channels = len(grid), x.shape[-1]
    shape = [x.shape[0]]
    for size, g in zip(x.shape[1:-1], grid, strict=True):
        shape += [g, size // g]
    order = [0, *range(2, 2 * n + 1, 2), *range(1, 2 * n, 2), 2 * n + 1]
    return x.reshape(*shape, channels).permute(order).reshape(-1, *grid, channels)


def grid_reverse(windows: torch.Tensor, grid: Sequence[int], sizes: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`grid_partition`."""
    n, channels = len(grid), windows.shape[-1]
    counts = [s // g for s, g in zip(sizes, grid, strict=True)]
    order = [0]
    for i in range(n):
        order += [1 + n + i, 1 + i]
    order.append(2 * n + 1)
    return windows.reshape(-1, *counts, *grid, channels).permute(order).reshape(-1, *sizes, channels)


def _key_padding_mask(
    sizes: Sequence[int], padded: Sequence[int], part: Sequence[int], grid: bool, batch: int, like: torch.Tensor
) -> torch.Tensor | None:
    """Additive ``(batch * windows, 1, 1, N)`` mask hiding the padded tokens, or None without padding."""
    if tuple(sizes) == tuple(padded):
        return None
    valid = like.new_ones((1, *sizes, 1))
    valid = pad_to_multiple(valid, part)
    parts = (grid_partition if grid else window_partition)(valid, part).reshape(-1, 1, 1, math.prod(part))
    mask = torch.zeros_like(parts).masked_fill(parts == 0, float("-inf"))
    return mask.repeat(batch, 1, 1, 1)


# -- relative position bias in N-D ----------------------------------------------------------------


def relative_offsets(window: Sequence[int], device: torch.device) -> torch.Tensor:
    """``(len(window), N, N)`` offsets along each axis between the ``N = prod(window)`` tokens of a window."""
    axes = [torch.arange(w, device=device) for w in window]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij")).flatten(1)
    return coords[:, :, None] - coords[:, None, :]


def relative_position_bias(table: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """``(heads, N, N)`` bias of an N-D window from a 2D table ``(heads, 2 * wh - 1, 2 * ww - 1)``.

    Offsets along the added axes share the entry of their (height, width) offset: the table inflated
    by copying along each new offset axis. A table smaller than the window along height or width is
    interpolated first (bilinear, its centre staying the zero offset).
    """
    rows, cols = table.shape[-2:]
    need = (max(rows, 2 * window[0] - 1), max(cols, 2 * window[1] - 1))
    if need != (rows, cols):
        table = F.interpolate(table.unsqueeze(0), size=need, mode="bilinear", align_corners=True)[0]
        rows, cols = need
    offsets = relative_offsets(window, table.device)
    return table[:, offsets[0] + (rows - 1) // 2, offsets[1] + (cols - 1) // 2]


def _table_of(rel_pos: torch.nn.Module) -> torch.Tensor:
    """timm's relative-position module as a ``(heads, 2 * wh - 1, 2 * ww - 1)`` table (MLP ones evaluated)."""
    name = type(rel_pos).__name__
    wh, ww = rel_pos.window_size
    if name.startswith("RelPosBiasTf"):
        return rel_pos.relative_position_bias_table
    if name.startswith("RelPosMlp"):
        table = rel_pos.mlp(rel_pos.rel_coords_log)  # (2wh-1, 2ww-1, heads)
        return table.permute(2, 0, 1)
    if getattr(rel_pos, "prefix_tokens", 0):
        raise NotImplementedError(f"{name} with prefix tokens has no N-D form here.")
    table = rel_pos.relative_position_bias_table  # (T, heads)
    return table.reshape(2 * wh - 1, 2 * ww - 1, -1).permute(2, 0, 1)


def _rel_pos_bias(rel_pos: torch.nn.Module, window: Sequence[int]) -> torch.Tensor:
    """``(1, heads, N, N)`` bias of timm's RelPosBias / RelPosBiasTf / RelPosMlp for an N-D window."""
    bias = relative_position_bias(_table_of(rel_pos), window)
    if type(rel_pos).__name__.startswith("RelPosMlp"):
        bias = rel_pos.bias_act(bias)
        if rel_pos.bias_gain is not None:
            bias = rel_pos.bias_gain * bias
    return bias.unsqueeze(0)


def _sdpa(q, k, v, bias, module) -> torch.Tensor:
    dropout = module.attn_drop.p if module.training else 0.0
    if bias is not None:
        bias = bias.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


# -- Swin (v1) ------------------------------------------------------------------------------------


class _PatchEmbedNd:
    """timm's PatchEmbed over any number of axes: each axis padded to the patch size, never asserted."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for size, p in reversed(list(zip(x.shape[2:], self.proj.stride, strict=True))):
            pads += [0, (p - size % p) % p]
        if any(pads):
            x = F.pad(x, pads)
        x = self.proj(x)
        if self.flatten:
            x = x.flatten(2).transpose(1, 2)
        elif self.output_fmt != "NCHW":
            x = x.movedim(1, -1)
        return self.norm(x)


class _SwinWindowAttentionNd:
    """Swin's window attention for windows of any shape (relative bias from the 2D table), through SDPA."""

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, window: Sequence[int] | None = None
    ) -> torch.Tensor:
        batch, tokens, _ = x.shape
        window = tuple(window) if window is not None else tuple(self.window_size)
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        wh, ww = self.window_size
        table = self.relative_position_bias_table.reshape(2 * wh - 1, 2 * ww - 1, -1).permute(2, 0, 1)
        bias = relative_position_bias(table, window).unsqueeze(0)
        if mask is not None:
            windows = mask.shape[0]
            mask = mask.view(1, windows, 1, tokens, tokens).expand(batch // windows, -1, self.num_heads, -1, -1)
            bias = bias + mask.reshape(-1, self.num_heads, tokens, tokens)
        x = _sdpa(q, k, v, bias, self)
        x = x.transpose(1, 2).reshape(batch, tokens, -1)
        return self.proj_drop(self.proj(x))


def _shift_mask(padded: Sequence[int], window: Sequence[int], shift: Sequence[int], like: torch.Tensor):
    """Swin's shifted-window mask ``(windows, N, N)`` (0 or -100) for a padded size, over every axis."""
    label = like.new_zeros((1, *padded, 1))
    n = len(padded)
    for axis, (size, w, s) in enumerate(zip(padded, window, shift, strict=True)):
        if not s:
            continue
        ids = like.new_zeros(size)
        ids[size - w : size - s] = 1
        ids[size - s :] = 2
        view = [1] * (n + 2)
        view[axis + 1] = size
        label = label + ids.view(view) * (3**axis)
    windows = window_partition(label, window).reshape(-1, math.prod(window))
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class _SwinBlockNd:
    """Swin's block on ``(B, *spatial, C)``: per-axis windows and shifts from the actual size, padding, masks."""

    def _window_shift(self, sizes: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        n = len(sizes)
        target = _extend(self.attn.window_size, n, 1)
        target_shift = _extend(self.target_shift_size, n, 0)
        if self.always_partition:
            return target, target_shift
        window = tuple(min(t, s) for t, s in zip(target, sizes, strict=True))
        shift = tuple(0 if s <= w else t for s, w, t in zip(sizes, window, target_shift, strict=True))
        return window, shift

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        sizes = tuple(x.shape[1:-1])
        dims = tuple(range(1, len(sizes) + 1))
        window, shift = self._window_shift(sizes)
        has_shift = any(shift)
        if has_shift:
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=dims)
        x = pad_to_multiple(x, window)
        padded = tuple(x.shape[1:-1])
        channels = x.shape[-1]
        windows = window_partition(x, window).reshape(-1, math.prod(window), channels)
        mask = _shift_mask(padded, window, shift, x) if has_shift else None
        windows = self.attn(windows, mask=mask, window=window)
        x = _crop(window_reverse(windows.reshape(-1, *window, channels), window, padded), sizes)
        if has_shift:
            x = torch.roll(x, shifts=shift, dims=dims)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x + self.drop_path1(self._attn(self.norm1(x)))
        x = x.reshape(shape[0], -1, shape[-1])
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x.reshape(shape)


class _SwinV2BlockNd(_SwinBlockNd):
    """Swin V2's block (normalisation after attention and MLP) on ``(B, *spatial, C)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x + self.drop_path1(self.norm1(self._attn(x)))
        x = x.reshape(shape[0], -1, shape[-1])
        x = x + self.drop_path2(self.norm2(self.mlp(x)))
        return x.reshape(shape)


class _SwinV2WindowAttentionNd:
    """Swin V2's cosine window attention with its continuous (MLP) position bias, for windows of any shape."""

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, window: Sequence[int] | None = None
    ) -> torch.Tensor:
        batch, tokens, channels = x.shape
        window = tuple(window) if window is not None else tuple(self.window_size)
        if self.q_bias is None:
            qkv = self.qkv(x)
        else:
            bias = torch.cat((self.q_bias, self.k_bias, self.v_bias))
            qkv = self.qkv(x) + bias if self.qkv_bias_separate else F.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        logit_scale = torch.clamp(self.logit_scale, max=math.log(1.0 / 0.01)).exp()
        q = F.normalize(q, dim=-1) * logit_scale
        k = F.normalize(k, dim=-1)
        table = self.cpb_mlp(self.relative_coords_table)[0].permute(2, 0, 1)  # heads, 2wh-1, 2ww-1
        bias = (16 * torch.sigmoid(relative_position_bias(table, window))).unsqueeze(0)
        if mask is not None:
            windows = mask.shape[0]
            mask = mask.view(1, windows, 1, tokens, tokens).expand(batch // windows, -1, self.num_heads, -1, -1)
            bias = bias + mask.reshape(-1, self.num_heads, tokens, tokens)
        dropout = self.attn_drop.p if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout, scale=1.0)
        x = x.transpose(1, 2).reshape(batch, tokens, channels)
        return self.proj_drop(self.proj(x))


class _PatchMergingNd:
    """Swin's patch merging: 2x2 along height and width as timm; added axes averaged by pairs (stride 2) or kept."""

    merge: tuple[int, ...] | None = None

    def set_stride(self, name: str, stride: Sequence[int]) -> None:
        stride = tuple(int(s) for s in stride)
        if stride[:2] != (2, 2) or any(s not in (1, 2) for s in stride[2:]):
            raise ValueError(
                f"Module {name!r} ({type(self).__name__}) merges 2x2 tokens along height and width; it takes "
                f"stride 2 there and 1 or 2 along further axes, got {stride}."
            )
        self.merge = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = tuple(x.shape[1:-1])
        n = len(sizes)
        merge = self.merge if self.merge is not None and len(self.merge) == n else (2,) * n
        x = pad_to_multiple(x, (2, 2, *merge[2:]))
        for axis in range(2, n):
            if merge[axis] == 2:  # average the pair: the 2D linear layer sees one token per (h, w) pair
                shape = list(x.shape)
                shape[axis + 1 : axis + 2] = [shape[axis + 1] // 2, 2]
                x = x.reshape(shape).mean(axis + 2)
        batch, h, w = x.shape[:3]
        rest, channels = tuple(x.shape[3:-1]), x.shape[-1]
        x = x.reshape(batch, h // 2, 2, w // 2, 2, *rest, channels)
        r = len(rest)
        x = x.permute(0, 1, 3, *range(5, 5 + r), 4, 2, 5 + r).flatten(3 + r)
        return self._project(x)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduction(self.norm(x))


class _PatchMergingV2Nd(_PatchMergingNd):
    """Swin V2's patch merging (normalisation after the linear layer)."""

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x))


# -- MaxViT / CoAtNet / MaxxViT ---------------------------------------------------------------------


class _AttentionClNd:
    """MaxxViT's channels-last attention over any window shape; relative bias for that shape; SDPA."""

    def forward(
        self, x: torch.Tensor, shared_rel_pos: torch.Tensor | None = None, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch = x.shape[0]
        grid = tuple(x.shape[1:-1])
        restore = x.shape[:-1]
        if self.head_first:
            qkv = self.qkv(x).view(batch, -1, self.num_heads, self.dim_head * 3).transpose(1, 2)
            q, k, v = qkv.chunk(3, dim=3)
        else:
            q, k, v = self.qkv(x).reshape(batch, -1, 3, self.num_heads, self.dim_head).transpose(1, 3).unbind(2)
        bias = _rel_pos_bias(self.rel_pos, grid) if self.rel_pos is not None else shared_rel_pos
        x = _sdpa(q, k, v, _add(bias, key_mask), self)
        x = x.transpose(1, 2).reshape(*restore, -1)
        return self.proj_drop(self.proj(x))


class _Attention2dNd:
    """MaxxViT's channels-first attention (CoAtNet's global attention) over any grid; SDPA."""

    def forward(
        self, x: torch.Tensor, shared_rel_pos: torch.Tensor | None = None, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch = x.shape[0]
        grid = tuple(x.shape[2:])
        if self.head_first:
            q, k, v = self.qkv(x).view(batch, self.num_heads, self.dim_head * 3, -1).chunk(3, dim=2)
        else:
            q, k, v = self.qkv(x).reshape(batch, 3, self.num_heads, self.dim_head, -1).unbind(1)
        bias = _rel_pos_bias(self.rel_pos, grid) if self.rel_pos is not None else shared_rel_pos
        q, k, v = (t.transpose(-1, -2) for t in (q, k, v))
        x = _sdpa(q, k, v, _add(bias, key_mask), self).transpose(-1, -2).reshape(batch, -1, *grid)
        return self.proj_drop(self.proj(x))


def _partitioned(attn, x: torch.Tensor, target: Sequence[int], grid: bool) -> torch.Tensor:
    """Channels-last ``x`` padded, partitioned into windows or grids of ``min(target, size)``, attended, restored."""
    sizes = tuple(x.shape[1:-1])
    part = tuple(min(t, s) for t, s in zip(_extend(target, len(sizes), 1), sizes, strict=True))
    padded_x = pad_to_multiple(x, part)
    padded = tuple(padded_x.shape[1:-1])
    mask = _key_padding_mask(sizes, padded, part, grid, x.shape[0], x)
    if grid:
        out = attn(grid_partition(padded_x, part), key_mask=mask)
        return _crop(grid_reverse(out, part, padded), sizes)
    out = attn(window_partition(padded_x, part), key_mask=mask)
    return _crop(window_reverse(out, part, padded), sizes)


class _PartitionAttentionClNd:
    """MaxViT's block / grid attention (channels last) over any number of axes, padded instead of asserted."""

    def _partition_attn(self, x: torch.Tensor) -> torch.Tensor:
        return _partitioned(self.attn, x, self.partition_size, not self.partition_block)


class _ParallelPartitionAttentionNd:
    """MaxxViT-v2's parallel block + grid attention over any number of axes."""

    def _partition_attn(self, x: torch.Tensor) -> torch.Tensor:
        x_window = _partitioned(self.attn_block, x, self.partition_size, False)
        x_grid = _partitioned(self.attn_grid, x, self.partition_size, True)
        return torch.cat([x_window, x_grid], dim=-1)


class _PartitionAttention2dNd:
    """MaxViT's block / grid attention (channels first) over any number of axes."""

    def _partition_attn(self, x: torch.Tensor) -> torch.Tensor:
        def attn(windows: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
            return self.attn(windows.movedim(-1, 1), key_mask=key_mask).movedim(1, -1)

        out = _partitioned(attn, x.movedim(1, -1), self.partition_size, not self.partition_block)
        return out.movedim(-1, 1)


# -- PVT v2 -----------------------------------------------------------------------------------------


class _PvtStageNd:
    """PVT v2's stage: tokens of any number of axes (the feature size is passed on as a tuple)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)  # channels first in, channels last out
        shape = x.shape
        feat_size = tuple(shape[1:-1])
        x = x.reshape(shape[0], -1, shape[-1])
        for blk in self.blocks:
            x = blk(x, feat_size)
        x = self.norm(x)
        return x.reshape(shape[0], *feat_size, -1).movedim(-1, 1).contiguous()


class _PvtMlpNd:
    """PVT v2's MLP with a depthwise convolution over any number of axes."""

    def forward(self, x: torch.Tensor, feat_size: Sequence[int]) -> torch.Tensor:
        x = self.fc1(x)
        batch, _, channels = x.shape
        x = x.transpose(1, 2).reshape(batch, channels, *feat_size)
        x = self.dwconv(self.relu(x))
        x = self.drop(self.act(x.flatten(2).transpose(1, 2)))
        return self.drop(self.fc2(x))


class _PvtAttentionNd:
    """PVT v2's spatial-reduction attention over any number of axes; SDPA."""

    def forward(self, x: torch.Tensor, feat_size: Sequence[int]) -> torch.Tensor:
        batch, tokens, channels = x.shape
        q = self.q(x).reshape(batch, tokens, self.num_heads, -1).permute(0, 2, 1, 3)
        if self.pool is not None or self.sr is not None:
            kv_in = x.permute(0, 2, 1).reshape(batch, channels, *feat_size)
            if self.pool is None:
                # an axis shorter than the reduction kernel (a thin depth) is replicated up to it, never refused
                pads: list[int] = []
                for size, k in reversed(list(zip(kv_in.shape[2:], self.sr.kernel_size, strict=True))):
                    pads += [0, max(k - size, 0)]
                if any(pads):
                    kv_in = F.pad(kv_in, pads, mode="replicate")
            kv_in = self.sr(self.pool(kv_in) if self.pool is not None else kv_in)
            kv_in = self.norm(kv_in.reshape(batch, channels, -1).permute(0, 2, 1))
            if self.pool is not None:
                kv_in = self.act(kv_in)
        else:
            kv_in = x
        kv = self.kv(kv_in).reshape(batch, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        x = _sdpa(q, k, v, None, self)
        x = x.transpose(1, 2).reshape(batch, tokens, channels)
        return self.proj_drop(self.proj(x))


# -- MetaFormer (PoolFormer, ConvFormer, CAFormer) -----------------------------------------------------


class _MetaFormerStageNd:
    """MetaFormer's stage: attention stages flatten every spatial axis into tokens and restore them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        shape = x.shape
        if not self.use_nchw:
            x = x.reshape(shape[0], shape[1], -1).transpose(1, 2)
        x = self.blocks(x)
        if not self.use_nchw:
            x = x.transpose(1, 2).reshape(shape)
        return x


# -- global attention over a set of tokens; MobileViT --------------------------------------------------


class _FlatTokensNd:
    """A channels-first global attention with no spatial operator inside (FastViT's): every spatial axis is
    flattened into one token axis, timm's 2D forward runs on ``(B, C, N, 1)``, and the axes are restored."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            return super().forward(x)
        shape = x.shape
        out = super().forward(x.flatten(2).unsqueeze(-1))
        return out.reshape(*out.shape[:2], *shape[2:])


def _unfold_patches(x: torch.Tensor, patch: Sequence[int]) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``(B, C, *sizes)`` (multiples of ``patch``) -> ``(B, C, P, N)``: P pixels of a patch, N patches."""
    batch, channels, n = x.shape[0], x.shape[1], len(patch)
    counts = tuple(s // p for s, p in zip(x.shape[2:], patch, strict=True))
    shape = [batch, channels]
    for c, p in zip(counts, patch, strict=True):
        shape += [c, p]
    order = [0, 1, *range(3, 2 * n + 2, 2), *range(2, 2 * n + 1, 2)]
    return x.reshape(shape).permute(order).reshape(batch, channels, math.prod(patch), math.prod(counts)), counts


def _fold_patches(x: torch.Tensor, patch: Sequence[int], counts: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`_unfold_patches`."""
    batch, channels, n = x.shape[0], x.shape[1], len(patch)
    x = x.reshape(batch, channels, *patch, *counts)
    order = [0, 1]
    for i in range(n):
        order += [2 + n + i, 2 + i]
    return x.permute(order).reshape(batch, channels, *(c * p for c, p in zip(counts, patch, strict=True)))


def _resize(x: torch.Tensor, sizes: Sequence[int], align_corners: bool) -> torch.Tensor:
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[x.ndim - 2]
    return F.interpolate(x, size=tuple(sizes), mode=mode, align_corners=align_corners)


class _MobileVitBlockNd:
    """MobileViT's block: patches of ``patch_size`` per axis (square patches extended along added axes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_1x1(self.conv_kxk(x))
        sizes = tuple(x.shape[2:])
        patch = _extend(self.patch_size, len(sizes), 1)
        new = tuple(-(-s // p) * p for s, p in zip(sizes, patch, strict=True))
        if new != sizes:
            x = _resize(x, new, False)
        batch, channels = x.shape[:2]
        x, counts = _unfold_patches(x, patch)  # B, C, P, N
        x = x.permute(0, 2, 3, 1).reshape(batch * math.prod(patch), math.prod(counts), channels)
        x = self.norm(self.transformer(x))
        x = x.reshape(batch, math.prod(patch), math.prod(counts), channels).permute(0, 3, 1, 2)
        x = _fold_patches(x, patch, counts)
        if new != sizes:
            x = _resize(x, sizes, False)
        x = self.conv_proj(x)
        if self.conv_fusion is not None:
            x = self.conv_fusion(torch.cat((shortcut, x), dim=1))
        return x


class _MobileVitV2BlockNd:
    """MobileViT V2's block over any number of axes. Its transformer works on ``(B, C, P, N)`` with 1x1
    convolutions; in N-D it gets ``(B, C, P, 1, ..., N)``, so its (converted) 1x1 convolutions and its
    reductions over the last axis see the patches where timm's code expects them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = tuple(x.shape[2:])
        n = len(sizes)
        patch = _extend(self.patch_size, n, 1)
        new = tuple(-(-s // p) * p for s, p in zip(sizes, patch, strict=True))
        if new != sizes:
            x = _resize(x, new, True)
        x = self.conv_1x1(self.conv_kxk(x))
        x, counts = _unfold_patches(x, patch)
        batch, channels, pixels, patches = x.shape
        x = x.reshape(batch, channels, pixels, *(1,) * (n - 2), patches)
        x = self.norm(self.transformer(x))
        x = _fold_patches(x.reshape(batch, channels, pixels, patches), patch, counts)
        return self.conv_proj(x)


# -- DaViT --------------------------------------------------------------------------------------------


class _PaddedStemNd:
    """A stem that pads each axis to its stride before its convolution (DaViT's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for size, st in reversed(list(zip(x.shape[2:], self.conv.stride, strict=True))):
            pads += [0, (st - size % st) % st]
        if any(pads):
            x = F.pad(x, pads)
        return self.norm(self.conv(x))


class _DavitDownsampleNd:
    """DaViT's downsampling: normalise, pad each axis to an even kernel, convolve."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        if self.even_k:
            pads: list[int] = []
            for size, k in reversed(list(zip(x.shape[2:], self.conv.kernel_size, strict=True))):
                pads += [0, (k - size % k) % k]
            if any(pads):
                x = F.pad(x, pads)
        return self.conv(x)


class _DavitSpatialBlockNd:
    """DaViT's window block over any number of axes: timm's windows along height and width (padded as timm
    pads), ``min(window, size)`` along added axes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        batch, channels, sizes = shape[0], shape[1], tuple(shape[2:])
        window = tuple(self.window_size) + tuple(
            min(self.window_size[0], s) if self.window_size[0] == self.window_size[1] else 1 for s in sizes[2:]
        )
        shortcut = self.cpe1(x).flatten(2).transpose(1, 2)
        x = self.norm1(shortcut).view(batch, *sizes, channels)
        x = pad_to_multiple(x, window)
        padded = tuple(x.shape[1:-1])
        windows = self.attn(window_partition(x, window).reshape(-1, math.prod(window), channels))
        x = _crop(window_reverse(windows.reshape(-1, *window, channels), window, padded), sizes)
        x = shortcut + self.drop_path1(x.reshape(batch, -1, channels))
        x = self.cpe2(x.transpose(1, 2).reshape(shape))
        if self.mlp is not None:
            x = x.flatten(2).transpose(1, 2)
            x = x + self.drop_path2(self.mlp(self.norm2(x)))
            x = x.transpose(1, 2).reshape(shape)
        return x


class _DavitChannelBlockNd:
    """DaViT's channel-attention block over any number of axes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = self.cpe1(x).flatten(2).transpose(1, 2)
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        x = self.cpe2(x.transpose(1, 2).reshape(shape))
        if self.mlp is not None:
            x = x.flatten(2).transpose(1, 2)
            x = x + self.drop_path2(self.mlp(self.norm2(x)))
            x = x.transpose(1, 2).reshape(shape)
        return x


# -- TinyViT (LeViT-style biases over absolute offsets) -----------------------------------------------


def absolute_offset_bias(biases: torch.Tensor, resolution: Sequence[int], window: Sequence[int]) -> torch.Tensor:
    """``(heads, N, N)`` bias of an N-D window from LeViT-style biases ``(heads, rh * rw)`` indexed by the
    absolute (height, width) offset; added axes share the entry (the 2D table copied along them). A window
    larger than ``resolution`` interpolates the table (bilinear, offset 0 kept)."""
    rows, cols = int(resolution[0]), int(resolution[1])
    table = biases.reshape(biases.shape[0], rows, cols)
    need = (max(rows, window[0]), max(cols, window[1]))
    if need != (rows, cols):
        table = F.interpolate(table.unsqueeze(0), size=need, mode="bilinear", align_corners=True)[0]
    offsets = relative_offsets(window, biases.device).abs()
    return table[:, offsets[0], offsets[1]]


class _TinyVitAttentionNd:
    """TinyViT's attention for an N-D window (passed by the block); SDPA."""

    def forward(self, x: torch.Tensor, window: Sequence[int] | None = None) -> torch.Tensor:
        window = tuple(window) if window is not None else tuple(self.resolution)
        batch, tokens, _ = x.shape
        x = self.norm(x)
        q, k, v = (
            self.qkv(x).view(batch, tokens, self.num_heads, -1).split([self.key_dim, self.key_dim, self.val_dim], 3)
        )
        q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))
        bias = absolute_offset_bias(self.attention_biases, self.resolution, window).unsqueeze(0).to(q.dtype)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, self.out_dim))


class _TinyVitBlockNd:
    """TinyViT's block on ``(B, *spatial, C)``: timm's window along height and width (padded as timm pads),
    ``min(window, size)`` along added axes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        batch, sizes, channels = shape[0], tuple(shape[1:-1]), shape[-1]
        window = (self.window_size,) * 2 + tuple(min(self.window_size, s) for s in sizes[2:])
        shortcut = x
        padded_x = pad_to_multiple(x, window)
        padded = tuple(padded_x.shape[1:-1])
        windows = window_partition(padded_x, window).reshape(-1, math.prod(window), channels)
        windows = self.attn(windows, window=window)
        x = _crop(window_reverse(windows.reshape(-1, *window, channels), window, padded), sizes)
        x = shortcut + self.drop_path1(x)
        x = self.local_conv(x.movedim(-1, 1))
        x = x.reshape(batch, channels, -1).transpose(1, 2)
        x = x + self.drop_path2(self.mlp(x))
        return x.reshape(shape)


# -- NextViT -------------------------------------------------------------------------------------------


class _NextTransformerBlockNd:
    """NextViT's transformer block: its efficient attention sees every spatial axis flattened into tokens."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        shape = x.shape
        out = self.norm1(x).reshape(shape[0], shape[1], -1).transpose(-1, -2)
        out = self.mhsa_drop_path(self.e_mhsa(out))
        x = x + out.transpose(-1, -2).reshape(shape)
        out = self.projection(x)
        out = out + self.mhca_drop_path(self.mhca(out))
        x = torch.cat([x, out], dim=1)
        return x + self.mlp_drop_path(self.mlp(self.norm2(x)))


# -- EfficientViT (MIT) -------------------------------------------------------------------------------


class _LiteMlaNd:
    """EfficientViT's multi-scale linear attention over any number of axes (tokens: all spatial positions)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, sizes = x.shape[0], tuple(x.shape[2:])
        qkv = self.qkv(x)
        qkv = torch.cat([qkv, *(op(qkv) for op in self.aggreg)], dim=1)
        qkv = qkv.reshape(batch, -1, 3 * self.dim, math.prod(sizes)).transpose(-1, -2)
        q, k, v = qkv.chunk(3, dim=-1)
        q, k = self.kernel_func(q), self.kernel_func(k)
        v = F.pad(v, (0, 1), mode="constant", value=1.0)
        if v.device.type != "meta":
            with torch.autocast(device_type=v.device.type, enabled=False):
                out = self._attn(q, k, v)
        else:
            out = self._attn(q, k, v)
        return self.proj(out.transpose(-1, -2).reshape(batch, -1, *sizes))


# module-qualified timm class -> N-D mixin (used in 2D and N-D alike)
ATTENTION_MIXINS: dict[str, type] = {
    "timm.layers.patch_embed.PatchEmbed": _PatchEmbedNd,
    "timm.models.swin_transformer.WindowAttention": _SwinWindowAttentionNd,
    "timm.models.swin_transformer.SwinTransformerBlock": _SwinBlockNd,
    "timm.models.swin_transformer.PatchMerging": _PatchMergingNd,
    "timm.models.swin_transformer_v2.WindowAttention": _SwinV2WindowAttentionNd,
    "timm.models.swin_transformer_v2.SwinTransformerV2Block": _SwinV2BlockNd,
    "timm.models.swin_transformer_v2.PatchMerging": _PatchMergingV2Nd,
    "timm.models.maxxvit.AttentionCl": _AttentionClNd,
    "timm.models.maxxvit.Attention2d": _Attention2dNd,
    "timm.models.maxxvit.PartitionAttentionCl": _PartitionAttentionClNd,
    "timm.models.maxxvit.PartitionAttention2d": _PartitionAttention2dNd,
    "timm.models.maxxvit.ParallelPartitionAttention": _ParallelPartitionAttentionNd,
    "timm.models.pvt_v2.PyramidVisionTransformerStage": _PvtStageNd,
    "timm.models.pvt_v2.MlpWithDepthwiseConv": _PvtMlpNd,
    "timm.models.pvt_v2.Attention": _PvtAttentionNd,
    "timm.models.metaformer.MetaFormerStage": _MetaFormerStageNd,
    "timm.models.fastvit.Attention": _FlatTokensNd,
    "timm.models.mobilevit.MobileVitBlock": _MobileVitBlockNd,
    "timm.models.mobilevit.MobileVitV2Block": _MobileVitV2BlockNd,
    "timm.models.davit.Stem": _PaddedStemNd,
    "timm.models.davit.Downsample": _DavitDownsampleNd,
    "timm.models.davit.SpatialBlock": _DavitSpatialBlockNd,
    "timm.models.davit.ChannelBlock": _DavitChannelBlockNd,
    "timm.models.tiny_vit.Attention": _TinyVitAttentionNd,
    "timm.models.tiny_vit.TinyVitBlock": _TinyVitBlockNd,
    "timm.models.nextvit.NextTransformerBlock": _NextTransformerBlockNd,
    "timm.models.efficientvit_mit.LiteMLA": _LiteMlaNd,
}
