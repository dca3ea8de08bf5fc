"""Turning a 2D timm network into an N-D one in place, without forking its code.

timm's networks are written for (B, C, H, W) images. Two mechanisms carry them to volumes
(B, C, H, W, D), keeping every module name (so timm's 2D state dicts inflate key for key):

1. **Modules are converted where they are.** Convolutions (every ``_ConvNd``, timm's
   same-padded and weight-standardised variants included) get one more kernel/stride/padding/
   dilation entry and an inflated kernel; torch's 2D modules (BatchNorm2d, pools, pads,
   Dropout2d, ...) have their class switched to the 3D class with the same attributes; timm
   layers whose ``forward`` assumes four axes (norm-act layers asserting 4D input, TF "SAME"
   padding computed from the last two sizes, split/selective-kernel attention unpacking
   ``B, C, H, W``, blur pools) are switched to N-D subclasses defined here. Any module still
   holding a 2D-shaped kernel afterwards makes the conversion fail with its name.
2. **The remaining functional 2D code is mapped while the network runs**, by a
   :class:`torch.overrides.TorchFunctionMode` that rewrites only calls which would otherwise
   be wrong for a (B, C, H, W, D) tensor: 2D functionals (``conv2d``, pools, ``adaptive_*``,
   ``dropout2d``) become their 3D versions with extended arguments; reductions over the two
   spatial axes (``mean((2, 3))``, ``(-2, -1)``, channels-last ``(1, 2)``) cover all three;
   4-axis permutations between channels-first and channels-last gain the depth axis; ``F.pad``
   with four values pads depth like W when H and W are padded alike; ``interpolate`` sizes and
   scales get a depth entry; and (1, C, 1, 1)-shaped operands of elementwise arithmetic
   (layer scale, GRN, attention gates) gain a trailing axis so they broadcast per channel.

The rule for a missing depth entry is the same everywhere: where a 2D argument is equal along H
and W (a square kernel, an isotropic stride, symmetric padding), depth gets that value; where
they differ (Inception's 1x7 and 7x1 kernels), depth gets the neutral value (kernel 1, stride
1, padding 0). In 2D only the attention layers of :mod:`.timm_attention` and
:mod:`.timm_attention_families` are switched (they equal timm's where timm accepts the input and
pad where timm asserts a size); the rest of the timm network is used as it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.overrides import TorchFunctionMode

from smp3d.encoders.inflate import inflate_kernel

from .timm_attention import ATTENTION_MIXINS as _WINDOW_MIXINS
from .timm_attention_families import FAMILY_MIXINS

ATTENTION_MIXINS: dict[str, type] = {**_WINDOW_MIXINS, **FAMILY_MIXINS}

_ATTENTION_CLASSES = tuple(ATTENTION_MIXINS.values())

__all__ = [
    "ConversionError",
    "SpatialNdMode",
    "convert_attention",
    "convert_to_nd",
    "extend",
    "nd_mode",
    "pad_same_nd",
]


class ConversionError(TypeError):
    """A module of a timm network could not be converted to N-D; the message names it."""


# -- argument extension ------------------------------------------------------------------------


def extend(value: Any, spatial_dims: int, neutral: int) -> tuple[int, ...]:
    """A 2D per-axis argument (int or pair) as ``spatial_dims`` entries; see the module docs for the rule."""
    if isinstance(value, int):
        return (value,) * spatial_dims
    value = tuple(value)
    if len(value) == spatial_dims:
        return value
    if len(value) == 1:
        return value * spatial_dims
    if len(value) != 2:
        raise ValueError(f"Expected an int or 2 per-axis values, got {value!r}.")
    h, w = value
    return (h, w) + ((h if h == w else neutral),) * (spatial_dims - 2)


def _nd_padding(padding: Any, kernel: Sequence[int], spatial_dims: int) -> Any:
    if isinstance(padding, str):
        return padding
    padding = tuple(padding) if not isinstance(padding, int) else (padding, padding)
    if len(padding) == spatial_dims:
        return padding
    # a non-square kernel gets kernel 1 along depth, hence no depth padding
    extended = extend(padding, spatial_dims, 0)
    return extended if kernel[-1] > 1 else extended[:2] + (0,) * (spatial_dims - 2)


def pad_same_nd(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int], value=0.0):
    """TF-'SAME' padding over every spatial axis of ``x`` (timm's rule, per axis)."""
    pads: list[int] = []
    for size, k, s, d in reversed(list(zip(x.shape[2:], kernel, stride, dilation, strict=True))):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value) if any(pads) else x


def _conv_nd(x: torch.Tensor, weight, bias, stride, padding, dilation, groups) -> torch.Tensor:
    fn = (F.conv1d, F.conv2d, F.conv3d)[x.ndim - 3]
    return fn(x, weight, bias, stride, padding, dilation, groups)


# -- N-D versions of timm layers whose forward assumes 4 axes ----------------------------------
# Each subclasses the timm class (isinstance and names stay), so only ``forward`` changes.


class _SameConvNd:
    """Mixin for timm's TF-'SAME' convolutions: pad every axis, then convolve."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same_nd(x, self.kernel_size, self.stride, self.dilation)
        return _conv_nd(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class _StdConvNd:
    """Mixin for weight-standardised convolutions (BiT, NFNet).

    Standardising an I3D-inflated kernel undoes its ``1 / kd``: each filter's mean and deviation
    shrink by ``kd`` too. The standardised kernel is divided by the product of the added kernel
    entries again (and ``eps`` scaled like the variance), so a depth-constant volume gives the 2D
    response exactly.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self, "same_pad", False):
            x = pad_same_nd(x, self.kernel_size, self.stride, self.dilation)
        gain = getattr(self, "gain", None)
        taps = math.prod(self.kernel_size[2:])
        weight = F.batch_norm(
            self.weight.reshape(1, self.out_channels, -1),
            None,
            None,
            weight=(gain * self.scale).view(-1) if gain is not None else None,
            training=True,
            momentum=0.0,
            eps=self.eps / taps**2,  # the variance of an inflated filter is the 2D one / taps**2
        ).reshape_as(self.weight)
        weight = weight / taps
        return _conv_nd(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class _SamePoolNd:
    """Mixin for timm's TF-'SAME' pools (max pads with -inf, average with zeros)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self, nn.MaxPool2d):
            x = pad_same_nd(x, self.kernel_size, self.stride, self.dilation, value=-float("inf"))
            fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[x.ndim - 3]
            return fn(x, self.kernel_size, self.stride, 0, self.dilation, self.ceil_mode)
        x = pad_same_nd(x, self.kernel_size, self.stride, (1,) * len(self.kernel_size))
        fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[x.ndim - 3]
        return fn(x, self.kernel_size, self.stride, 0, self.ceil_mode, self.count_include_pad)


class _BatchNormActNd:
    """Mixin for timm's BatchNormAct2d: torch's N-D batch norm, then timm's drop and activation."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 3:
            raise ValueError(f"expected an input of at least 3 axes (got {x.dim()})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _BatchNorm.forward(self, x)
        return self.act(self.drop(x))


class _BlurPoolNd:
    """Mixin for timm's BlurPool2d: the binomial filter is made separable over every axis."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = x.ndim - 2
        x = F.pad(x, [self.padding[0]] * (2 * dims), mode=self.pad_mode)
        channels = self.channels if self.channels is not None else x.shape[1]
        weight = self.filt.expand(channels, *self.filt.shape[1:]) if self.channels is None else self.filt
        return _conv_nd(x, weight, None, self.stride, 0, 1, channels)


class _SplitAttnNd:
    """Mixin for timm's SplitAttn (ResNeSt): split attention over any number of spatial axes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act0(self.drop(self.bn0(self.conv(x))))
        batch, channels, spatial = x.shape[0], x.shape[1], x.shape[2:]
        ones = (1,) * len(spatial)
        if self.radix > 1:
            x = x.reshape(batch, self.radix, channels // self.radix, *spatial)
            gap = x.sum(dim=1)
        else:
            gap = x
        gap = gap.mean(tuple(range(2, gap.ndim)), keepdim=True)
        gap = self.act1(self.bn1(self.fc1(gap)))
        attn = self.rsoftmax(self.fc2(gap)).view(batch, -1, *ones)
        if self.radix > 1:
            out = (x * attn.reshape(batch, self.radix, channels // self.radix, *ones)).sum(dim=1)
        else:
            out = x * attn
        return out.contiguous()


class _SelectiveKernelAttnNd:
    """Mixin for timm's SelectiveKernelAttn (SKNet): path weights over any number of spatial axes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.sum(1)
        x = x.mean(tuple(range(2, x.ndim)), keepdim=True)
        x = self.fc_select(self.act(self.bn(self.fc_reduce(x))))
        batch, channels = x.shape[:2]
        x = x.view(batch, self.num_paths, channels // self.num_paths, *x.shape[2:])
        return torch.softmax(x, dim=1)


_MIXINS: dict[str, type] = {
    "Conv2dSame": _SameConvNd,
    "StdConv2d": _StdConvNd,
    "StdConv2dSame": _StdConvNd,
    "ScaledStdConv2d": _StdConvNd,
    "ScaledStdConv2dSame": _StdConvNd,
    "MaxPool2dSame": _SamePoolNd,
    "AvgPool2dSame": _SamePoolNd,
    "BatchNormAct2d": _BatchNormActNd,
    "BlurPool2d": _BlurPoolNd,
    "SplitAttn": _SplitAttnNd,
    "SelectiveKernelAttn": _SelectiveKernelAttnNd,
}
_ND_CLASSES: dict[type, type] = {}


def _nd_class(cls: type) -> type | None:
    """The N-D subclass of the timm layer ``cls`` (created once, registered under a module-level name)."""
    if cls in _ND_CLASSES:
        return _ND_CLASSES[cls]
    if not cls.__module__.startswith("timm."):
        return None
    mixin = ATTENTION_MIXINS.get(f"{cls.__module__}.{cls.__name__}") or _MIXINS.get(cls.__name__)
    if mixin is None:
        return None
    name = f"{cls.__name__}Nd"
    if name in globals():  # the same class name in two timm modules (Swin's and Swin V2's WindowAttention)
        name = f"{cls.__module__.rpartition('.')[2]}_{name}"
    nd = type(name, (mixin, cls), {"__module__": __name__})
    nd.__qualname__ = nd.__name__
    globals()[nd.__name__] = nd  # so that pickling finds it
    _ND_CLASSES[cls] = nd
    return nd


# -- module conversion -------------------------------------------------------------------------

_TORCH_SWAPS: dict[type, type] = {
    nn.Conv2d: nn.Conv3d,
    nn.ConvTranspose2d: nn.ConvTranspose3d,
    nn.BatchNorm2d: nn.BatchNorm3d,
    nn.InstanceNorm2d: nn.InstanceNorm3d,
    nn.MaxPool2d: nn.MaxPool3d,
    nn.AvgPool2d: nn.AvgPool3d,
    nn.AdaptiveAvgPool2d: nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool2d: nn.AdaptiveMaxPool3d,
    nn.Dropout2d: nn.Dropout3d,
    nn.ZeroPad2d: nn.ZeroPad3d,
    nn.ConstantPad2d: nn.ConstantPad3d,
    nn.ReflectionPad2d: nn.ReflectionPad3d,
    nn.ReplicationPad2d: nn.ReplicationPad3d,
}
_UNSUPPORTED: tuple[type, ...] = (nn.PixelShuffle, nn.PixelUnshuffle, nn.Unfold, nn.Fold)

StrideOverride = Callable[[str, nn.Module], "tuple[int, ...] | None"]


def _depth_entries(kernel: tuple[int, ...], spatial_dims: int) -> tuple[int, ...]:
    return kernel[2:] if len(kernel) == spatial_dims else ()


@torch.no_grad()
def _convert_conv(name: str, m: _ConvNd, spatial_dims: int, stride: tuple[int, ...] | None) -> None:
    kernel = extend(m.kernel_size, spatial_dims, 1)
    native = extend(m.stride, spatial_dims, 1)
    new_stride = stride if stride is not None else native
    # a patchifying convolution (kernel == stride, no padding) keeps kernel == stride on every axis
    patchify = not isinstance(m.padding, str) and all(p == 0 for p in extend(m.padding, spatial_dims, 0))
    kernel = tuple(
        s if patchify and k == n and s != n else k for k, n, s in zip(kernel, native, new_stride, strict=True)
    )
    m.padding = _nd_padding(m.padding, kernel, spatial_dims)
    if not isinstance(m.padding, str):
        # an axis whose stride is lowered to 1 keeps its size: a stem such as kernel 7, stride 4, padding 2
        # would otherwise lose voxels along it at every level
        dilation = extend(m.dilation, spatial_dims, 1)
        m.padding = tuple(
            max(p, d * (k - 1) // 2) if s == 1 and n > 1 and k % 2 else p
            for p, k, s, n, d in zip(m.padding, kernel, new_stride, native, dilation, strict=True)
        )
    m.kernel_size, m.stride = kernel, new_stride
    m.dilation = extend(m.dilation, spatial_dims, 1)
    m.output_padding = extend(m.output_padding, spatial_dims, 0)
    if not isinstance(m.padding, str):
        m._reversed_padding_repeated_twice = [p for p in reversed(m.padding) for _ in range(2)]
    weight = m.weight
    if weight.ndim == spatial_dims + 1:  # a 2D kernel (O, I, kh, kw), maybe patchified differently now
        w2 = _shrink_patches(weight.detach(), kernel[:2])
        w3 = inflate_kernel(w2, math.prod(kernel[2:]), "i3d").reshape(*w2.shape, *kernel[2:])
        m.weight = nn.Parameter(w3.contiguous(), requires_grad=weight.requires_grad)


def _shrink_patches(weight: torch.Tensor, kernel: Sequence[int]) -> torch.Tensor:
    """A patchifying kernel made smaller along H/W (a lower stride there): neighbouring taps are summed,
    so a constant input keeps its response. Pretrained 2D weights then no longer fit that layer."""
    for axis, new in enumerate(kernel, start=2):
        old = weight.shape[axis]
        if new != old:
            shape = list(weight.shape)
            shape[axis : axis + 1] = [new, old // new]
            weight = weight.reshape(shape).sum(axis + 1)
    return weight


def _convert_pool(m: nn.Module, spatial_dims: int, stride: tuple[int, ...] | None) -> None:
    kernel = extend(m.kernel_size, spatial_dims, 1)
    native = extend(m.stride if m.stride is not None else m.kernel_size, spatial_dims, 1)
    new_stride = stride if stride is not None else native
    padding = extend(m.padding, spatial_dims, 0)
    kernel = tuple(
        s if k == n and p == 0 and s != n else k for k, n, s, p in zip(kernel, native, new_stride, padding, strict=True)
    )
    m.kernel_size, m.stride, m.padding = kernel, new_stride, padding
    if hasattr(m, "dilation"):
        m.dilation = extend(m.dilation, spatial_dims, 1)


@torch.no_grad()
def _convert_blur(m: nn.Module, spatial_dims: int, stride: tuple[int, ...] | None) -> None:
    filt = m.filt  # (C, 1, k, k) = outer(c, c); the N-D filter is outer(c, ..., c)
    coeffs = filt[0, 0].sum(-1)
    nd = filt
    for _ in range(spatial_dims - 2):
        nd = nd.unsqueeze(-1) * coeffs
    m.filt = nd.contiguous()
    m.stride = stride if stride is not None else (m.stride,) * spatial_dims


def _param_shapes_left(name: str, m: nn.Module, spatial_dims: int) -> None:
    """Refuse a module that still holds a 2D kernel (a 4-axis tensor with spatial extent)."""
    for pname, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
        if t is not None and t.ndim == 4 and tuple(t.shape[2:]) != (1, 1):
            raise ConversionError(
                f"Cannot convert module {name!r} ({type(m).__module__}.{type(m).__name__}) to {spatial_dims}D: "
                f"it holds the 2D kernel {pname!r} of shape {tuple(t.shape)} and no N-D conversion is known for "
                f"its class."
            )


def convert_to_nd(model: nn.Module, spatial_dims: int = 3, strides: dict[str, tuple[int, ...]] | None = None) -> None:
    """Convert ``model`` (2D) to ``spatial_dims`` in place; see the module docs.

    ``strides`` maps module names to new per-axis strides (length ``spatial_dims``); modules not
    named keep their native stride (extended by the rule). Raises :class:`ConversionError` naming
    the first module that cannot be converted.
    """
    strides = strides or {}
    if spatial_dims == 2:
        convert_attention(model)
        for name, m in model.named_modules():
            if name in strides:
                _restride_2d(name, m, strides[name])
        return
    for name, m in list(model.named_modules()):
        cls = type(m)
        stride = strides.get(name)
        if isinstance(m, _UNSUPPORTED):
            raise ConversionError(
                f"Cannot convert module {name!r} ({cls.__name__}) to {spatial_dims}D: it rearranges 2D pixels "
                f"(pixel shuffle / unfold) and has no N-D equivalent here."
            )
        nd = _nd_class(cls)
        if isinstance(m, _ConvNd):
            if len(m.kernel_size) == 2:
                _convert_conv(name, m, spatial_dims, stride)
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            _convert_pool(m, spatial_dims, stride)
        elif cls in (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d):
            m.output_size = extend(m.output_size, spatial_dims, 1) if m.output_size is not None else None
        elif cls in (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d):
            m.padding = _extend_pad(tuple(m.padding), spatial_dims)
        elif nd is not None and issubclass(nd, _BlurPoolNd):
            _convert_blur(m, spatial_dims, stride)
        elif stride is not None and hasattr(nd or cls, "set_stride"):
            (nd or cls).set_stride(m, name, stride)
        elif stride is not None and hasattr(m, "stride"):
            raise ConversionError(
                f"Cannot change the stride of module {name!r} ({cls.__name__}): per-axis strides need a "
                f"convolution or pooling layer there."
            )
        if cls in _TORCH_SWAPS:
            m.__class__ = _TORCH_SWAPS[cls]
        elif nd is not None:
            m.__class__ = nd
        elif isinstance(m, nn.BatchNorm2d):
            raise ConversionError(
                f"Cannot convert module {name!r} ({cls.__module__}.{cls.__name__}) to {spatial_dims}D: a BatchNorm2d "
                f"subclass with its own forward, which no N-D conversion is known for."
            )
        if not isinstance(m, _ATTENTION_CLASSES):  # they index their 2D tables for N-D windows themselves
            _param_shapes_left(name, m, spatial_dims)


def convert_attention(model: nn.Module) -> None:
    """Switch timm's attention layers (window, grid, global; see :mod:`.timm_attention`) to their N-D classes.

    Done in 2D too: the N-D classes give timm's outputs where timm accepts the input, and pad where timm
    would assert a size (window multiples, ``img_size``), so no size is imposed on the user.
    """
    for m in model.modules():
        cls = type(m)
        if cls.__module__.startswith("timm.") and f"{cls.__module__}.{cls.__name__}" in ATTENTION_MIXINS:
            m.__class__ = _nd_class(cls)


def _restride_2d(name: str, m: nn.Module, stride: tuple[int, ...]) -> None:
    if hasattr(m, "set_stride"):
        m.set_stride(name, tuple(stride))
        return
    if isinstance(m, _ConvNd):
        native = extend(m.stride, 2, 1)
        patchify = not isinstance(m.padding, str) and all(p == 0 for p in extend(m.padding, 2, 0))
        if patchify and tuple(m.kernel_size) == native and tuple(stride) != native:
            raise ConversionError(f"Module {name!r}: a patchifying convolution cannot change its 2D stride per axis.")
        m.stride = tuple(stride)
    elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        _convert_pool(m, 2, tuple(stride))
    elif type(m).__name__ == "BlurPool2d":
        m.stride = tuple(stride)
    else:
        raise ConversionError(f"Cannot change the stride of module {name!r} ({type(m).__name__}).")


def _extend_pad(pad: tuple[int, ...], spatial_dims: int) -> tuple[int, ...]:
    """F.pad's 2D order (W-left, W-right, H-top, H-bottom) -> depth first (the last axis) + the same."""
    if len(pad) != 4:
        return pad
    w, h = pad[:2], pad[2:]
    return (w if w == h else (0, 0)) * (spatial_dims - 2) + pad


# -- the function mode -------------------------------------------------------------------------


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_REDUCTIONS = _words("mean sum amax amin std var var_mean std_mean norm logsumexp nansum nanmean")
_ELEMENTWISE = _words(
    "add sub mul div true_divide addcmul addcdiv where lerp maximum minimum pow add_ sub_ mul_ div_ addcmul_ "
    "addcdiv_ lerp_ __add__ __radd__ __iadd__ __sub__ __rsub__ __isub__ __mul__ __rmul__ __imul__ __truediv__ "
    "__rtruediv__ __itruediv__ expand_as"
)


def _func_name(func: Callable) -> str:
    return getattr(func, "__name__", "")


class SpatialNdMode(TorchFunctionMode):
    """Maps 2D-assuming torch calls onto ``(B, C, *spatial)`` tensors with ``spatial_dims`` axes.

    Only calls on tensors with ``spatial_dims + 2`` axes are touched, and only where the 2D
    call would be wrong for them (see the module docs). Active around the forward of a
    converted network.
    """

    def __init__(self, spatial_dims: int = 3):
        super().__init__()
        self.spatial_dims = spatial_dims
        self.ndim = spatial_dims + 2
        pools = {
            F.avg_pool2d: self._pool(F.avg_pool3d, ("kernel_size", "stride", "padding")),
            F.max_pool2d: self._pool(F.max_pool3d, ("kernel_size", "stride", "padding", "dilation")),
            F.max_pool2d_with_indices: self._pool(
                F.max_pool3d_with_indices, ("kernel_size", "stride", "padding", "dilation")
            ),
            F.lp_pool2d: self._pool(F.lp_pool3d, ("norm_type", "kernel_size", "stride")),
            torch.max_pool2d: self._pool(torch.max_pool3d, ("kernel_size", "stride", "padding", "dilation")),
        }
        maxpool = getattr(F, "_max_pool2d", None)
        if maxpool is not None:
            pools[maxpool] = self._pool(F.max_pool3d, ("kernel_size", "stride", "padding", "dilation"))
        self._rewrites: dict[Callable, Callable] = {
            **pools,
            F.conv2d: self._conv,
            F.conv_transpose2d: self._conv_transpose,
            F.adaptive_avg_pool2d: self._adaptive(F.adaptive_avg_pool3d),
            F.adaptive_max_pool2d: self._adaptive(F.adaptive_max_pool3d),
            F.dropout2d: lambda x, *a, **k: F.dropout3d(x, *a, **k),
            F.pad: self._pad,
            F.interpolate: self._interpolate,
            F.avg_pool3d: self._avg_pool3d,
        }
        for name in ("_adaptive_max_pool2d", "adaptive_max_pool2d_with_indices"):
            fn = getattr(F, name, None)
            if fn is not None:
                self._rewrites[fn] = self._adaptive(getattr(F, name.replace("2d", "3d")))

    # -- helpers
    def _is_map(self, x: Any) -> bool:
        return isinstance(x, torch.Tensor) and x.ndim == self.ndim

    def _ext(self, value: Any, neutral: int) -> Any:
        if value is None or isinstance(value, (int, str)):
            return value
        return extend(value, self.spatial_dims, neutral) if len(value) == 2 else value

    # -- rewrites (each returns a result, or NotImplemented to run the original call)
    def _kernel(self, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """A functional 2D kernel (not a converted module's) is inflated by the rule of the module docs."""
        if weight.ndim != x.ndim - 1:
            return weight
        kd = weight.shape[-1] if weight.shape[-1] == weight.shape[-2] else 1
        return inflate_kernel(weight, kd)

    def _conv(self, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        if not self._is_map(x):
            return NotImplemented
        weight = self._kernel(weight, x)
        return F.conv3d(x, weight, bias, self._ext(stride, 1), self._ext(padding, 0), self._ext(dilation, 1), groups)

    def _conv_transpose(self, x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
        if not self._is_map(x):
            return NotImplemented
        weight = self._kernel(weight, x)
        return F.conv_transpose3d(
            x,
            weight,
            bias,
            self._ext(stride, 1),
            self._ext(padding, 0),
            self._ext(output_padding, 0),
            groups,
            self._ext(dilation, 1),
        )

    def _pool(self, fn3d: Callable, names: tuple[str, ...]) -> Callable:
        neutral = {"kernel_size": 1, "stride": 1, "padding": 0, "dilation": 1, "norm_type": None}

        def rewrite(x, *args, **kwargs):
            if not self._is_map(x):
                return NotImplemented
            args = list(args)
            for i, name in enumerate(names):
                if i < len(args) and neutral[name] is not None:
                    args[i] = self._ext(args[i], neutral[name])
                elif name in kwargs and neutral[name] is not None:
                    kwargs[name] = self._ext(kwargs[name], neutral[name])
            return fn3d(x, *args, **kwargs)

        return rewrite

    def _avg_pool3d(
        self, x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor=None
    ):
        """torch's 3D average pool refuses an axis shorter than its kernel even where the padding covers it
        (its 2D pool takes it): such an input is padded here first, with the same divisor. An axis still shorter
        than the kernel after the pool's own padding (a thin depth under a 2x2x2 pool) is replicated up to it."""
        kernel = extend(kernel_size, 3, 1)
        if x.ndim != 5 or all(s >= k for s, k in zip(x.shape[2:], kernel, strict=True)):
            return NotImplemented
        stride = extend(stride if stride else kernel_size, 3, 1)
        pad = extend(padding, 3, 0)
        pads = [p for p in reversed(pad) for _ in range(2)]
        short: list[int] = []
        for size, k, p in reversed(list(zip(x.shape[2:], kernel, pad, strict=True))):
            short += [0, max(k - size - 2 * p, 0)]
        if any(short):
            x = F.pad(x, short, mode="replicate")
        out = F.avg_pool3d(F.pad(x, pads), kernel, stride, 0, ceil_mode, True, divisor)
        if not count_include_pad and divisor is None and any(pad):
            ones = F.pad(torch.ones_like(x[:1, :1]), pads)
            out = out / F.avg_pool3d(ones, kernel, stride, 0, ceil_mode, True, None)  # sum / prod(k) -> sum / count
        return out

    def _adaptive(self, fn3d: Callable) -> Callable:
        def rewrite(x, output_size, *args, **kwargs):
            if not self._is_map(x):
                return NotImplemented
            if isinstance(output_size, Sequence) and len(output_size) == 2:
                output_size = extend(output_size, self.spatial_dims, 1) if None not in output_size else output_size
            return fn3d(x, output_size, *args, **kwargs)

        return rewrite

    def _pad(self, x, pad, *args, **kwargs):
        if not self._is_map(x) or len(pad) != 4:
            return NotImplemented
        return F.pad(x, _extend_pad(tuple(pad), self.spatial_dims), *args, **kwargs)

    def _interpolate(self, x, size=None, scale_factor=None, mode="nearest", *args, **kwargs):
        if not self._is_map(x):
            return NotImplemented
        if isinstance(size, Sequence) and len(size) == 2:
            # 2D code took the size from ``t.shape[-2:]``, the last two axes (W, D) here: H follows W's ratio
            w, d = (int(v) for v in size)
            size = (max(1, round(x.shape[2] * w / x.shape[3])), w, d)
        if isinstance(scale_factor, Sequence) and len(scale_factor) == 2:
            scale_factor = extend(scale_factor, self.spatial_dims, 1)
        if mode in ("bilinear", "bicubic"):
            mode = "trilinear"
        return F.interpolate(x, size, scale_factor, mode, *args, **kwargs)

    def _dims(self, dims: Any) -> Any:
        """Two (or three) 2D spatial axes of a reduction -> the ``spatial_dims`` spatial axes."""
        if not isinstance(dims, (tuple, list)) or len(dims) not in (2, 3):
            return None
        if not all(isinstance(d, int) for d in dims):
            return None
        normalized = sorted(d + 4 if d < 0 else d for d in dims)
        if normalized == [2, 3]:  # channels first
            return tuple(range(2, self.ndim))
        if normalized == [1, 2]:  # channels last
            return tuple(range(1, self.ndim - 1))
        if normalized == [1, 2, 3]:  # everything but the batch
            return tuple(range(1, self.ndim))
        return None

    def _reduce(self, func, args, kwargs):
        x = args[0] if args else None
        if not self._is_map(x):
            return NotImplemented
        if "dim" in kwargs:
            dims = self._dims(kwargs["dim"])
            if dims is None:
                return NotImplemented
            return func(*args, **{**kwargs, "dim": dims})
        if func is torch.Tensor.norm or _func_name(func) == "norm":
            if len(args) >= 3:
                dims = self._dims(args[2])
                if dims is not None:
                    return func(args[0], args[1], dims, *args[3:], **kwargs)
            return NotImplemented
        if len(args) >= 2:
            dims = self._dims(args[1])
            if dims is not None:
                return func(args[0], dims, *args[2:], **kwargs)
        return NotImplemented

    def _permute(self, func, args, kwargs):
        x = args[0]
        dims = args[1:] if len(args) > 2 else (args[1] if len(args) == 2 else kwargs.get("dims"))
        if not self._is_map(x) or dims is None:
            return NotImplemented
        dims = tuple(dims)
        if len(dims) != 4:
            return NotImplemented
        if dims == (0, 2, 3, 1):  # channels first -> channels last
            return x.permute(0, *range(2, self.ndim), 1)
        if dims == (0, 3, 1, 2):  # channels last -> channels first
            return x.permute(0, self.ndim - 1, *range(1, self.ndim - 1))
        if dims == (0, 1, 2, 3):
            return x
        return NotImplemented

    def _broadcast(self, func, args, kwargs):
        maps = [a for a in list(args) + list(kwargs.values()) if self._is_map(a)]
        if not maps:
            return NotImplemented
        channels = maps[0].shape[1]

        def fix(a: Any) -> Any:
            if isinstance(a, torch.Tensor) and a.ndim in (3, 4) and a.ndim < self.ndim:
                shape = tuple(a.shape)
                per_channel = shape[-2:] == (1, 1) and shape[-3] == channels
                if per_channel and (a.ndim == 3 or shape[0] in (1, maps[0].shape[0])):
                    return a.reshape(*shape, *(1,) * (self.spatial_dims - 2))
            return a

        new_args = tuple(fix(a) for a in args)
        new_kwargs = {k: fix(v) for k, v in kwargs.items()}
        if all(a is b for a, b in zip(new_args, args, strict=True)) and all(new_kwargs[k] is kwargs[k] for k in kwargs):
            return NotImplemented
        return func(*new_args, **new_kwargs)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = NotImplemented
        rewrite = self._rewrites.get(func)
        if rewrite is not None:
            result = rewrite(*args, **kwargs)
        else:
            name = _func_name(func)
            if name in _REDUCTIONS:
                result = self._reduce(func, args, kwargs)
            elif name == "permute":
                result = self._permute(func, args, kwargs)
            elif name in _ELEMENTWISE:
                result = self._broadcast(func, args, kwargs)
        if result is NotImplemented:
            return func(*args, **kwargs)
        return result


_MODES: dict[int, SpatialNdMode] = {}


def nd_mode(spatial_dims: int) -> SpatialNdMode:
    """One shared mode per ``spatial_dims``: it holds no per-call state, so its rewrite table is built once.

    (A plain dict rather than ``functools.cache``, which Dynamo warns about inside a compiled forward.)
    """
    mode = _MODES.get(spatial_dims)
    if mode is None:
        mode = _MODES[spatial_dims] = SpatialNdMode(spatial_dims)
    return mode
