"""Mix Vision Transformer encoders (MiT, SegFormer's backbone; Xie et al., 2021), ``mit_b0`` .. ``mit_b5``, 2D/3D.

Four stages, each an overlapping patch embedding (a strided convolution, 7x7 stride 4 then 3x3
stride 2, followed by a LayerNorm over channels), transformer blocks and a LayerNorm. A block is
efficient self-attention, whose keys and values come from tokens reduced by a ``sr_ratio`` strided
convolution, and a Mix-FFN (linear, 3x3 depthwise convolution, GELU, linear), each with a residual
connection and stochastic depth. In 3D every kernel gains a trailing depth axis (7x7x7, 3x3x3,
``sr_ratio`` cubed) and the tokens are the voxels.

The module layout is segmentation_models_pytorch 0.6's ``mit_b*`` encoders (``patch_embed{i}.proj/norm``,
``block{i}.{j}.norm1/attn.q/attn.kv/attn.sr/attn.norm/attn.proj/norm2/mlp.fc1/mlp.dwconv.dwconv/mlp.fc2``,
``norm{i}``), so smp's 2D checkpoints load key for key.

Features follow smp's convention: feature 1 is a 0-channel placeholder at reduction 2 and the
transformer stages give features 2-5 (reductions 4, 8, 16, 32). Decoders written for smp's pyramid
(Segformer fuses from level 2, U-Net skips the empty level) then work unchanged, and whole smp
models load strictly. ``strides`` has one item per feature as for every encoder; the first patch
embedding strides by the product of stages 1 and 2 (4 by default, ``(4, 4, 2)`` from
``strides=((2, 2, 1), 2, 2, 2, 2)``), the others by their own stage's stride. Each stage strides
by 1 or 2 per axis.

Sizes: a strided axis of size ``n`` becomes ``ceil(n / stride)``; the placeholder has
``n // reduction`` voxels per axis (smp's rounding). Where a feature is shorter along an axis
than its attention's reduction convolution needs (smp fails there), the tokens are zero-padded
up to one kernel before that convolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from smp3d.encoders import Encoder, EncoderSpec, WeightSource, resolve_strides
from smp3d.layers import check_spatial_dims, conv

__all__ = [
    "ENCODERS",
    "DropPath",
    "EfficientSelfAttention",
    "MixFFN",
    "MixTransformerBlock",
    "MixVisionTransformerEncoder",
    "OverlapPatchEmbedding",
]

Shape = tuple[int, ...]


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, *spatial)`` -> ``(B, N, C)``; free for a channels-last input."""
    return x.flatten(2).transpose(1, 2)


def to_grid(tokens: torch.Tensor, spatial: Shape) -> torch.Tensor:
    """``(B, N, C)`` -> ``(B, C, *spatial)``, a channels-last view of contiguous tokens."""
    return tokens.transpose(1, 2).unflatten(2, spatial)


class DropPath(nn.Module):
    """Stochastic depth: drop a sample's branch with probability ``rate``, scale the rest by ``1 / (1 - rate)``.

    One Bernoulli draw per sample, in the input's dtype (as timm draws it, so training runs match smp's).
    """

    def __init__(self, rate: float):
        super().__init__()
        self.rate = float(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class EfficientSelfAttention(nn.Module):
    """Multi-head attention of ``(B, N, C)`` tokens over keys/values reduced ``sr_ratio`` times per axis.

    The reduction is a convolution with kernel and stride ``sr_ratio`` on the token grid, then a
    LayerNorm (eps 1e-5); ``sr_ratio == 1`` attends to every token.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        spatial_dims: int = 3,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention width {dim} is not divisible by num_heads={num_heads}.")
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if sr_ratio > 1:
            self.sr = conv(spatial_dims)(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def _reduce(self, tokens: torch.Tensor, spatial: Shape) -> torch.Tensor:
        grid = to_grid(tokens, spatial)
        # The convolution needs one (dilated) kernel per axis; shorter axes are zero-padded up to it.
        pad: list[int] = []
        for n, k, d, p in reversed(
            list(zip(spatial, self.sr.kernel_size, self.sr.dilation, self.sr.padding, strict=True))
        ):
            pad += [0, max(0, d * (k - 1) + 1 - 2 * p - n)]
        if any(pad):
            grid = F.pad(grid, pad)
        return self.norm(to_tokens(self.sr(grid)))

    def forward(self, x: torch.Tensor, spatial: Shape) -> torch.Tensor:
        batch, length, channels = x.shape
        head = channels // self.num_heads
        q = self.q(x).view(batch, length, self.num_heads, head).transpose(1, 2)
        source = self._reduce(x, spatial) if self.sr_ratio > 1 else x
        k, v = self.kv(source).view(batch, -1, 2, self.num_heads, head).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, length, channels)))


class DepthwiseConv(nn.Module):
    """A 3x3(x3) depthwise convolution applied to ``(B, N, C)`` tokens laid out on their grid."""

    def __init__(self, dim: int, spatial_dims: int = 3):
        super().__init__()
        self.dwconv = conv(spatial_dims)(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, spatial: Shape) -> torch.Tensor:
        return to_tokens(self.dwconv(to_grid(x, spatial)))


class MixFFN(nn.Module):
    """Linear -> depthwise conv -> GELU -> linear on ``(B, N, C)`` tokens (the conv gives positional information)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0, spatial_dims: int = 3):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DepthwiseConv(hidden, spatial_dims)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, spatial: Shape) -> torch.Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x), spatial)))
        return self.drop(self.fc2(x))


class MixTransformerBlock(nn.Module):
    """Pre-norm transformer block on ``(B, N, C)`` tokens: attention and Mix-FFN residuals (LayerNorm eps 1e-6)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        spatial_dims: int = 3,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio, qkv_bias, attn_drop, drop, spatial_dims)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio), drop, spatial_dims)

    def forward(self, x: torch.Tensor, spatial: Shape) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), spatial))
        return x + self.drop_path(self.mlp(self.norm2(x), spatial))


class OverlapPatchEmbedding(nn.Module):
    """Strided convolution with ``kernel // 2`` padding (patches overlap), then a LayerNorm (eps 1e-5) over channels.

    Returns ``(B, N, C)`` tokens and the grid's spatial shape.
    """

    def __init__(self, in_channels: int, dim: int, kernel_size: int, stride: Shape, spatial_dims: int = 3):
        super().__init__()
        self.proj = conv(spatial_dims)(in_channels, dim, kernel_size, stride=stride, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Shape]:
        x = self.proj(x)
        return self.norm(to_tokens(x)), tuple(x.shape[2:])


class MixVisionTransformerEncoder(Encoder):
    """MiT feature pyramid: ``depth + 1`` features, item 0 the input, item 1 a 0-channel placeholder.

    Only the stages that ``depth`` uses are built. ``drop_path_rate`` rises linearly over the blocks
    of all four stages (shallow encoders keep the full schedule); ``drop_rate`` is the dropout after
    projections and ``attn_drop_rate`` the dropout of attention weights (both 0 in smp).
    """

    _torch_script_refusal = (
        "its transformer blocks pass each stage's spatial shape as a tuple whose length depends on spatial_dims, "
        "which its forward does not yet type for TorchScript"
    )

    def __init__(
        self,
        embed_dims: Sequence[int],
        num_heads: Sequence[int],
        depths: Sequence[int],
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        in_channels: int = 3,
        depth: int = 5,
        spatial_dims: int = 3,
        strides: Sequence[int | Sequence[int]] | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
    ):
        spatial_dims = check_spatial_dims(spatial_dims)
        name = type(self).__name__
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= 5:
            raise ValueError(f"{name} supports encoder_depth 1..5 (as smp), got {depth!r}.")
        for arg, value in (
            ("drop_rate", drop_rate),
            ("attn_drop_rate", attn_drop_rate),
            ("drop_path_rate", drop_path_rate),
        ):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name}: {arg} must be in [0, 1), got {value!r}.")
        stage_strides = resolve_strides(strides, depth, spatial_dims, name=name)
        for stage, stride in enumerate(stage_strides, start=1):
            if max(stride) > 2:
                raise ValueError(
                    f"{name}: `strides` item {stage} is {stride}, but MiT stages stride by 1 or 2 per axis. The first "
                    f"patch embedding strides by the product of items 1 and 2: for a stride of (4, 4, 2) pass "
                    f"((2, 2, 1), 2, 2, 2, 2)."
                )
        super().__init__((in_channels, 0, *embed_dims)[: depth + 1], stage_strides, spatial_dims)

        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        first = 0
        dim = in_channels
        for i in range(1, depth):  # transformer stage i gives feature i + 1
            if i == 1:
                kernel, stride = 7, tuple(a * b for a, b in zip(stage_strides[0], stage_strides[1], strict=True))
            else:
                kernel, stride = 3, stage_strides[i]
            width = embed_dims[i - 1]
            self.add_module(f"patch_embed{i}", OverlapPatchEmbedding(dim, width, kernel, stride, spatial_dims))
            blocks = [
                MixTransformerBlock(
                    width,
                    num_heads[i - 1],
                    sr_ratios[i - 1],
                    mlp_ratio,
                    qkv_bias,
                    drop_rate,
                    attn_drop_rate,
                    rates[first + j],
                    spatial_dims,
                )
                for j in range(depths[i - 1])
            ]
            self.add_module(f"block{i}", nn.Sequential(*blocks))
            self.add_module(f"norm{i}", nn.LayerNorm(width, eps=1e-6))
            first += depths[i - 1]
            dim = width
        self.apply(_init_weights)

    def stage_modules(self, stage: int) -> list[nn.Module]:
        """The patch embedding and the Mix-FFNs of a stage (smp's dilation, minus the attention's reduction).

        The reduction convolution (kernel = stride = ``sr_ratio``) pools keys and values and is left as it
        is: on a finer grid it still pools ``sr_ratio`` tokens per axis (smp dilates it with padding, which
        this even kernel cannot take symmetrically). Stages 1 and 2 share the first patch embedding and
        cannot be dilated.
        """
        if stage <= 2:
            raise ValueError(
                "MiT's first patch embedding carries the strides of stages 1 and 2 together, so they cannot be "
                f"traded for dilation; choose an output stride of at least reductions[2] = {self.reductions[2]}."
            )
        i = stage - 1
        return [getattr(self, f"patch_embed{i}"), *(block.mlp for block in getattr(self, f"block{i}"))]

    def _channels_last(self) -> bool:
        # The deepest patch embedding reads >= 32 channels, so its layout is unambiguous (a 1-channel kernel's is not).
        weight = getattr(self, f"patch_embed{self.depth - 1}").proj.weight
        return not weight.is_contiguous()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x``: ``(B, in_channels, *spatial)``; returns ``depth + 1`` features ``(B, out_channels[i], *size_i)``.

        Features are contiguous, or channels-last when the model is (``model.to(memory_format=...)``): the
        tokens are channels-last already, so that layout costs no copy.
        """
        placeholder = tuple(n // r for n, r in zip(x.shape[2:], self.reductions[1], strict=True))
        features = [x, x.new_empty((x.shape[0], 0, *placeholder))]
        channels_last = self.depth > 1 and self._channels_last()
        for i in range(1, self.depth):
            tokens, spatial = getattr(self, f"patch_embed{i}")(x)
            for block in getattr(self, f"block{i}"):
                tokens = block(tokens, spatial)
            x = to_grid(getattr(self, f"norm{i}")(tokens), spatial)
            x = x if channels_last else x.contiguous()
            features.append(x)
        return features


@torch.no_grad()
def _init_weights(m: nn.Module) -> None:
    """smp's initialization: truncated-normal linears (std 0.02), unit LayerNorms, He-normal (fan-out) convolutions."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.modules.conv._ConvNd):
        fan_out = math.prod(m.kernel_size) * m.out_channels // m.groups
        m.weight.normal_(0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            m.bias.zero_()


# SegFormer's ImageNet weights (smp's Hub releases) are under the NVIDIA Source Code License (non-commercial).
_LICENSE = "nvidia-segformer-license"

_VARIANTS = {
    # name: (embed_dims, blocks per stage, smp-hub revision)
    "mit_b0": ((32, 64, 160, 256), (2, 2, 2, 2), "9ce53d104d92d75aabb00aae70677aaab67e7c84"),
    "mit_b1": ((64, 128, 320, 512), (2, 2, 2, 2), "a04bf4f13a549bce677cf79b04852e7510782817"),
    "mit_b2": ((64, 128, 320, 512), (3, 4, 6, 3), "868ab6f13871dcf8c3d9f90ee4519403475b65ef"),
    "mit_b3": ((64, 128, 320, 512), (3, 4, 18, 3), "32558d12a65f1daa0ebcf4f4053c4285e2c1cbda"),
    "mit_b4": ((64, 128, 320, 512), (3, 8, 27, 3), "3a3454e900a4b4f11dd60eeb59101a9a1a36b017"),
    "mit_b5": ((64, 128, 320, 512), (3, 6, 40, 3), "ced04d96c586b6297fd59a7a1e244fc78fdb6531"),
}


def _spec(name: str, embed_dims: tuple[int, ...], depths: tuple[int, ...], revision: str) -> EncoderSpec:
    return EncoderSpec(
        build=partial(
            MixVisionTransformerEncoder,
            embed_dims=embed_dims,
            num_heads=(1, 2, 5, 8),
            depths=depths,
            sr_ratios=(8, 4, 2, 1),
        ),
        out_channels=(3, 0, *embed_dims),
        weights={"imagenet": WeightSource(repo_id=f"smp-hub/{name}.imagenet", revision=revision, license=_LICENSE)},
        family="mit",
        license=_LICENSE,
        description=f"{name}: Mix Vision Transformer, widths {list(embed_dims)}, blocks {list(depths)}",
    )


ENCODERS: dict[str, EncoderSpec] = {name: _spec(name, *config) for name, config in _VARIANTS.items()}
