"""Encoder specs: a builder plus metadata readable without building the encoder."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import torch.nn as nn

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Builder", "EncoderSpec", "WeightSource", "as_spec"]

Builder = Callable[..., nn.Module]
"""``builder(in_channels=3, depth=5, spatial_dims=3, strides=None, **kwargs) -> encoder``."""


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class WeightSource:
    """Where the 2D weights of a pretrained tag come from (the input of weight conversion), and the
    input normalisation they were trained with: ``(x / max * input_range[1] - mean) / std`` per channel,
    channels in ``input_space`` order (see :func:`smp3d.encoders.get_preprocessing_params`)."""

    repo_id: str
    revision: str | None = None
    filename: str = "model.safetensors"
    license: str | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    input_range: tuple[float, float] = (0.0, 1.0)
    input_space: str = "RGB"


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """A registered encoder: how to build it and what is known about it before building.

    ``out_channels`` are the channels of the features of the default build (depth 5, 3 input
    channels; item 0 is the input); ``strides`` the per-stage stride the builder uses when
    given ``strides=None`` (the same on every axis), so default reductions are known unbuilt;
    ``weights`` maps pretrained tags (``"imagenet"``) to their sources. ``load_weights``, when
    set, loads a pretrained tag itself, ``load_weights(encoder, tag, name, spec)``, instead of
    fetching ``<org>/<name>.<tag>`` (the ``tu-`` encoders inflate timm's 2D weights at load time).
    Specs are immutable: derive a variant with ``dataclasses.replace``.
    """

    build: Builder
    out_channels: tuple[int, ...] | None = None
    strides: tuple[int, ...] = (2, 2, 2, 2, 2)
    weights: Mapping[str, WeightSource] = dataclasses.field(default_factory=dict)
    family: str | None = None
    max_depth: int = 5
    default_in_channels: int = 3
    license: str | None = None
    description: str = ""
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    load_weights: Callable[[nn.Module, str, str, EncoderSpec], None] | None = None

    def __post_init__(self) -> None:
        if not callable(self.build):
            raise TypeError(f"EncoderSpec.build must be callable, got {self.build!r}.")
        # Freeze the mappings so a spec shared by the registry cannot be mutated by a caller.
        object.__setattr__(self, "weights", MappingProxyType(dict(self.weights)))
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))
        if self.out_channels is not None:
            object.__setattr__(self, "out_channels", tuple(self.out_channels))
        object.__setattr__(self, "strides", tuple(self.strides))


def as_spec(obj: EncoderSpec | Builder, family: str | None = None) -> EncoderSpec:
    """Wrap a bare builder into an :class:`EncoderSpec`; fill in ``family`` if missing."""
    if isinstance(obj, EncoderSpec):
        return obj if obj.family or family is None else dataclasses.replace(obj, family=family)
    if callable(obj):
        return EncoderSpec(build=obj, family=family)
    raise TypeError(f"Expected an EncoderSpec or a builder callable, got {type(obj).__name__}: {obj!r}.")
