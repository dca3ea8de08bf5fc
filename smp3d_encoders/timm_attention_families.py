"""N-D forwards for more of timm's attention and token-mixer families (EfficientFormer, EdgeNeXt, ...).

Same mechanism as :mod:`smp3d_encoders.timm_attention`: each class here is a mixin placed before timm's
class (matched by module and class name in :data:`FAMILY_MIXINS`), replacing only ``forward`` (or a
model's ``forward_intermediates`` where that is the code unpacking ``B, C, H, W``). Parameters, names
and state-dict keys stay timm's, and the same classes are used in 2D, where they give timm's outputs
wherever timm accepts the input.

The rules are the ones of :mod:`.timm_attention`:

- ``B, C, H, W`` unpacking becomes ``B, C, *spatial``; reshapes flatten or restore every spatial axis.
- Position biases indexed by 2D offsets (LeViT-style absolute offsets, relative tables) are inflated by
  copying along each added offset axis: the bias of a token pair is the one of its (height, width)
  offset. A grid larger than the table along height or width interpolates the table.
- Absolute position encodings of a 2D grid (EdgeNeXt's Fourier features) are computed for the
  (height, width) grid and copied along the added axes.

With these rules a depth-constant volume (circular depth padding) gives the 2D features at every depth
slice: along depth every token sees copies of the same keys with the same biases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .timm_attention import (
    _crop,
    _PatchMergingNd,
    _rel_pos_bias,
    _SwinBlockNd,
    absolute_offset_bias,
    pad_to_multiple,
    relative_position_bias,
    window_partition,
    window_reverse,
)

__all__ = ["FAMILY_MIXINS"]


def _take_indices(num: int, indices) -> tuple[list[int], int]:
    from timm.models._features import feature_take_indices

    return feature_take_indices(num, indices)


def _tokens_to_map(x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """``(B, N, C)`` tokens -> ``(B, C, *sizes)``."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *sizes)


def _levit_bias(biases: torch.Tensor, sizes: Sequence[int] | None, tokens: int) -> torch.Tensor:
    """``(heads, N, N)`` LeViT-style bias (``biases`` of ``(heads, r * r)`` indexed by absolute offsets) for
    a token grid of ``sizes`` (a square grid of ``tokens`` when not given, timm's own assumption)."""
    res = math.isqrt(biases.shape[1])
    if sizes is None:
        side = math.isqrt(tokens)
        sizes = (side, side)
    return absolute_offset_bias(biases, (res, res), tuple(sizes))


# -- EfficientFormer (V1) ------------------------------------------------------------------------------


class _EfficientFormerAttentionNd:
    """EfficientFormer's global attention with its LeViT-style bias for the actual token grid; SDPA."""

    def forward(self, x: torch.Tensor, sizes: Sequence[int] | None = None) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, self.num_heads, -1).permute(0, 2, 1, 3)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.val_dim], dim=3)
        bias = _levit_bias(self.attention_biases, sizes, tokens).unsqueeze(0).to(q.dtype)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, self.val_attn_dim))


class _EfficientFormerNd:
    """EfficientFormer's intermediates over any number of axes: the token grid of the last stage is the
    actual one (timm halves H and W of the previous stage), passed to its attention blocks."""

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices=None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        if output_fmt != "NCHW":
            raise ValueError(f"EfficientFormer gives NCHW intermediates only, got output_fmt={output_fmt!r}.")
        take, max_index = _take_indices(len(self.stages), indices)
        last = self.num_stages - 1
        stages = self.stages[: max_index + 1] if stop_early else self.stages
        intermediates = []
        x = self.stem(x)
        sizes: tuple[int, ...] = tuple(x.shape[2:])
        for idx, stage in enumerate(stages):
            x = stage.downsample(x)
            if x.ndim > 3:
                sizes = tuple(x.shape[2:])
            for block in stage.blocks:
                name = type(block).__name__
                if name == "Flat":
                    x = x.flatten(2).transpose(1, 2)
                elif name.startswith("MetaBlock1d"):
                    x = x + block.drop_path1(block.ls1(block.token_mixer(block.norm1(x), sizes)))
                    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
                else:
                    x = block(x)
            if idx in take:
                if x.ndim == 3:
                    out = self.norm(x) if norm and idx == last else x
                    intermediates.append(_tokens_to_map(out, sizes))
                else:
                    intermediates.append(x)
        if intermediates_only:
            return intermediates
        if len(stages) - 1 == last:
            x = self.norm(x)
        return x, intermediates


# -- SwiftFormer --------------------------------------------------------------------------------------


class _SwiftFormerAttentionNd:
    """SwiftFormer's additive attention over every spatial axis flattened into tokens."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, sizes = x.shape[0], tuple(x.shape[2:])
        x = x.flatten(2).transpose(1, 2)
        query = F.normalize(self.to_query(x), dim=-1)
        key = F.normalize(self.to_key(x), dim=-1)
        attn = F.normalize(query @ self.w_g * self.scale_factor, dim=1)
        attn = (attn * query).sum(dim=1, keepdim=True)
        out = self.final(self.proj(attn * key) + query)
        return out.transpose(1, 2).reshape(batch, -1, *sizes)


# -- EdgeNeXt -----------------------------------------------------------------------------------------


def _fourier_features(module: torch.nn.Module, sizes: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """EdgeNeXt's 2D sine/cosine features ``(1, 2 * hidden, H, W, 1, ...)`` of the (height, width) grid, before
    the projection, with one entry along each added axis (copied along them by broadcasting)."""
    h, w = int(sizes[0]), int(sizes[1])
    eps = 1e-6
    ys = torch.arange(1, h + 1, device=like.device, dtype=torch.float32)
    xs = torch.arange(1, w + 1, device=like.device, dtype=torch.float32)
    ys = ys / (h + eps) * module.scale
    xs = xs / (w + eps) * module.scale
    dim_t = torch.arange(module.hidden_dim, device=like.device).div(2, rounding_mode="floor").to(torch.float32)
    dim_t = module.temperature ** (2 * dim_t / module.hidden_dim)

    def encode(values: torch.Tensor) -> torch.Tensor:  # (n,) -> (n, hidden): sin and cos interleaved
        v = values[:, None] / dim_t
        return torch.stack((v[:, 0::2].sin(), v[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(ys)[:, None, :].expand(h, w, -1)
    pos_x = encode(xs)[None, :, :].expand(h, w, -1)
    pos = torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1)  # (2 * hidden, H, W)
    return pos.reshape(1, *pos.shape, *(1,) * (len(sizes) - 2))


class _SplitTransposeBlockNd:
    """EdgeNeXt's split depthwise-convolution + cross-covariance attention block over any number of axes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        parts = x.chunk(len(self.convs) + 1, dim=1)
        outs = []
        part = parts[0]
        for i, conv in enumerate(self.convs):
            if i > 0:
                part = part + parts[i]
            part = conv(part)
            outs.append(part)
        outs.append(parts[-1])
        x = torch.cat(outs, 1)
        batch, channels, sizes = x.shape[0], x.shape[1], tuple(x.shape[2:])
        x = x.reshape(batch, channels, -1).transpose(1, 2)
        if self.pos_embd is not None:
            pos = _fourier_features(self.pos_embd, sizes, x)
            proj = self.pos_embd.token_projection
            pos = proj(pos.to(proj.weight.dtype))  # pointwise: projected once, then copied along added axes
            x = x + pos.expand(1, channels, *sizes).reshape(1, channels, -1).transpose(1, 2)
        x = x + self.drop_path(self.gamma_xca * self.xca(self.norm_xca(x)))
        x = self.mlp(self.norm(x.reshape(batch, *sizes, channels)))
        if self.gamma is not None:
            x = self.gamma * x
        return shortcut + self.drop_path(x.movedim(-1, 1))


# -- shared helpers -------------------------------------------------------------------------------------


def _grid_coords(sizes: Sequence[int], device: torch.device, step: int = 1) -> torch.Tensor:
    """``(2, N)`` (height, width) coordinates of the ``N = prod(sizes)`` tokens of an N-D grid (row-major)."""
    axes = [torch.arange(s, device=device) * step for s in sizes]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))[:2].flatten(1)


def offset_bias(
    biases: torch.Tensor,
    resolution: Sequence[int],
    q_sizes: Sequence[int],
    k_sizes: Sequence[int] | None = None,
    q_step: int = 1,
) -> torch.Tensor:
    """``(heads, Nq, Nk)`` LeViT-style bias between an N-D query grid and an N-D key grid.

    ``biases`` ``(heads, rh * rw)`` hold one entry per absolute (height, width) offset, as in LeViT,
    EfficientFormer and EfficientViT (MSRA); query ``i`` sits at ``q_step * i`` of the key grid. Offsets
    along added axes share their (height, width) entry (the 2D table copied along them); offsets beyond
    the table interpolate it (bilinear, offset 0 kept).
    """
    k_sizes = tuple(q_sizes) if k_sizes is None else tuple(k_sizes)
    if isinstance(resolution, int):
        resolution = (resolution, resolution)
    rows, cols = int(resolution[0]), int(resolution[1])
    table = biases.reshape(biases.shape[0], rows, cols)
    q = _grid_coords(q_sizes, biases.device, q_step)
    k = _grid_coords(k_sizes, biases.device)
    offsets = (q[:, :, None] - k[:, None, :]).abs()
    # the largest offset along an axis, from the sizes (no data-dependent read)
    need = (
        max(rows, k_sizes[0], (q_sizes[0] - 1) * q_step + 1),
        max(cols, k_sizes[1], (q_sizes[1] - 1) * q_step + 1),
    )
    if need != (rows, cols):
        table = F.interpolate(table.unsqueeze(0), size=need, mode="bilinear", align_corners=True)[0]
    return table[:, offsets[0], offsets[1]]


def _pointwise(conv: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution (2D or converted) applied over the channels of a tensor of any rank (talking heads)."""
    weight = conv.weight.reshape(conv.weight.shape[0], conv.weight.shape[1])
    return F.linear(x.movedim(1, -1), weight, conv.bias).movedim(-1, 1)


def _resize_to(x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[x.ndim - 2]
    return F.interpolate(x, size=tuple(sizes), mode=mode, align_corners=False)


def _crop_map(x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """The first ``sizes`` entries of each spatial axis of a channels-first map."""
    if tuple(x.shape[2:]) == tuple(sizes):
        return x
    return x[(slice(None), slice(None), *(slice(0, s) for s in sizes))]


def _pad_end(x: torch.Tensor, multiples: Sequence[int]) -> torch.Tensor:
    """Zero-pad each spatial axis of a channels-first map at its end to a multiple."""
    pads: list[int] = []
    for size, m in reversed(list(zip(x.shape[2:], multiples, strict=True))):
        pads += [0, (m - size % m) % m]
    return F.pad(x, pads) if any(pads) else x


# -- EfficientFormer V2 ---------------------------------------------------------------------------------


class _EfficientFormerV2AttentionNd:
    """EfficientFormer V2's attention (optionally on a strided grid, upsampled back) for any grid."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, in_sizes = x.shape[0], tuple(x.shape[2:])
        if self.stride_conv is not None:
            x = self.stride_conv(x)
        sizes = tuple(x.shape[2:])
        q = self.q(x).reshape(batch, self.num_heads, -1, math.prod(sizes)).transpose(2, 3)
        k = self.k(x).reshape(batch, self.num_heads, -1, math.prod(sizes))
        v = self.v(x)
        v_local = self.v_local(v)
        v = v.reshape(batch, self.num_heads, -1, math.prod(sizes)).transpose(2, 3)
        attn = (q @ k) * self.scale + offset_bias(self.attention_biases, self.resolution, sizes)
        attn = _pointwise(self.talking_head2, _pointwise(self.talking_head1, attn).softmax(dim=-1))
        x = (attn @ v).transpose(2, 3).reshape(batch, self.dh, *sizes) + v_local
        if self.upsample is not None:
            x = _resize_to(x, in_sizes)
        return self.proj(self.act(x))


class _EfficientFormerV2AttentionDownsampleNd:
    """EfficientFormer V2's downsampling attention: queries on the grid of stride 2, keys on the input grid."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, sizes = x.shape[0], tuple(x.shape[2:])
        q = self.q(x)
        q_sizes = tuple(q.shape[2:])
        q = q.reshape(batch, self.num_heads, -1, math.prod(q_sizes)).transpose(2, 3)
        k = self.k(x).reshape(batch, self.num_heads, -1, math.prod(sizes))
        v = self.v(x)
        v_local = self.v_local(v)
        v = v.reshape(batch, self.num_heads, -1, math.prod(sizes)).transpose(2, 3)
        bias = offset_bias(self.attention_biases, self.resolution, q_sizes, sizes, q_step=2)
        attn = ((q @ k) * self.scale + bias).softmax(dim=-1)
        x = (attn @ v).transpose(2, 3).reshape(batch, self.dh, *q_sizes) + v_local
        return self.proj(self.act(x))


# -- EfficientViT (MSRA) -----------------------------------------------------------------------------------


class _CascadedGroupAttentionNd:
    """EfficientViT (MSRA)'s cascaded group attention on an N-D window (LeViT bias copied along added axes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, sizes = x.shape[0], tuple(x.shape[2:])
        feats_in = x.chunk(len(self.qkvs), dim=1)
        bias = offset_bias(self.attention_biases, (self.resolution,) * 2, sizes)
        outs = []
        feat = feats_in[0]
        for head, (qkv, dws) in enumerate(zip(self.qkvs, self.dws, strict=True)):
            if head > 0:
                feat = feat + feats_in[head]
            q, k, v = qkv(feat).split([self.key_dim, self.key_dim, self.val_dim], dim=1)
            q, k, v = dws(q).flatten(2), k.flatten(2), v.flatten(2)
            attn = ((q * self.scale).transpose(-2, -1) @ k + bias[head]).softmax(dim=-1)
            feat = (v @ attn.transpose(-2, -1)).reshape(batch, self.val_dim, *sizes)
            outs.append(feat)
        return self.proj(torch.cat(outs, 1))


class _LocalWindowAttentionNd:
    """EfficientViT (MSRA)'s window attention: timm's window along height and width (padded as timm pads),
    ``min(window, size)`` along added axes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = tuple(x.shape[2:])
        ws = self.attn.resolution
        window = (ws, ws) + tuple(min(ws, s) for s in sizes[2:])
        if sizes == window:
            return self.attn(x)
        x = _pad_end(x, window)
        padded = tuple(x.shape[2:])
        windows = window_partition(x.movedim(1, -1), window).movedim(-1, 1)
        windows = self.attn(windows).movedim(1, -1)
        x = window_reverse(windows, window, padded).movedim(-1, 1)
        return _crop_map(x, sizes).contiguous()


# -- SHViT ----------------------------------------------------------------------------------------------


class _ShsaNd:
    """SHViT's single-head attention on a part of the channels, over every spatial axis."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, sizes = x.shape[0], tuple(x.shape[2:])
        x1, x2 = torch.split(x, [self.pdim, self.dim - self.pdim], dim=1)
        q, k, v = torch.split(self.qkv(self.pre_norm(x1)), [self.qk_dim, self.qk_dim, self.pdim], dim=1)
        q, k, v = q.flatten(2), k.flatten(2), v.flatten(2)
        attn = ((q.transpose(-2, -1) @ k) * self.scale).softmax(dim=-1)
        x1 = (v @ attn.transpose(-2, -1)).reshape(batch, self.pdim, *sizes)
        return self.proj(torch.cat([x1, x2], dim=1))


# -- LowFormer, CPUBone --------------------------------------------------------------------------------


class _ConvAttentionNd:
    """LowFormer's / CPUBone's attention on a strided grid (depthwise projection, transposed-convolution
    upsampling), over every spatial axis; the output is cropped to the input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = tuple(x.shape[2:])
        if getattr(self, "small_kernels", False) and self.att_stride > 1:
            x = _pad_end(x, (self.att_stride,) * len(sizes))
        xout = self.pwise(self.conv_proj(x))
        batch, small = xout.shape[0], tuple(xout.shape[2:])
        qkv = xout.reshape(batch, self.num_heads, self.num_keys * self.head_dim, -1).transpose(2, 3)
        q, k, v = qkv.chunk(3, dim=3)
        values = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        out = self.o_proj(values.transpose(2, 3).reshape(batch, self.o_proj_inpdim, *small))
        return _crop_map(self.upsampling(out), sizes)


# -- Twins (PCPVT, SVT) ---------------------------------------------------------------------------------


class _TwinsPatchEmbedNd:
    """Twins' patch embedding: each axis padded to the patch size (never asserted); the token grid returned."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        x = self.proj(_pad_end(x, self.proj.stride))
        sizes = tuple(x.shape[2:])
        return self.norm(x.flatten(2).transpose(1, 2)), sizes


class _LocallyGroupedAttnNd:
    """Twins' locally grouped (window) attention: timm's window along height and width (zero-padded as timm
    pads), ``min(window, size)`` along added axes."""

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        batch, tokens, channels = x.shape
        sizes = tuple(size)
        window = (self.ws, self.ws) + tuple(min(self.ws, s) for s in sizes[2:])
        x = pad_to_multiple(x.view(batch, *sizes, channels), window)
        padded = tuple(x.shape[1:-1])
        windows = window_partition(x, window).reshape(-1, math.prod(window), channels)
        qkv = self.qkv(windows).reshape(windows.shape[0], windows.shape[1], 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        dropout = self.attn_drop.p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout).transpose(1, 2)
        out = window_reverse(out.reshape(-1, *window, channels), window, padded)
        x = _crop(out, sizes).reshape(batch, tokens, channels)
        return self.proj_drop(self.proj(x))


class _GlobalSubSampleAttnNd:
    """Twins' global attention with spatially reduced keys and values over an N-D grid; an axis shorter than
    the reduction kernel (a thin depth) is replicated up to it, never refused."""

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        batch, tokens, channels = x.shape
        q = self.q(x).reshape(batch, tokens, self.num_heads, -1).transpose(1, 2)
        if self.sr is not None:
            kv_in = x.transpose(1, 2).reshape(batch, channels, *size)
            pads: list[int] = []
            for s, k in reversed(list(zip(kv_in.shape[2:], self.sr.kernel_size, strict=True))):
                pads += [0, max(k - s, 0)]
            if any(pads):
                kv_in = F.pad(kv_in, pads, mode="replicate")
            x = self.norm(self.sr(kv_in).reshape(batch, channels, -1).transpose(1, 2))
        kv = self.kv(x).reshape(batch, -1, 2, self.num_heads, channels // self.num_heads).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        dropout = self.attn_drop.p if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(batch, tokens, channels)))


class _TwinsNd:
    """Twins' intermediates over any number of axes (token grids as the patch embeddings return them)."""

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices=None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        if output_fmt != "NCHW":
            raise ValueError(f"Twins gives NCHW intermediates only, got output_fmt={output_fmt!r}.")
        take, max_index = _take_indices(len(self.blocks), indices)
        last = len(self.blocks) - 1
        count = max_index + 1 if stop_early else len(self.blocks)
        intermediates = []
        i = 0
        for i in range(count):
            x, sizes = self.patch_embeds[i](x)
            x = self.pos_drops[i](x)
            for j, block in enumerate(self.blocks[i]):
                x = block(x, sizes)
                if j == 0:
                    x = self.pos_block[i](x, sizes)
            if i < last:
                x = _tokens_to_map(x, sizes).contiguous()
                if i in take:
                    intermediates.append(x)
            elif i in take:
                intermediates.append(_tokens_to_map(self.norm(x) if norm else x, sizes).contiguous())
        if intermediates_only:
            return intermediates
        if i == last:
            x = self.norm(x)
        return x, intermediates


# -- GCViT ---------------------------------------------------------------------------------------------


def _window_of(window: Sequence[int], sizes: Sequence[int]) -> tuple[int, ...]:
    """timm's (height, width) window, and ``min(window, size)`` along each added axis (square windows)."""
    extra = tuple(min(window[0], s) if window[0] == window[1] else 1 for s in sizes[2:])
    return (int(window[0]), int(window[1])) + extra


class _GcVitWindowAttentionNd:
    """GCViT's window attention (local, or with the stage's global query) for an N-D window; SDPA."""

    def forward(
        self, x: torch.Tensor, q_global: torch.Tensor | None = None, window: Sequence[int] | None = None
    ) -> torch.Tensor:
        batch, tokens, channels = x.shape
        window = tuple(window) if window is not None else tuple(self.window_size)
        if self.use_global and q_global is not None:
            kv = self.qkv(x).reshape(batch, tokens, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            k, v = kv.unbind(0)
            q = q_global.repeat_interleave(batch // q_global.shape[0], dim=0)
            q = q.reshape(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)
        else:
            qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
        bias = _rel_pos_bias(self.rel_pos, window).to(q.dtype)
        dropout = self.attn_drop.p if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, scale=self.scale)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(batch, tokens, channels)))


class _GcVitBlockNd:
    """GCViT's block on ``(B, *spatial, C)``: N-D windows, zero-padded to a multiple (timm asserts one); the
    global query (pooled to the window at timm's ``img_size``) is resized to the window of the actual input."""

    def _window_attn(self, x: torch.Tensor, q_global: torch.Tensor | None = None) -> torch.Tensor:
        sizes, channels = tuple(x.shape[1:-1]), x.shape[-1]
        window = _window_of(self.window_size, sizes)
        x = pad_to_multiple(x, window)
        padded = tuple(x.shape[1:-1])
        windows = window_partition(x, window).reshape(-1, math.prod(window), channels)
        if q_global is not None and tuple(q_global.shape[1:-1]) != window:
            q_global = _resize_to(q_global.movedim(-1, 1), window).movedim(1, -1)
        out = self.attn(windows, q_global, window)
        return _crop(window_reverse(out.reshape(-1, *window, channels), window, padded), sizes)


# -- Swin V2 (CR) ------------------------------------------------------------------------------------


class _SwinV2CrAttentionNd:
    """Swin V2 CR's scaled cosine window attention for windows of any shape: its continuous position bias (an
    MLP of log-spaced (height, width) offsets) is evaluated once per offset and copied along added axes."""

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, window: Sequence[int] | None = None
    ) -> torch.Tensor:
        batch, tokens, channels = x.shape
        window = tuple(window) if window is not None else tuple(self.window_size)
        qkv = self.qkv(x).view(batch, tokens, 3, self.num_heads, channels // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        wh, ww = window[0], window[1]
        dh = torch.arange(-(wh - 1), wh, device=x.device, dtype=torch.float32)
        dw = torch.arange(-(ww - 1), ww, device=x.device, dtype=torch.float32)
        coords = torch.stack(torch.meshgrid(dh, dw, indexing="ij"), dim=-1).reshape(-1, 2)
        coords = (torch.sign(coords) * torch.log1p(coords.abs())).to(self.logit_scale.dtype)
        table = self.meta_mlp(coords).reshape(2 * wh - 1, 2 * ww - 1, self.num_heads).permute(2, 0, 1)
        bias = relative_position_bias(table, window).unsqueeze(0)
        if mask is not None:
            windows = mask.shape[0]
            mask = mask.view(1, windows, 1, tokens, tokens).expand(batch // windows, -1, self.num_heads, -1, -1)
            bias = bias + mask.reshape(-1, self.num_heads, tokens, tokens)
        logit_scale = torch.clamp(self.logit_scale.reshape(1, self.num_heads, 1, 1), max=math.log(1.0 / 0.01)).exp()
        q = F.normalize(q, dim=-1) * logit_scale
        dropout = self.attn_drop.p if self.training else 0.0
        x = F.scaled_dot_product_attention(
            q, F.normalize(k, dim=-1), v, attn_mask=bias.to(q.dtype), dropout_p=dropout, scale=1.0
        )
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(batch, tokens, -1)))


class _SwinV2CrBlockNd(_SwinBlockNd):
    """Swin V2 CR's block (post-normalised branches, optional main-branch norm) on ``(B, *spatial, C)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x + self.drop_path1(self.norm1(self._attn(x)))
        x = x.reshape(shape[0], -1, shape[-1])
        x = x + self.drop_path2(self.norm2(self.mlp(x)))
        return self.norm3(x).reshape(shape)


class _SwinV2CrPatchEmbedNd:
    """Swin V2 CR's patch embedding: each axis padded to the patch size (no size check), channels-first out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(_pad_end(x, self.proj.stride))
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


# -- timm.layers.attention2d (MobileNet V4 hybrids, MobileNet V5) --------------------------------------


class _MultiQueryAttention2dNd:
    """timm's multi-query attention (optionally strided queries / keys) on channels-first maps of any rank."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        q = self.query(x)
        q_sizes = tuple(q.shape[2:])
        q = self._reshape_projected_query(q, self.num_heads, self.key_dim)
        k = self._reshape_input(self.key(x))
        v = self._reshape_input(self.value(x))
        dropout = self.attn_drop.p if self.training else 0.0
        if self.einsum:
            attn = torch.einsum("blhk,bpk->blhp", q, k) * self.scale
            if attn_mask is not None:
                attn = attn + attn_mask
            o = torch.einsum("blhp,bpk->blhk", self.attn_drop(attn.softmax(dim=-1)), v)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout, scale=self.scale)
            o = o.transpose(1, 2)
        o = o.reshape(o.shape[0], *q_sizes, -1).movedim(-1, 1).contiguous()
        return self.output(o)


class _Attention2dNd:
    """timm's multi-head attention over channels-first maps of any rank (every spatial axis a token axis)."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, sizes = x.shape[0], tuple(x.shape[2:])
        if self.head_first:
            q, k, v = self.qkv(x).view(batch, self.num_heads, self.dim_head * 3, -1).chunk(3, dim=2)
        else:
            q, k, v = self.qkv(x).reshape(batch, 3, self.num_heads, self.dim_head, -1).unbind(1)
        dropout = self.attn_drop.p if self.training else 0.0
        x = F.scaled_dot_product_attention(
            q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2), attn_mask=attn_mask, dropout_p=dropout
        )
        x = x.transpose(-1, -2).reshape(batch, -1, *sizes)
        return self.proj_drop(self.proj(x))


# -- EfficientViM ----------------------------------------------------------------------------------------


class _HsmSsdNd:
    """EfficientViM's hidden-state mixer (state-space duality) over every spatial axis flattened into tokens;
    its depthwise convolution sees the N-D map."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, sizes = x.shape[0], tuple(x.shape[2:])
        x = x.flatten(2)
        bcdt = self.dw(self.BCdt_proj(x).reshape(batch, -1, *sizes)).flatten(2)
        b, c, dt = torch.split(bcdt, [self.state_dim, self.state_dim, self.state_dim], dim=1)
        a = (dt + self.A.view(1, -1, 1)).softmax(-1)
        h = x @ (a * b).transpose(-2, -1)
        h, z = torch.split(self.hz_proj(h), [self.d_inner, self.d_inner], dim=1)
        h = self.out_proj(h * self.act(z) + h * self.D)
        y = (h @ c).reshape(batch, -1, *sizes).contiguous()
        return y, h


# -- iFormer ------------------------------------------------------------------------------------------


class _ShmaNd:
    """iFormer's single-head modulation attention, global or in N-D windows (timm's along height and width,
    ``min(window, size)`` along added axes; zero-padded as timm pads, cropped after)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = tuple(x.shape[2:])
        window = padded = None
        if self.window_size and self.window_size > 0:
            window = (self.window_size,) * 2 + tuple(min(self.window_size, s) for s in sizes[2:])
            x = _pad_end(x, window)
            padded = tuple(x.shape[2:])
            x = window_partition(x.movedim(1, -1), window).movedim(-1, 1)
        batch, inner = x.shape[0], tuple(x.shape[2:])
        v, gate = self.gate_act(self.v_gate(x)).chunk(2, dim=1)
        q = self.q(x).flatten(2).transpose(-1, -2).unsqueeze(1)
        k = self.k(x).flatten(2).transpose(-1, -2).unsqueeze(1)
        v = v.flatten(2).transpose(-1, -2).unsqueeze(1)
        dropout = self.attn_drop.p if self.training else 0.0
        attn = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=self.scale)
        out = self.proj(attn.transpose(-1, -2).reshape(batch, -1, *inner) * gate)
        if window is not None:
            out = window_reverse(out.movedim(1, -1), window, padded).movedim(-1, 1)
            out = _crop_map(out, sizes).contiguous()
        return out


# -- Visformer ----------------------------------------------------------------------------------------


def abs_pos_embed_nd(pos: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """A 2D absolute position embedding ``(1, C, h, w)`` for an N-D grid: resized (bicubic, as timm resamples
    position embeddings) to the (height, width) of ``sizes`` and copied along the added axes (a broadcastable
    ``(1, C, H, W, 1, ...)``)."""
    if tuple(pos.shape[2:]) != tuple(sizes[:2]):
        pos = F.interpolate(pos, size=tuple(sizes[:2]), mode="bicubic", align_corners=False)
    return pos.reshape(*pos.shape, *(1,) * (len(sizes) - 2))


class _VisformerAttentionNd:
    """Visformer's convolutional multi-head attention over every spatial axis."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, sizes = x.shape[0], tuple(x.shape[2:])
        q, k, v = self.qkv(x).reshape(batch, 3, self.num_heads, self.head_dim, -1).transpose(-1, -2).unbind(1)
        dropout = self.attn_drop.p if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=self.scale)
        x = x.transpose(-1, -2).reshape(batch, -1, *sizes)
        return self.proj_drop(self.proj(x))


class _VisformerNd:
    """Visformer's intermediates for any input size and rank: position embeddings resized to the actual grid."""

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices=None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        if output_fmt != "NCHW":
            raise ValueError(f"Visformer gives NCHW intermediates only, got output_fmt={output_fmt!r}.")
        stages = [
            (self.patch_embed1, self.pos_embed1, self.stage1),
            (self.patch_embed2, self.pos_embed2, self.stage2),
            (self.patch_embed3, self.pos_embed3, self.stage3),
        ]
        last = len(stages) - 1
        take, max_index = _take_indices(len(stages), indices)
        if stop_early:
            stages = stages[: max_index + 1]
        intermediates = []
        if self.stem is not None:
            x = self.stem(x)
        for idx, (patch_embed, pos_embed, stage) in enumerate(stages):
            if patch_embed is not None:
                x = patch_embed(x)
            if pos_embed is not None:
                x = self.pos_drop(x + abs_pos_embed_nd(pos_embed, x.shape[2:]).to(x.dtype))
            x = stage(x)
            if idx in take:
                intermediates.append(self.norm(x) if norm and idx == last else x)
        if intermediates_only:
            return intermediates
        if len(stages) == last + 1:
            x = self.norm(x)
        return x, intermediates


# -- HieraDet (SAM 2) -----------------------------------------------------------------------------------


class _HieraDetAttentionNd:
    """HieraDet's multi-scale attention on channels-last ``(B, *spatial, C)`` windows of any rank, with its
    optional query pooling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, sizes = x.shape[0], tuple(x.shape[1:-1])
        q, k, v = torch.unbind(self.qkv(x).reshape(batch, -1, 3, self.num_heads, self.dim_out // self.num_heads), 2)
        if self.q_pool is not None:
            q = self.q_pool(q.reshape(batch, *sizes, -1).movedim(-1, 1)).movedim(1, -1)
            sizes = tuple(q.shape[1:-1])
            q = q.reshape(batch, math.prod(sizes), self.num_heads, -1)
        x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(x.transpose(1, 2).reshape(batch, *sizes, -1))


class _HieraDetBlockNd:
    """HieraDet's block over any number of axes: N-D windows (timm's along height and width; along added axes
    ``min(window, size)`` rounded up to the query stride), zero-padded as timm pads, cropped after."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = self.proj(x)
            if self.pool is not None:
                shortcut = shortcut.movedim(-1, 1)
                pads: list[int] = []  # an axis shorter than the pool (a thin depth) is replicated up to it
                for size, k in reversed(list(zip(shortcut.shape[2:], self.pool.kernel_size, strict=True))):
                    pads += [0, max(k - size, 0)]
                if any(pads):
                    shortcut = F.pad(shortcut, pads, mode="replicate")
                shortcut = self.pool(shortcut).movedim(1, -1)
        sizes = tuple(x.shape[1:-1])
        n = len(sizes)
        q_stride = tuple(self.q_stride) if self.q_stride else (1, 1)
        stride = q_stride + (q_stride[0] if q_stride[0] == q_stride[1] else 1,) * (n - 2)
        if self.is_windowed:
            w = self.window_size
            window = (w[0], w[1]) + tuple(
                min(w[0], -(-s // q) * q) if w[0] == w[1] else q for s, q in zip(sizes[2:], stride[2:], strict=True)
            )
            x = pad_to_multiple(x, window)
            padded = tuple(x.shape[1:-1])
            x = window_partition(x, window)
        x = self.attn(x)
        if self.is_windowed:
            window = tuple(w // q for w, q in zip(window, stride, strict=True))
            padded = tuple(p // q for p, q in zip(padded, stride, strict=True))
            x = _crop(window_reverse(x, window, padded), tuple(shortcut.shape[1:-1]))
        x = shortcut + self.drop_path1(self.ls1(x))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class _HieraDetNd:
    """HieraDet's position embedding for any input size and rank: the global embedding resized (bicubic, as
    timm does) to the (height, width) grid plus the window embedding tiled over it, copied along added axes."""

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        sizes = tuple(x.shape[1:-1])
        window = self.pos_embed_window
        pos = F.interpolate(self.pos_embed, size=sizes[:2], mode="bicubic")
        tiles = [-(-s // w) for s, w in zip(sizes[:2], window.shape[-2:], strict=True)]
        pos = pos + window.tile(tiles)[..., : sizes[0], : sizes[1]]
        pos = pos.reshape(*pos.shape, *(1,) * (len(sizes) - 2))
        return x + pos.movedim(1, -1).to(x.dtype)


# -- CoaT ----------------------------------------------------------------------------------------------


def _cls_and_map(x: torch.Tensor, sizes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, 1 + N, C)`` -> the class token ``(B, 1, C)`` and the image tokens as a map ``(B, C, *sizes)``."""
    return x[:, :1], x[:, 1:].transpose(1, 2).reshape(x.shape[0], x.shape[2], *sizes)


class _CoatConvRelPosEncNd:
    """CoaT's convolutional relative position encoding over an N-D token grid."""

    def forward(self, q: torch.Tensor, v: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        batch, heads, _, channels = q.shape
        v_img = v[:, :, 1:].transpose(-1, -2).reshape(batch, heads * channels, *size)
        parts = torch.split(v_img, self.channel_splits, dim=1)
        conv_v = torch.cat([conv(part) for conv, part in zip(self.conv_list, parts, strict=True)], dim=1)
        conv_v = conv_v.reshape(batch, heads, channels, -1).transpose(-1, -2)
        return F.pad(q[:, :, 1:] * conv_v, (0, 0, 1, 0, 0, 0))


class _CoatFactorAttnNd:
    """CoaT's factorised attention over an N-D token grid.

    Its key softmax runs over the class token and the image tokens. On an N-D grid the class token's key is
    weighted by the number of positions along the added axes (``log`` of it added to its logit), as if it
    were copied along them like each (height, width) token: a depth-constant volume then gives the 2D
    attention at every depth slice. In 2D the weight is 1 (timm's forward).
    """

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        batch, tokens, channels = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, channels // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        copies = math.prod(size[2:])
        if copies > 1:
            k = torch.cat((k[:, :, :1] + math.log(copies), k[:, :, 1:]), dim=2)
        factor = q @ (k.softmax(dim=2).transpose(-1, -2) @ v)
        x = self.scale * factor + self.crpe(q, v, size=size)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(batch, tokens, channels)))


class _CoatConvPosEncNd:
    """CoaT's convolutional position encoding (depthwise convolution of the image tokens) over an N-D grid."""

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        cls_token, feat = _cls_and_map(x, size)
        x = self.proj(feat) + feat
        return torch.cat((cls_token, x.flatten(2).transpose(1, 2)), dim=1)


class _CoatParallelBlockNd:
    """CoaT's parallel block: its cross-scale resampling over every spatial axis."""

    def interpolate(self, x: torch.Tensor, scale_factor: float, size: Sequence[int]) -> torch.Tensor:
        cls_token, img = _cls_and_map(x, size)
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[img.ndim - 2]
        img = F.interpolate(
            img, scale_factor=scale_factor, recompute_scale_factor=False, mode=mode, align_corners=False
        )
        return torch.cat((cls_token, img.reshape(img.shape[0], img.shape[1], -1).transpose(1, 2)), dim=1)


class _CoatNd:
    """CoaT's intermediates for any input size and rank: token grids from the patch embeddings' actual outputs."""

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices=None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        if output_fmt != "NCHW":
            raise ValueError(f"CoaT gives NCHW intermediates only, got output_fmt={output_fmt!r}.")
        take, max_index = _take_indices(4, indices)
        num_stages = 4
        if stop_early and (self.parallel_blocks is None or max_index == 0):
            num_stages = max_index + 1
        xs: list[torch.Tensor] = []
        sizes: list[tuple[int, ...]] = []
        for i in range(num_stages):
            patch_embed = getattr(self, f"patch_embed{i + 1}")
            if patch_embed is None:
                break
            if i > 0:
                x = _cls_and_map(x, sizes[-1])[1].contiguous()
            size = tuple(-(-s // p) for s, p in zip(x.shape[2:], patch_embed.proj.stride, strict=True))
            x = patch_embed(x)
            cls_token = getattr(self, f"cls_token{i + 1}")
            x = torch.cat((cls_token.expand(x.shape[0], -1, -1), x), dim=1)
            for block in getattr(self, f"serial_blocks{i + 1}"):
                x = block(x, size=size)
            xs.append(x)
            sizes.append(size)
        run_parallel = self.parallel_blocks is not None and len(xs) == 4
        if run_parallel:
            x1, x2, x3, x4 = xs
            for block in self.parallel_blocks:
                x2, x3, x4 = self.cpe2(x2, sizes[1]), self.cpe3(x3, sizes[2]), self.cpe4(x4, sizes[3])
                x1, x2, x3, x4 = block(x1, x2, x3, x4, sizes=sizes)
            xs = [x1, x2, x3, x4]
        final_norms = [None, self.norm2, self.norm3, self.norm4]
        intermediates = []
        for i, (size, feat) in enumerate(zip(sizes, xs, strict=True)):
            if i in take:
                if norm and final_norms[i] is not None:
                    feat = final_norms[i](feat)
                intermediates.append(_cls_and_map(feat, size)[1].contiguous())
        if intermediates_only:
            return intermediates
        if len(xs) < 4:
            return xs[-1], intermediates
        xs = [f if n is None else n(f) for n, f in zip(final_norms, xs, strict=True)]
        return (xs[1:] if run_parallel else xs[3]), intermediates


# -- LeViT ----------------------------------------------------------------------------------------------


class _LevitAttentionNd:
    """LeViT's attention (token or convolution mode) over an N-D grid, its bias copied along added axes."""

    def forward(self, x: torch.Tensor, sizes: Sequence[int] | None = None) -> torch.Tensor:
        split = [self.key_dim, self.key_dim, self.val_dim]
        if self.use_conv:
            batch, sizes = x.shape[0], tuple(x.shape[2:])
            q, k, v = self.qkv(x).view(batch, self.num_heads, -1, math.prod(sizes)).split(split, dim=2)
            q, k, v = q.transpose(-2, -1), k.transpose(-2, -1), v.transpose(-2, -1)
        else:
            batch, tokens, _ = x.shape
            sizes = tuple(sizes) if sizes is not None else (math.isqrt(tokens),) * 2
            q, k, v = self.qkv(x).view(batch, tokens, self.num_heads, -1).split(split, dim=3)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        bias = offset_bias(self.attention_biases, self.resolution, sizes).unsqueeze(0).to(q.dtype)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        if self.use_conv:
            x = x.transpose(-2, -1).reshape(batch, -1, *sizes)
        else:
            x = x.transpose(1, 2).reshape(batch, -1, self.val_attn_dim)
        return self.proj(x)


class _LevitAttentionDownsampleNd:
    """LeViT's downsampling attention over an N-D grid: queries every ``stride`` tokens along every axis."""

    def forward(self, x: torch.Tensor, sizes: Sequence[int] | None = None) -> torch.Tensor:
        return self.forward_grid(x, sizes)[0]

    def forward_grid(self, x: torch.Tensor, sizes: Sequence[int] | None = None) -> tuple[torch.Tensor, tuple[int, ...]]:
        """The output and its token grid (the query grid)."""
        if self.use_conv:
            batch, sizes = x.shape[0], tuple(x.shape[2:])
            k, v = self.kv(x).view(batch, self.num_heads, -1, math.prod(sizes)).split([self.key_dim, self.val_dim], 2)
            k, v = k.transpose(-2, -1), v.transpose(-2, -1)
            q_map = self.q(x)
            q_sizes = tuple(q_map.shape[2:])
            q = q_map.view(batch, self.num_heads, self.key_dim, -1).transpose(-2, -1)
        else:
            batch, tokens, channels = x.shape
            sizes = tuple(sizes) if sizes is not None else (math.isqrt(tokens),) * 2
            k, v = self.kv(x).view(batch, tokens, self.num_heads, -1).split([self.key_dim, self.val_dim], dim=3)
            k, v = k.transpose(1, 2), v.transpose(1, 2)
            down = self.q.down
            grid = x.view(batch, *sizes, channels)
            if down.pool is not None:
                grid = down.pool(grid.movedim(-1, 1)).movedim(1, -1)
            else:
                grid = grid[(slice(None), *(slice(None, None, down.stride) for _ in sizes))]
            q_sizes = tuple(grid.shape[1:-1])
            q = self.q.ln(grid.reshape(batch, -1, channels))
            q = q.view(batch, -1, self.num_heads, self.key_dim).transpose(1, 2)
        bias = offset_bias(self.attention_biases, self.resolution, q_sizes, sizes, q_step=self.stride)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0).to(q.dtype), scale=self.scale)
        if self.use_conv:
            x = x.transpose(-2, -1).reshape(batch, self.val_attn_dim, *q_sizes)
        else:
            x = x.transpose(1, 2).reshape(batch, -1, self.val_attn_dim)
        return self.proj(x), q_sizes


class _LevitNd:
    """LeViT's intermediates over any number of axes: the token grid of each stage is carried along (timm
    keeps it in the ``resolution`` fixed at build time) and passed to its attention layers."""

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices=None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        if output_fmt != "NCHW":
            raise ValueError(f"LeViT gives NCHW intermediates only, got output_fmt={output_fmt!r}.")
        take, max_index = _take_indices(len(self.stages), indices)
        stages = self.stages[: max_index + 1] if stop_early else self.stages
        x = self.stem(x)
        sizes = tuple(x.shape[2:])
        if not self.use_conv:
            x = x.flatten(2).transpose(1, 2)
        intermediates = []
        for idx, stage in enumerate(stages):
            down = stage.downsample
            if type(down).__name__.startswith("LevitDownsample"):
                x, sizes = down.attn_downsample.forward_grid(x, sizes)
                x = x + down.drop_path(down.mlp(x))
            else:
                x = down(x)
            for block in stage.blocks:
                x = x + block.drop_path1(block.attn(x, sizes))
                x = x + block.drop_path2(block.mlp(x))
            if self.use_conv:
                sizes = tuple(x.shape[2:])
            if idx in take:
                intermediates.append(x if self.use_conv else _tokens_to_map(x, sizes))
        if intermediates_only:
            return intermediates
        return x, intermediates


# -- PiT ---------------------------------------------------------------------------------------------------


class _PitTransformerNd:
    """PiT's stage (optional pooling, then blocks over the class tokens and every spatial position)."""

    def forward(self, x: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, cls_tokens = x
        prefix = cls_tokens.shape[1]
        if self.pool is not None:
            x, cls_tokens = self.pool(x, cls_tokens)
        shape = x.shape
        x = torch.cat((cls_tokens, x.flatten(2).transpose(1, 2)), dim=1)
        x = self.blocks(self.norm(x))
        return x[:, prefix:].transpose(1, 2).reshape(shape), x[:, :prefix]


class _PitNd:
    """PiT's intermediates for any input size and rank: the position embedding resized to the actual grid and
    copied along added axes."""

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices=None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        if output_fmt != "NCHW":
            raise ValueError(f"PiT gives NCHW intermediates only, got output_fmt={output_fmt!r}.")
        take, max_index = _take_indices(len(self.transformers), indices)
        x = self.patch_embed(x)
        x = self.pos_drop(x + abs_pos_embed_nd(self.pos_embed, x.shape[2:]).to(x.dtype))
        cls_tokens = self.cls_token.expand(x.shape[0], -1, -1)
        stages = self.transformers[: max_index + 1] if stop_early else self.transformers
        intermediates = []
        idx = 0
        for idx, stage in enumerate(stages):
            x, cls_tokens = stage((x, cls_tokens))
            if idx in take:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        if idx == len(self.transformers) - 1:
            cls_tokens = self.norm(cls_tokens)
        return cls_tokens, intermediates

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = self.pos_drop(x + abs_pos_embed_nd(self.pos_embed, x.shape[2:]).to(x.dtype))
        cls_tokens = self.cls_token.expand(x.shape[0], -1, -1)
        _, cls_tokens = self.transformers((x, cls_tokens))
        return self.norm(cls_tokens)


# -- BoTNet (timm.layers.bottleneck_attn) -----------------------------------------------------------------


def _rel_table_1d(table: torch.Tensor, size: int) -> torch.Tensor:
    """A ``(2 * n - 1, dim)`` table of 1D relative embeddings for ``size`` positions (linear, centre kept)."""
    if table.shape[0] == 2 * size - 1:
        return table
    return F.interpolate(table.t().unsqueeze(0), size=2 * size - 1, mode="linear", align_corners=True)[0].t()


class _BottleneckAttnNd:
    """BoTNet's global attention over an N-D grid. Its relative logits (one 1D table for height, one for width,
    made for the build-time feature size and interpolated to the actual one) depend on the (height, width)
    offset of a token pair only: copied along added axes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, sizes = x.shape[0], tuple(x.shape[2:])
        x = self.qkv(x)
        q, k, v = torch.split(x, [self.dim_out_qk, self.dim_out_qk, self.dim_out_v], dim=1)
        q = q.reshape(batch * self.num_heads, self.dim_head_qk, -1).transpose(-1, -2)
        k = k.reshape(batch * self.num_heads, self.dim_head_qk, -1)
        v = v.reshape(batch * self.num_heads, self.dim_head_v, -1).transpose(-1, -2)
        coords = _grid_coords(sizes, x.device)
        offsets = coords[:, None, :] - coords[:, :, None]  # key minus query, per axis
        rel = torch.zeros((), dtype=q.dtype, device=q.device)
        for axis, table in enumerate((self.pos_embed.height_rel, self.pos_embed.width_rel)):
            table = _rel_table_1d(table, sizes[axis]).to(q.dtype)
            logits = q @ table.t()  # (BH, N, 2 * size - 1)
            index = (offsets[axis] + sizes[axis] - 1).expand(logits.shape[0], -1, -1)
            rel = rel + torch.gather(logits, 2, index)
        attn = q @ k
        attn = (attn + rel) * self.scale if self.scale_pos_embed else attn * self.scale + rel
        out = (attn.softmax(dim=-1) @ v).transpose(-1, -2).reshape(batch, self.dim_out_v, *sizes)
        return self.pool(out)


# module-qualified timm class -> N-D mixin
FAMILY_MIXINS: dict[str, type] = {
    "timm.models.efficientformer.Attention": _EfficientFormerAttentionNd,
    "timm.models.efficientformer.EfficientFormer": _EfficientFormerNd,
    "timm.models.swiftformer.EfficientAdditiveAttention": _SwiftFormerAttentionNd,
    "timm.models.edgenext.SplitTransposeBlock": _SplitTransposeBlockNd,
    "timm.models.efficientformer_v2.Attention2d": _EfficientFormerV2AttentionNd,
    "timm.models.efficientformer_v2.Attention2dDownsample": _EfficientFormerV2AttentionDownsampleNd,
    "timm.models.efficientvit_msra.CascadedGroupAttention": _CascadedGroupAttentionNd,
    "timm.models.efficientvit_msra.LocalWindowAttention": _LocalWindowAttentionNd,
    "timm.models.shvit.SHSA": _ShsaNd,
    "timm.models.lowformer.ConvAttention": _ConvAttentionNd,
    "timm.models.cpubone.ConvAttention": _ConvAttentionNd,
    "timm.models.twins.PatchEmbed": _TwinsPatchEmbedNd,
    "timm.models.twins.LocallyGroupedAttn": _LocallyGroupedAttnNd,
    "timm.models.twins.GlobalSubSampleAttn": _GlobalSubSampleAttnNd,
    "timm.models.twins.Twins": _TwinsNd,
    "timm.models.gcvit.WindowAttentionGlobal": _GcVitWindowAttentionNd,
    "timm.models.gcvit.GlobalContextVitBlock": _GcVitBlockNd,
    "timm.models.swin_transformer_v2_cr.WindowMultiHeadAttention": _SwinV2CrAttentionNd,
    "timm.models.swin_transformer_v2_cr.SwinTransformerV2CrBlock": _SwinV2CrBlockNd,
    "timm.models.swin_transformer_v2_cr.PatchMerging": _PatchMergingNd,
    "timm.models.swin_transformer_v2_cr.PatchEmbed": _SwinV2CrPatchEmbedNd,
    "timm.layers.attention2d.MultiQueryAttention2d": _MultiQueryAttention2dNd,
    "timm.layers.attention2d.Attention2d": _Attention2dNd,
    "timm.models.efficientvim.HSMSSD": _HsmSsdNd,
    "timm.models.iformer.SHMA": _ShmaNd,
    "timm.models.visformer.Attention": _VisformerAttentionNd,
    "timm.models.visformer.Visformer": _VisformerNd,
    "timm.models.hieradet_sam2.MultiScaleAttention": _HieraDetAttentionNd,
    "timm.models.hieradet_sam2.MultiScaleBlock": _HieraDetBlockNd,
    "timm.models.hieradet_sam2.HieraDet": _HieraDetNd,
    "timm.models.coat.ConvRelPosEnc": _CoatConvRelPosEncNd,
    "timm.models.coat.ConvPosEnc": _CoatConvPosEncNd,
    "timm.models.coat.FactorAttnConvRelPosEnc": _CoatFactorAttnNd,
    "timm.models.coat.ParallelBlock": _CoatParallelBlockNd,
    "timm.models.coat.CoaT": _CoatNd,
    "timm.models.levit.Attention": _LevitAttentionNd,
    "timm.models.levit.AttentionDownsample": _LevitAttentionDownsampleNd,
    "timm.models.levit.Levit": _LevitNd,
    "timm.models.levit.LevitDistilled": _LevitNd,
    "timm.models.pit.Transformer": _PitTransformerNd,
    "timm.layers.bottleneck_attn.BottleneckAttn": _BottleneckAttnNd,
    "timm.models.pit.PoolingVisionTransformer": _PitNd,
    "timm.models.pit.DistilledPoolingVisionTransformer": _PitNd,
}
