"""Small dims-agnostic blocks shared by decoders and heads.

Module layouts (the order of children in each ``nn.Sequential``, attribute names) follow
segmentation_models_pytorch 0.6 so that 2D state dicts have the same keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .capture import channels_first, channels_last
from .factories import adaptive_avg_pool, batch_norm, conv, instance_norm

__all__ = [
    "Activation",
    "Attention",
    "ChannelLayerNorm",
    "ConvNormAct",
    "SCSE",
    "create_activation",
    "create_norm",
]

NORMS = ("batchnorm", "identity", "layernorm", "instancenorm", "inplace")

NormSpec = bool | str | Mapping[str, Any]


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of a ``(B, C, *spatial)`` tensor, per voxel.

    Parameters are ``weight``/``bias`` of shape ``(C,)`` like ``nn.LayerNorm(C)``, so state
    dicts match; unlike applying ``nn.LayerNorm(C)`` to a channels-first tensor directly, it
    normalizes the channels rather than the last spatial axis.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(channels_last(x), self.normalized_shape, self.weight, self.bias, self.eps)
        return channels_first(x)


def _norm_params(use_norm: NormSpec) -> dict[str, Any]:
    if use_norm is True:
        return {"type": "batchnorm"}
    if use_norm is False or use_norm is None:
        return {"type": "identity"}
    if isinstance(use_norm, str):
        params = {"type": use_norm.lower()}
    elif isinstance(use_norm, Mapping):
        params = dict(use_norm)
    else:
        raise TypeError(
            f"use_norm must be a bool, one of {NORMS} or a dict like {{'type': 'batchnorm', **kwargs}}; "
            f"got {use_norm!r}."
        )
    if params.get("type") not in NORMS:
        raise ValueError(f"Unknown normalization {use_norm!r}; expected a type in {NORMS}.")
    if params["type"] == "inplace":
        params.setdefault("activation", "leaky_relu")
        params.setdefault("activation_param", 0.0)
    return params


def create_norm(use_norm: NormSpec, channels: int, spatial_dims: int) -> nn.Module:
    """Build the normalization layer described by smp's ``use_norm`` convention.

    ``True`` -> batchnorm, ``False`` -> identity, a name in ``NORMS``, or
    ``{"type": name, **kwargs}`` with kwargs for the torch layer.
    """
    params = _norm_params(use_norm)
    kind = params.pop("type")
    if kind == "batchnorm":
        return batch_norm(spatial_dims)(channels, **params)
    if kind == "instancenorm":
        return instance_norm(spatial_dims)(channels, **params)
    if kind == "layernorm":
        return ChannelLayerNorm(channels, **params)
    if kind == "identity":
        return nn.Identity()
    try:  # "inplace": InPlace-ABN is an optional compiled dependency
        from inplace_abn import InPlaceABN
    except ImportError:
        raise RuntimeError(
            "use_norm='inplace' needs the optional package inplace_abn "
            "(pip install inplace_abn --no-build-isolation); or use 'batchnorm'."
        ) from None
    return InPlaceABN(channels, **params)


class ConvNormAct(nn.Sequential):
    """conv -> norm -> ReLU as an ``nn.Sequential`` (children 0, 1, 2).

    The conv has a bias only when there is no normalization, as in smp's ``Conv2dReLU``.
    InPlace-ABN applies its own activation, so the ReLU becomes an identity then.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...] = 3,
        padding: int | tuple[int, ...] | str = 1,
        stride: int | tuple[int, ...] = 1,
        use_norm: NormSpec = "batchnorm",
        spatial_dims: int = 3,
    ):
        norm = create_norm(use_norm, out_channels, spatial_dims)
        has_norm = not isinstance(norm, nn.Identity)
        layer = conv(spatial_dims)(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=not has_norm
        )
        fused_activation = type(norm).__name__ == "InPlaceABN"
        activation = nn.Identity() if fused_activation else nn.ReLU(inplace=True)
        super().__init__(layer, norm, activation)


class SCSE(nn.Module):
    """Concurrent spatial and channel squeeze-and-excitation (Roy et al., 2018), N-D.

    ``x * cSE(x) + x * sSE(x)``; children ``cSE`` and ``sSE`` keep smp's key names.
    """

    def __init__(self, in_channels: int, reduction: int = 16, spatial_dims: int = 3):
        super().__init__()
        conv_nd = conv(spatial_dims)
        hidden = in_channels // reduction
        if hidden < 1:
            raise ValueError(f"SCSE with reduction={reduction} needs at least {reduction} channels, got {in_channels}.")
        self.cSE = nn.Sequential(
            adaptive_avg_pool(spatial_dims)(1),
            conv_nd(in_channels, hidden, 1),
            nn.ReLU(inplace=True),
            conv_nd(hidden, in_channels, 1),
            nn.Sigmoid(),
        )
        self.sSE = nn.Sequential(conv_nd(in_channels, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (self.cSE(x) + self.sSE(x))


class Attention(nn.Module):
    """Optional attention by name: ``None`` (identity) or ``"scse"``. Child is ``attention``."""

    def __init__(self, name: str | None, in_channels: int, spatial_dims: int = 3, **params: Any):
        super().__init__()
        if name is None:
            self.attention: nn.Module = nn.Identity()
        elif name == "scse":
            self.attention = SCSE(in_channels, spatial_dims=spatial_dims, **params)
        else:
            raise ValueError(f"Unknown attention type {name!r}; expected None or 'scse'.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(x)


class _ArgMax(nn.Module):
    def __init__(self, dim: int | None = None):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.argmax(x, dim=self.dim)


class _Clamp(nn.Module):
    def __init__(self, min: float = 0, max: float = 1):  # noqa: A002 - smp's argument names
        super().__init__()
        self.min, self.max = min, max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, self.min, self.max)


ACTIVATIONS: dict[str, Callable[..., nn.Module]] = {
    "identity": nn.Identity,
    "sigmoid": nn.Sigmoid,
    "softmax": lambda **p: nn.Softmax(**{"dim": 1, **p}),
    "softmax2d": lambda **p: nn.Softmax(**{"dim": 1, **p}),
    "logsoftmax": lambda **p: nn.LogSoftmax(**{"dim": 1, **p}),
    "tanh": nn.Tanh,
    "argmax": _ArgMax,
    "argmax2d": lambda **p: _ArgMax(**{"dim": 1, **p}),
    "clamp": _Clamp,
    "relu": lambda **p: nn.ReLU(**p),
}


def create_activation(name: str | Callable[..., nn.Module] | None, **params: Any) -> nn.Module:
    """An activation module by name (smp's names), ``None`` for identity, or a callable class.

    ``softmax``/``logsoftmax`` default to the channel axis (``dim=1``), the only sensible
    choice for ``(B, C, *spatial)`` logits.
    """
    if name is None:
        return nn.Identity()
    if isinstance(name, str):
        try:
            return ACTIVATIONS[name](**params)
        except KeyError:
            raise ValueError(
                f"Unknown activation {name!r}; expected None, a callable or one of {sorted(ACTIVATIONS)}."
            ) from None
    if callable(name):
        return name(**params)
    raise TypeError(f"activation must be a name, a callable or None, got {name!r}.")


class Activation(nn.Module):
    """Wraps :func:`create_activation` under the child name ``activation`` (smp's layout)."""

    def __init__(self, name: str | Callable[..., nn.Module] | None, **params: Any):
        super().__init__()
        self.activation = create_activation(name, **params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x)
