"""The ViT of UNETR (Hatamizadeh et al., 2021; MONAI's ``ViT`` as ``UNETR`` builds it), for 2D and 3D.

A single-scale encoder: a conv patch embedding (kernel = stride = the patch size, 16 per axis by default,
any per-axis size such as ``(16, 16, 4)``), learned position embeddings for the token grid of ``img_size``,
then ``num_layers`` pre-norm transformer blocks (multi-head self-attention through
``F.scaled_dot_product_attention``, GELU MLP). Every feature has the patch size's reduction: feature ``k``
of a depth-``d`` encoder is the output of block ``k * num_layers // d`` (0-based; UNETR's 3, 6, 9 for 12
blocks and depth 4), and the deepest is the last block's output through the final LayerNorm. The
attribute ``single_scale = True`` tells architectures so: UNETR builds its pyramid from these features,
architectures that need a pyramid refuse the encoder.

======================  ===========  =======  =====  ==========================================
name                    hidden_size  mlp_dim  heads  MONAI
======================  ===========  =======  =====  ==========================================
unetr_vit_t16           192          768      3
unetr_vit_s16           384          1536     6
unetr_vit_b16           768          3072     12     ``UNETR(...)`` defaults (ViT-B/16)
======================  ===========  =======  =====  ==========================================

An input whose token grid differs from ``img_size // patch`` gets the position embeddings resized to its
grid ((bi/tri)linear interpolation), so any size works; sizes are padded at the end to a multiple of the
patch. Key names are MONAI's (``patch_embedding.patch_embeddings``, ``patch_embedding.position_embeddings``,
``blocks.i.attn.qkv``/``out_proj``, ``blocks.i.mlp.linear1``/``linear2``, ``norm``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from smp3d.encoders import Encoder, EncoderSpec, resolve_strides
from smp3d.layers import as_tuple, check_spatial_dims, conv

__all__ = ["ENCODERS", "SelfAttention", "TransformerBlock", "UNETRViTEncoder"]

MAX_DEPTH = 5


class SelfAttention(nn.Module):
    """Multi-head self-attention: ``qkv`` (rows ordered q, k, v, then heads), SDPA, ``out_proj``."""

    def __init__(self, hidden_size: int, heads: int, dropout: float = 0.0, qkv_bias: bool = False):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=qkv_bias)
        self.out_proj = nn.Linear(hidden_size, hidden_size)
        self.drop_output = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.drop_output(self.out_proj(x.transpose(1, 2).reshape(batch, tokens, channels)))


class Mlp(nn.Module):
    """linear1 -> GELU -> dropout -> linear2 -> dropout (MONAI's ``MLPBlock`` in its "vit" mode)."""

    def __init__(self, hidden_size: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.linear1 = nn.Linear(hidden_size, mlp_dim)
        self.linear2 = nn.Linear(mlp_dim, hidden_size)
        self.fn = nn.GELU()
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.linear2(self.drop1(self.fn(self.linear1(x)))))


class TransformerBlock(nn.Module):
    """``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, hidden_size: int, mlp_dim: int, heads: int, dropout: float = 0.0, qkv_bias: bool = False):
        super().__init__()
        self.mlp = Mlp(hidden_size, mlp_dim, dropout)
        self.norm1 = nn.LayerNorm(hidden_size)
        self.attn = SelfAttention(hidden_size, heads, dropout, qkv_bias)
        self.norm2 = nn.LayerNorm(hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class UNETRViTEncoder(Encoder):
    """UNETR's ViT as a single-scale encoder (see module docs).

    Args:
        img_size: the input size the position embeddings are made for (int or per axis); others are resized.
        hidden_size, mlp_dim, num_heads, num_layers: the transformer's width, MLP width, heads and blocks.
        qkv_bias: a bias on the qkv projection (MONAI's default: none).
        dropout_rate: dropout after the embeddings, on attention weights, after the projections and MLP layers.

    ``strides``: stage 1's is the patch size (default 16 per axis); later stages keep the resolution (1).
    """

    #: Every feature has the same reduction (the patch size): architectures that need a pyramid refuse it.
    single_scale = True

    def __init__(
        self,
        in_channels: int = 3,
        depth: int = 4,
        spatial_dims: int = 3,
        strides: Sequence[int | Sequence[int]] | None = None,
        img_size: int | Sequence[int] = 96,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_heads: int = 12,
        num_layers: int = 12,
        qkv_bias: bool = False,
        dropout_rate: float = 0.0,
        name: str = "unetr_vit",
    ):
        spatial_dims = check_spatial_dims(spatial_dims)
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= MAX_DEPTH:
            raise ValueError(f"{name} supports encoder_depth 1..{MAX_DEPTH} (UNETR uses 4), got {depth!r}.")
        for what, value in (("hidden_size", hidden_size), ("mlp_dim", mlp_dim), ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: {what} must be a positive int, got {value!r}.")
        if hidden_size % num_heads:
            raise ValueError(f"{name}: hidden_size {hidden_size} is not divisible by num_heads {num_heads}.")
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < depth:
            raise ValueError(f"{name}: num_layers must be an int >= encoder_depth ({depth}), got {num_layers!r}.")
        if not 0.0 <= dropout_rate <= 1.0:
            raise ValueError(f"{name}: dropout_rate must be in [0, 1], got {dropout_rate!r}.")
        stage_strides = resolve_strides(strides, depth, spatial_dims, default=(16, 1, 1, 1, 1), name=name)
        for i, stride in enumerate(stage_strides[1:], start=2):
            if any(s != 1 for s in stride):
                raise ValueError(
                    f"{name}: strides item {i} is {stride}, but a ViT keeps one resolution after its patch embedding: "
                    f"only stride item 1 (the patch size, e.g. (16, 16, 4)) may differ from 1."
                )
        patch = stage_strides[0]
        image = as_tuple(img_size, spatial_dims, "img_size")
        if any(i < p for i, p in zip(image, patch, strict=True)):
            raise ValueError(f"{name}: img_size {image} is smaller than the patch size {patch} along some axis.")
        super().__init__((in_channels, *(hidden_size,) * depth), stage_strides, spatial_dims)
        self.patch_size = patch
        self.grid = tuple(i // p for i, p in zip(image, patch, strict=True))
        #: 0-based indices of the blocks whose outputs are features 1 .. depth-1
        self.feature_blocks = tuple(k * num_layers // depth for k in range(1, depth))
        self.patch_embedding = nn.Module()
        self.patch_embedding.patch_embeddings = conv(spatial_dims)(in_channels, hidden_size, patch, stride=patch)
        self.patch_embedding.position_embeddings = nn.Parameter(torch.zeros(1, math.prod(self.grid), hidden_size))
        self.dropout = nn.Dropout(dropout_rate)
        self.blocks = nn.ModuleList(
            TransformerBlock(hidden_size, mlp_dim, num_heads, dropout_rate, qkv_bias) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size)
        nn.init.trunc_normal_(self.patch_embedding.position_embeddings, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def stage_modules(self, stage: int) -> list[nn.Module]:
        raise NotImplementedError("a ViT has a single stride (its patch size) and cannot trade it for dilation")

    def position_embeddings(self, grid: Sequence[int]) -> torch.Tensor:
        """``(1, tokens, hidden)`` position embeddings for a token ``grid``, resized from ``self.grid`` if needed."""
        table = self.patch_embedding.position_embeddings
        if tuple(grid) == self.grid:
            return table
        hidden = table.shape[-1]
        spatial = table.transpose(1, 2).reshape(1, hidden, *self.grid)
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(grid)]
        resized = F.interpolate(spatial, size=tuple(grid), mode=mode, align_corners=False)
        return resized.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [x]
        pad = [(-s) % p for s, p in zip(x.shape[2:], self.patch_size, strict=True)]
        if any(pad):
            spec: list[int] = []
            for p in reversed(pad):
                spec += [0, p]
            x = F.pad(x, spec)
        tokens = self.patch_embedding.patch_embeddings(x)
        grid = tokens.shape[2:]
        batch, hidden = tokens.shape[:2]
        tokens = self.dropout(tokens.flatten(2).transpose(1, 2) + self.position_embeddings(grid))
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if i in self.feature_blocks:
                features.append(tokens.transpose(1, 2).reshape(batch, hidden, *grid))
        features.append(self.norm(tokens).transpose(1, 2).reshape(batch, hidden, *grid))
        return features


SIZES = {"t16": (192, 768, 3), "s16": (384, 1536, 6), "b16": (768, 3072, 12)}


def _spec(size: str) -> EncoderSpec:
    hidden, mlp, heads = SIZES[size]
    name = f"unetr_vit_{size}"
    return EncoderSpec(
        build=partial(UNETRViTEncoder, hidden_size=hidden, mlp_dim=mlp, num_heads=heads, name=name),
        out_channels=(3, *(hidden,) * MAX_DEPTH),
        strides=(16, 1, 1, 1, 1),
        max_depth=MAX_DEPTH,
        family="unetr_vit",
        license="Apache-2.0",
        extra={
            "single_scale": True,
            "spatial_shaped_keys": ("position_embeddings",),  # one row per token of the img_size grid
        },
        description=(
            f"{name}: UNETR's ViT (MONAI layout), patch 16, hidden {hidden}, MLP {mlp}, {heads} heads, 12 blocks; "
            "single-scale (for smp3d.UNETR); MONAI checkpoints load through smp3d.UNETR.from_monai"
        ),
    )


ENCODERS: dict[str, EncoderSpec] = {f"unetr_vit_{size}": _spec(size) for size in SIZES}
