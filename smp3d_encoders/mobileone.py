"""MobileOne encoders (Vasu et al., 2023), ``mobileone_s0`` .. ``mobileone_s4``, for 2D and 3D.

Every block is re-parameterisable: in training it sums ``k`` conv+BN branches (k x k, grouped or
depthwise), a 1x1 conv+BN "scale" branch (k > 1 only) and a BN-only identity branch (same shape in
and out), then applies an optional squeeze-excite and ReLU. :meth:`MobileOneEncoder.reparameterize`
(or :meth:`MobileOneBlock.reparameterize`, or :func:`reparameterize_model` on a whole model) fuses
the branches, with the batch-norm running statistics, into one convolution with bias; the fused
model computes what the unfused one computes in eval mode, in 2D and 3D alike.

Layout (segmentation_models_pytorch 0.6's, so its 2D checkpoints load key for key; in 3D every
kernel gains a trailing depth axis): ``stage0`` (the stem block, 3x3) then ``stage1``..``stage4``,
each a sequence of (depthwise 3x3 block, pointwise 1x1 block) pairs; a block holds
``rbr_conv.<i>.conv/bn``, ``rbr_scale.conv/bn``, ``rbr_skip`` and ``se.reduce/expand``, and after
fusion ``reparam_conv.weight/bias`` (plus ``se``) instead of the ``rbr_*`` branches.

Strides: stage ``i`` is ``stage{i-1}``; its stride (1 or 2 per axis) goes to its first block. Every
strided layer maps a size ``n`` to ``ceil(n / stride)``. Which blocks have an identity branch is
fixed by the architecture (every block except the stem and the first block of each stage, when in
and out channels agree), not by the strides given, so checkpoints load whatever ``strides`` are.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from smp3d.encoders import Encoder, EncoderSpec, WeightSource, adapt_input_weight, resolve_strides
from smp3d.layers import as_tuple, batch_norm, check_spatial_dims, conv

__all__ = ["ENCODERS", "MobileOneBlock", "MobileOneEncoder", "SqueezeExcite", "fuse_conv_bn", "reparameterize_model"]


class SqueezeExcite(nn.Module):
    """Channel gating by a 1x1 bottleneck (``channels * reduction_ratio``) on the global mean, any ``spatial_dims``."""

    def __init__(self, channels: int, reduction_ratio: float = 0.0625, spatial_dims: int = 3):
        super().__init__()
        squeezed = int(channels * reduction_ratio)
        self.reduce = conv(spatial_dims)(channels, squeezed, 1)
        self.expand = conv(spatial_dims)(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean(dim=list(range(2, x.dim())), keepdim=True)
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(scale))))


def fuse_conv_bn(kernel: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kernel', bias')`` of the single conv equal to ``bn(conv(x, kernel))`` with ``bn``'s running statistics.

    ``kernel`` is ``(O, I / groups, *k)`` for any number of spatial axes.
    """
    std = torch.sqrt(bn.running_var + bn.eps)
    scale = (bn.weight / std).reshape(-1, *(1,) * (kernel.ndim - 1))
    return kernel * scale, bn.bias - bn.running_mean * bn.weight / std


class MobileOneBlock(nn.Module):
    """``(B, in_channels, *spatial) -> (B, out_channels, *ceil(spatial / stride))``: the branch sum, SE, ReLU.

    ``identity`` adds the BN-only skip branch (needs ``in_channels == out_channels``);
    ``inference_mode`` builds the fused form directly (``reparam_conv``), e.g. to load fused weights.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int | Sequence[int] = 1,
        groups: int = 1,
        num_conv_branches: int = 1,
        identity: bool = False,
        use_se: bool = False,
        inference_mode: bool = False,
        spatial_dims: int = 3,
    ):
        super().__init__()
        if identity and in_channels != out_channels:
            raise ValueError(
                f"An identity branch needs in_channels == out_channels, got {in_channels} -> {out_channels}."
            )
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.groups = kernel_size, groups
        self.stride = as_tuple(stride, spatial_dims, "stride")
        self.inference_mode = inference_mode
        self.se = SqueezeExcite(out_channels, spatial_dims=spatial_dims) if use_se else nn.Identity()
        self.activation = nn.ReLU()
        if inference_mode:
            self.reparam_conv = self._conv(kernel_size, bias=True)
            return
        self.reparam_conv = nn.Identity()  # no parameters: keeps the unfused keys equal to smp's
        self.rbr_skip = batch_norm(spatial_dims)(in_channels) if identity else None
        self.rbr_conv = nn.ModuleList(self._conv_bn(kernel_size) for _ in range(num_conv_branches))
        self.rbr_scale = self._conv_bn(1) if kernel_size > 1 else None

    def _conv(self, kernel_size: int, bias: bool, **factory) -> nn.Module:
        return conv(self.spatial_dims)(
            self.in_channels,
            self.out_channels,
            kernel_size,
            stride=self.stride,
            padding=kernel_size // 2,
            groups=self.groups,
            bias=bias,
            **factory,
        )

    def _conv_bn(self, kernel_size: int) -> nn.Sequential:
        branch = nn.Sequential()
        branch.add_module("conv", self._conv(kernel_size, bias=False))
        branch.add_module("bn", batch_norm(self.spatial_dims)(self.out_channels))
        return branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "rbr_conv"):  # fused (inference_mode; TorchScript resolves hasattr at compile time)
            return self.activation(self.se(self.reparam_conv(x)))
        # Summed in smp's order (scale, identity, then the k x k branches) so that 2D outputs match it bit for bit.
        out: torch.Tensor | None = None
        if self.rbr_scale is not None:
            out = self.rbr_scale(x)
        if self.rbr_skip is not None:
            skip = self.rbr_skip(x)
            out = skip if out is None else out + skip
        for branch in self.rbr_conv:
            y = branch(x)
            out = y if out is None else out + y
        if out is None:
            raise RuntimeError("MobileOneBlock has no branch: build it with num_conv_branches >= 1.")
        return self.activation(self.se(out))

    def fused_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The kernel ``(O, I / groups, k, ..., k)`` and bias ``(O,)`` of the one conv equal to all branches (eval)."""
        n, k = self.spatial_dims, self.kernel_size
        kernel, bias = 0, 0
        for branch in self.rbr_conv:
            w, b = fuse_conv_bn(branch.conv.weight, branch.bn)
            kernel, bias = kernel + w, bias + b
        if self.rbr_scale is not None:
            w, b = fuse_conv_bn(self.rbr_scale.conv.weight, self.rbr_scale.bn)
            # The 1x1 kernel sits at the centre of the k x k one (both are padded by k // 2 per side).
            kernel, bias = kernel + F.pad(w, [k // 2] * (2 * n)), bias + b
        if self.rbr_skip is not None:
            # The identity as a conv: a centred delta from channel i to channel i (its index within its group).
            per_group = self.in_channels // self.groups
            reference = self.rbr_skip.weight
            delta = torch.zeros(
                (self.in_channels, per_group, *(k,) * n), dtype=reference.dtype, device=reference.device
            )
            channels = torch.arange(self.in_channels, device=reference.device)
            delta[(channels, channels % per_group, *(torch.full_like(channels, k // 2),) * n)] = 1
            w, b = fuse_conv_bn(delta, self.rbr_skip)
            kernel, bias = kernel + w, bias + b
        return kernel, bias

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Replace the branches by ``reparam_conv`` (in place; idempotent). The result equals the eval-mode output.

        The fused conv keeps the branches' stride, padding and dilation (so a dilated block stays dilated).
        """
        if self.inference_mode:
            return
        template = self.rbr_conv[0].conv
        kernel, bias = self.fused_kernel_bias()
        fused = self._conv(self.kernel_size, bias=True, device=kernel.device, dtype=kernel.dtype)
        fused.stride, fused.padding, fused.dilation = template.stride, template.padding, template.dilation
        fused.weight = nn.Parameter(kernel.detach().clone())
        fused.bias = nn.Parameter(bias.detach().clone())
        self.reparam_conv = fused
        del self.rbr_conv, self.rbr_scale, self.rbr_skip
        self.inference_mode = True


class MobileOneEncoder(Encoder):
    """MobileOne feature pyramid: ``depth + 1`` features ``(B, C_i, *ceil(spatial / reductions[i]))``.

    ``width_multipliers`` scale the widths 64, 128, 256, 512 of ``stage1``..``stage4`` (the stem has
    ``min(64, 64 * width_multipliers[0])`` channels); ``num_conv_branches`` is ``k``, the number of
    k x k branches of every block but the stem (which has one); ``use_se`` puts squeeze-excite on
    the last half of ``stage3``'s block pairs and all of ``stage4``'s. Only the stages ``depth`` uses
    are built.
    """

    _is_torch_scriptable = True

    def __init__(
        self,
        width_multipliers: Sequence[float],
        num_blocks_per_stage: Sequence[int] = (2, 8, 10, 1),
        num_conv_branches: int = 1,
        use_se: bool = False,
        inference_mode: bool = False,
        in_channels: int = 3,
        depth: int = 5,
        spatial_dims: int = 3,
        strides: Sequence[int | Sequence[int]] | None = None,
        name: str = "mobileone",
    ):
        spatial_dims = check_spatial_dims(spatial_dims)
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= 5:
            raise ValueError(f"Encoder {name!r} supports encoder_depth 1..5, got {depth!r}.")
        if len(width_multipliers) != 4 or len(num_blocks_per_stage) != 4:
            raise ValueError(
                f"{name}: width_multipliers and num_blocks_per_stage need 4 items each (stage1..stage4), got "
                f"{tuple(width_multipliers)!r} and {tuple(num_blocks_per_stage)!r}."
            )
        if isinstance(num_conv_branches, bool) or not isinstance(num_conv_branches, int) or num_conv_branches < 1:
            raise ValueError(f"num_conv_branches of {name!r} must be a positive int, got {num_conv_branches!r}.")
        stage_strides = resolve_strides(strides, depth, spatial_dims, max_stride=2, name=name)
        stem = min(64, int(64 * width_multipliers[0]))
        widths = [int(base * w) for base, w in zip((64, 128, 256, 512), width_multipliers, strict=True)]
        super().__init__((in_channels, stem, *widths)[: depth + 1], stage_strides, spatial_dims)

        self.inference_mode = inference_mode
        self._block = partial(MobileOneBlock, inference_mode=inference_mode, spatial_dims=spatial_dims)
        self.stage0 = self._block(in_channels, stem, 3, stage_strides[0])
        self._planes = stem
        for stage in range(2, depth + 1):
            blocks = num_blocks_per_stage[stage - 2]
            se_pairs = {4: blocks // 2, 5: blocks}.get(stage, 0) if use_se else 0
            layer = self._make_stage(widths[stage - 2], blocks, se_pairs, stage_strides[stage - 1], num_conv_branches)
            self.add_module(f"stage{stage - 1}", layer)
        del self._planes, self._block

    def _make_stage(
        self, planes: int, pairs: int, se_pairs: int, stride: tuple[int, ...], branches: int
    ) -> nn.Sequential:
        """``pairs`` (depthwise 3x3, pointwise 1x1) block pairs; the first depthwise block carries ``stride``."""
        blocks = []
        for i in range(pairs):
            use_se = i >= pairs - se_pairs
            inner = self._planes
            first = i == 0
            blocks.append(
                self._block(
                    inner,
                    inner,
                    3,
                    stride if first else 1,
                    groups=inner,
                    num_conv_branches=branches,
                    identity=not first,
                    use_se=use_se,
                )
            )
            blocks.append(
                self._block(inner, planes, 1, num_conv_branches=branches, identity=inner == planes, use_se=use_se)
            )
            self._planes = planes
        return nn.Sequential(*blocks)

    def stage_modules(self, stage: int) -> list[nn.Module]:
        return [getattr(self, f"stage{stage - 1}")]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # Stages spelled out (TorchScript resolves hasattr at compile time): only the built ones run.
        features = [x]
        if hasattr(self, "stage0"):
            x = self.stage0(x)
            features.append(x)
        if hasattr(self, "stage1"):
            x = self.stage1(x)
            features.append(x)
        if hasattr(self, "stage2"):
            x = self.stage2(x)
            features.append(x)
        if hasattr(self, "stage3"):
            x = self.stage3(x)
            features.append(x)
        if hasattr(self, "stage4"):
            x = self.stage4(x)
            features.append(x)
        return features

    @torch.no_grad()
    def reparameterize(self) -> MobileOneEncoder:
        """Fuse every block in place for inference (see :meth:`MobileOneBlock.reparameterize`); returns ``self``."""
        for block in [m for m in self.modules() if isinstance(m, MobileOneBlock)]:
            block.reparameterize()
        self.inference_mode = True
        return self

    def _stem_convs(self) -> list[nn.Module]:
        stem = self.stage0
        return [stem.reparam_conv] if stem.inference_mode else [b.conv for b in [*stem.rbr_conv, stem.rbr_scale]]

    @torch.no_grad()
    def set_in_channels(self, in_channels: int, pretrained: bool = True) -> None:
        """Adapt the stem to ``in_channels`` inputs: every stem branch's kernel by smp's rule (see
        :func:`smp3d.encoders.adapt_input_weight`), or freshly initialised when not ``pretrained``."""
        for layer in self._stem_convs():
            if layer.in_channels == in_channels:
                continue
            if pretrained:
                weight = adapt_input_weight(layer.weight.detach(), in_channels).contiguous()
            else:
                weight = layer.weight.new_empty((layer.out_channels, in_channels, *layer.kernel_size))
            layer.in_channels = in_channels
            layer.weight = nn.Parameter(weight)
            if not pretrained:
                layer.reset_parameters()
        self.stage0.in_channels = in_channels
        self.out_channels = (in_channels, *self.out_channels[1:])


def reparameterize_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fuse every MobileOne block of ``model`` (an encoder or a whole segmentation model) for inference.

    Returns a fused copy (the training model is kept) unless ``inplace``. The fused model's outputs
    equal the unfused model's in eval mode; its state dict holds ``reparam_conv`` instead of ``rbr_*``.
    """
    model = model if inplace else copy.deepcopy(model)
    with torch.no_grad():
        for block in [m for m in model.modules() if isinstance(m, MobileOneBlock)]:
            block.reparameterize()
        for module in model.modules():
            if isinstance(module, MobileOneEncoder):
                module.inference_mode = True
    return model


# Pretrained 2D sources: smp's Hub releases of Apple's ImageNet weights (keys already in this layout),
# under Apple's own ml-mobileone licence (timm calls it "mobileone-license").
_LICENSE = "mobileone-license"
_VARIANTS = {
    # name: (width multipliers, extra arguments, smp-hub revision)
    "mobileone_s0": ((0.75, 1.0, 1.0, 2.0), {"num_conv_branches": 4}, "f52815cf0ad29278a9860c9cd5fabf19f904bedf"),
    "mobileone_s1": ((1.5, 1.5, 2.0, 2.5), {}, "5707a98852b762cd8e0c43b5c8c729cd28496677"),
    "mobileone_s2": ((1.5, 2.0, 2.5, 4.0), {}, "ddc3db8fa40d271902c7a8c95cee6691f617d551"),
    "mobileone_s3": ((2.0, 2.5, 3.0, 4.0), {}, "da89b84a91b7400c366c358bfbf8dd0b2fa4dde2"),
    "mobileone_s4": ((3.0, 3.5, 3.5, 4.0), {"use_se": True}, "16197c55d599076b6aae67a83d3b3f70c31b097c"),
}


def _spec(name: str) -> EncoderSpec:
    widths, extra, revision = _VARIANTS[name]
    channels = (min(64, int(64 * widths[0])), *(int(b * w) for b, w in zip((64, 128, 256, 512), widths, strict=True)))
    branches = extra.get("num_conv_branches", 1)
    return EncoderSpec(
        build=partial(MobileOneEncoder, width_multipliers=widths, name=name, **extra),
        out_channels=(3, *channels),
        weights={"imagenet": WeightSource(repo_id=f"smp-hub/{name}.imagenet", revision=revision, license=_LICENSE)},
        family="mobileone",
        license=_LICENSE,
        description=f"{name}: widths x{list(widths)}, {branches} conv branch(es)"
        + (", squeeze-excite" if extra.get("use_se") else "")
        + "; reparameterize() fuses the branches for inference",
    )


ENCODERS: dict[str, EncoderSpec] = {name: _spec(name) for name in _VARIANTS}
