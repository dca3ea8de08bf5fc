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

from .timm_attention import absolute_offset_bias

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


# module-qualified timm class -> N-D mixin
FAMILY_MIXINS: dict[str, type] = {
    "timm.models.efficientformer.Attention": _EfficientFormerAttentionNd,
    "timm.models.efficientformer.EfficientFormer": _EfficientFormerNd,
    "timm.models.swiftformer.EfficientAdditiveAttention": _SwiftFormerAttentionNd,
    "timm.models.edgenext.SplitTransposeBlock": _SplitTransposeBlockNd,
}
