"""The encoder registry: entry points, in-process registrations and prefix resolvers.

Two entry-point groups feed it, read once, lazily, on the first lookup:

- ``smp3d.encoders``: ``<family> = "module:attr"``; ``attr`` is a mapping
  ``name -> builder | EncoderSpec`` or a zero-argument callable returning one.
- ``smp3d.encoder_resolvers``: ``<prefix> = "module:resolve"``; ``resolve(rest)`` returns a
  builder or spec for the open-ended name ``<prefix>-<rest>`` (e.g. ``tu-resnet18``).

First-party families use the same door as third-party packages. A plugin that fails to load
is skipped with an :class:`EncoderPluginWarning` naming its distribution; a name claimed by
two providers raises :class:`EncoderNameConflictError` when that name is looked up.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import inspect
import logging
import re
import threading
import warnings
from collections.abc import Callable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import torch
import torch.nn as nn

from ..layers.factories import check_spatial_dims
from .adapt import adapt_input_channels
from .protocol import StridesArg, check_depth, validate_encoder
from .spec import Builder, EncoderSpec, as_spec
from .weights import load_encoder_weights

__all__ = [
    "ENCODER_GROUP",
    "RESOLVER_GROUP",
    "EncoderNameConflictError",
    "EncoderPluginError",
    "EncoderPluginWarning",
    "EncoderRegistry",
    "UnknownEncoderError",
    "get_encoder",
    "get_encoder_spec",
    "list_encoder_resolvers",
    "list_encoders",
    "register_encoder",
    "register_encoder_resolver",
    "unregister_encoder",
    "unregister_encoder_resolver",
]

ENCODER_GROUP = "smp3d.encoders"
RESOLVER_GROUP = "smp3d.encoder_resolvers"

logger = logging.getLogger(__name__)

# Encoders of this distribution are covered by its test suite (generated from the registry); the meta
# probe of the build (check_features) is for plugins and in-process registrations only.
_FIRST_PARTY = "distribution 'smp3d' ("

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")
_PREFIX = re.compile(r"^[a-z0-9_.]+$")

Resolver = Callable[[str], EncoderSpec | Builder]


class EncoderPluginWarning(UserWarning):
    """A plugin's entry point could not be loaded; its encoders are unavailable."""


class UnknownEncoderError(KeyError, ValueError):
    """No provider knows this encoder name (a KeyError and a ValueError, for either habit)."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


class EncoderNameConflictError(RuntimeError):
    """Two providers registered the same encoder name."""


class EncoderPluginError(RuntimeError):
    """A plugin (resolver or encoder) broke its contract; the message names the encoder and its provider."""


@dataclasses.dataclass(frozen=True)
class _Provider:
    label: str
    spec: EncoderSpec


def _dist_name(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else "<unknown distribution>"


def _label(ep: EntryPoint) -> str:
    return f"distribution {_dist_name(ep)!r} (entry point {ep.group}: {ep.name} = {ep.value!r})"


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"Invalid encoder name {name!r}: use lowercase letters, digits, '_', '.' and '-', "
            f"starting with a letter or digit."
        )
    return name


class EncoderRegistry:
    """Names -> :class:`EncoderSpec`. One process-wide instance backs the module functions."""

    def __init__(self, encoder_group: str = ENCODER_GROUP, resolver_group: str = RESOLVER_GROUP):
        self.encoder_group = encoder_group
        self.resolver_group = resolver_group
        self._lock = threading.RLock()
        self._plugins: dict[str, list[_Provider]] | None = None
        self._local: dict[str, EncoderSpec] = {}
        self._local_resolvers: dict[str, Resolver] = {}
        self._resolvers: dict[str, tuple[str, Resolver]] = {}
        self._resolved: dict[str, EncoderSpec] = {}

    # -- loading ---------------------------------------------------------------------------
    def _load_plugins(self) -> dict[str, list[_Provider]]:
        with self._lock:
            if self._plugins is not None:
                return self._plugins
            plugins: dict[str, list[_Provider]] = {}
            seen: set[tuple[str, str]] = set()
            for ep in entry_points(group=self.encoder_group):
                if (ep.name, ep.value) in seen:  # the same distribution found twice on sys.path
                    continue
                seen.add((ep.name, ep.value))
                try:
                    specs = self._specs_from(ep)
                except Exception as exc:  # a broken plugin must not take the others down
                    warnings.warn(
                        f"smp3d: the encoder plugin {ep.name!r} from distribution {_dist_name(ep)!r} "
                        f"({ep.value}) failed to load; its encoders are unavailable. "
                        f"{type(exc).__name__}: {exc}",
                        EncoderPluginWarning,
                        stacklevel=4,
                    )
                    continue
                for name, spec in specs.items():
                    providers = plugins.setdefault(name, [])
                    if not any(p.spec is spec for p in providers):
                        providers.append(_Provider(_label(ep), spec))
            self._plugins = plugins
            return plugins

    @staticmethod
    def _specs_from(ep: EntryPoint) -> dict[str, EncoderSpec]:
        obj = ep.load()
        if not isinstance(obj, Mapping) and callable(obj):
            obj = obj()
        if not isinstance(obj, Mapping):
            raise TypeError(f"expected a mapping name -> builder | EncoderSpec, got {type(obj).__name__}")
        return {_check_name(name): as_spec(value, family=ep.name) for name, value in obj.items()}

    def _resolver(self, prefix: str) -> tuple[str, Resolver] | None:
        with self._lock:
            if prefix in self._local_resolvers:
                return "registered in-process", self._local_resolvers[prefix]
            if prefix in self._resolvers:
                return self._resolvers[prefix]
            found = {ep.value: ep for ep in entry_points(group=self.resolver_group, name=prefix)}
            if not found:
                return None
            if len(found) > 1:
                labels = " and ".join(_label(ep) for ep in found.values())
                raise EncoderNameConflictError(
                    f"The encoder prefix {prefix!r} is claimed by {labels}; uninstall one of them."
                )
            (ep,) = found.values()
            try:
                resolve = ep.load()
            except Exception as exc:
                raise RuntimeError(
                    f"The encoder resolver for the prefix {prefix!r} from distribution {_dist_name(ep)!r} "
                    f"({ep.value}) failed to load: {type(exc).__name__}: {exc}"
                ) from exc
            if not callable(resolve):
                raise TypeError(f"The encoder resolver {_label(ep)} is not callable: {resolve!r}.")
            self._resolvers[prefix] = (_label(ep), resolve)
            return self._resolvers[prefix]

    # -- lookups ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        with self._lock:
            return sorted(set(self._load_plugins()) | set(self._local))

    def resolver_prefixes(self) -> dict[str, str]:
        """Prefix -> provider label for every known resolver (without importing them)."""
        prefixes = {ep.name: _label(ep) for ep in entry_points(group=self.resolver_group)}
        prefixes.update({p: "registered in-process" for p in self._local_resolvers})
        return dict(sorted(prefixes.items()))

    def spec(self, name: str) -> EncoderSpec:
        if not isinstance(name, str):
            raise TypeError(f"Encoder name must be a str, got {type(name).__name__}: {name!r}.")
        with self._lock:
            if name in self._local:
                return self._local[name]
            providers = self._load_plugins().get(name)
            if providers:
                if len(providers) > 1:
                    labels = " and ".join(p.label for p in providers)
                    raise EncoderNameConflictError(
                        f"The encoder name {name!r} is registered by {labels}. Uninstall one of them, or "
                        f"choose explicitly with smp3d.register_encoder({name!r}, ..., replace=True)."
                    )
                return providers[0].spec
            if name in self._resolved:
                return self._resolved[name]
            prefix, sep, rest = name.partition("-")
            resolver = self._resolver(prefix) if sep and _PREFIX.match(prefix) else None
            if resolver is not None:
                label, resolve = resolver
                try:
                    spec = as_spec(resolve(rest), family=prefix)
                except (LookupError, ValueError) as exc:  # the resolver does not know `rest`
                    raise UnknownEncoderError(
                        f"Encoder {name!r}: the resolver for the prefix {prefix!r} ({label}) rejected {rest!r}: {exc}"
                    ) from exc
                except Exception as exc:  # a fault inside the plugin: say whose
                    raise EncoderPluginError(
                        f"Encoder {name!r}: the resolver for the prefix {prefix!r} ({label}) failed on {rest!r} with "
                        f"{type(exc).__name__}: {exc}. A resolver may only return a builder or spec, or raise "
                        f"LookupError/ValueError for names it does not know; report this to that distribution."
                    ) from exc
                self._resolved[name] = spec
                return spec
        raise UnknownEncoderError(self._unknown_message(name))

    def _unknown_message(self, name: str) -> str:
        names = self.names()
        lowered = {n.lower(): n for n in names}
        query = name.lower()
        # names extending the query first (``resnext50`` -> ``resnext50_32x4d``), then similar spellings
        ranked = sorted((n for n in lowered if query in n), key=lambda n: (not n.startswith(query), len(n), n))
        ranked += difflib.get_close_matches(query, list(lowered), n=5, cutoff=0.6)
        close = list(dict.fromkeys(ranked))[:5]
        matches = ", ".join(lowered[c] for c in close) or "none"
        prefixes = ", ".join(f"'{p}-<name>'" for p in self.resolver_prefixes()) or "none installed"
        return (
            f"Unknown encoder {name!r}. Close matches: {matches}. Open-ended prefixes: {prefixes}. "
            f"See smp3d.list_encoders(), or install a package that registers it."
        )

    # -- in-process registration -------------------------------------------------------------
    def register(self, name: str, builder_or_spec: EncoderSpec | Builder, replace: bool = False) -> EncoderSpec:
        spec = as_spec(builder_or_spec)
        with self._lock:
            _check_name(name)
            if not replace:
                existing = (
                    "registered in-process"
                    if name in self._local
                    else "; ".join(p.label for p in self._load_plugins().get(name, []))
                )
                if existing:
                    raise ValueError(
                        f"The encoder name {name!r} is already provided by {existing}; "
                        f"pass replace=True to override it in this process."
                    )
            self._local[name] = spec
            return spec

    def unregister(self, name: str) -> None:
        with self._lock:
            if name not in self._local:
                raise UnknownEncoderError(f"No in-process registration of encoder {name!r} to remove.")
            del self._local[name]

    def register_resolver(self, prefix: str, resolve: Resolver, replace: bool = False) -> None:
        if not isinstance(prefix, str) or not _PREFIX.match(prefix):
            raise ValueError(f"Invalid resolver prefix {prefix!r}: use lowercase letters, digits, '_' and '.'.")
        if not callable(resolve):
            raise TypeError(f"resolve must be callable, got {resolve!r}.")
        with self._lock:
            if not replace and (prefix in self._local_resolvers or prefix in self.resolver_prefixes()):
                raise ValueError(f"The encoder prefix {prefix!r} is already claimed; pass replace=True.")
            self._local_resolvers[prefix] = resolve
            self._resolved = {k: v for k, v in self._resolved.items() if not k.startswith(prefix + "-")}

    def unregister_resolver(self, prefix: str) -> None:
        with self._lock:
            if prefix not in self._local_resolvers:
                raise KeyError(f"No in-process resolver for the prefix {prefix!r} to remove.")
            del self._local_resolvers[prefix]
            self._resolved = {k: v for k, v in self._resolved.items() if not k.startswith(prefix + "-")}

    # -- building ----------------------------------------------------------------------------
    def build(
        self,
        name: str,
        in_channels: int = 3,
        depth: int = 5,
        weights: str | None = None,
        spatial_dims: int = 3,
        strides: StridesArg = None,
        **kwargs: Any,
    ) -> nn.Module:
        spec = self.spec(name)
        spatial_dims = check_spatial_dims(spatial_dims)
        check_depth(depth, spec.max_depth, name)
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}.")
        # Pretrained weights are stored for the encoder's native input channels and adapted after.
        build_channels = spec.default_in_channels if weights is not None else in_channels
        arguments = dict(in_channels=build_channels, depth=depth, spatial_dims=spatial_dims, strides=strides)
        try:
            inspect.signature(spec.build).bind(**arguments, **kwargs)
        except TypeError as exc:
            raise TypeError(
                f"Encoder {name!r} does not accept these arguments ({exc}). Extra keyword arguments of a "
                f"model are passed to the encoder's builder; check their names."
            ) from None
        except ValueError:  # builtins without a signature: let the call itself report
            pass
        encoder = spec.build(**arguments, **kwargs)
        if weights is not None:
            if spec.load_weights is not None and isinstance(weights, str) and weights in spec.weights:
                spec.load_weights(encoder, weights, name, spec)
            else:
                deeper_keys = self._deeper_keys(name, spec, encoder, arguments, kwargs)
                load_encoder_weights(encoder, weights, name=name, spec=spec, deeper_keys=deeper_keys)
            if in_channels != build_channels:
                adapt_input_channels(encoder, in_channels, pretrained=True)
        validate_encoder(encoder, depth, in_channels, spatial_dims, name)
        if not kwargs and spec.out_channels is not None:
            self._check_spec_channels(name, spec, encoder, depth)
        provider = self.provider(name)
        if _FIRST_PARTY not in provider:  # first-party families are checked by our own test suite
            check_features(encoder, name, provider)
        if depth < spec.max_depth:
            unused = _UnusedStageKeys(name, arguments, kwargs)
            encoder._smp3d_unused_stage_keys = unused
            encoder._register_load_state_dict_pre_hook(unused.hook, with_module=True)
        return encoder

    def provider(self, name: str) -> str:
        """Who provides ``name``: a distribution's entry point, a resolver, or an in-process registration."""
        with self._lock:
            if name in self._local:
                return "registered in-process"
            providers = self._load_plugins().get(name)
            if providers:
                return providers[0].label
            prefix, sep, _ = name.partition("-")
            resolver = self._resolvers.get(prefix) if sep else None
            if prefix in self._local_resolvers:
                return f"the resolver {prefix!r} registered in-process"
            return f"the resolver {prefix!r} of {resolver[0]}" if resolver else "an unknown provider"

    def _check_spec_channels(self, name: str, spec: EncoderSpec, encoder: nn.Module, depth: int) -> None:
        """The spec's ``out_channels`` (readable unbuilt, used by docs and checks) must be the built ones."""
        declared = tuple(spec.out_channels[1 : depth + 1])  # type: ignore[index]
        built = tuple(encoder.out_channels[1:])
        if declared != built:
            raise EncoderPluginError(
                f"Encoder {name!r} ({self.provider(name)}): its spec declares out_channels {declared} for depth "
                f"{depth}, but the built encoder has {built}. The spec's metadata must describe the default build."
            )

    @staticmethod
    def _deeper_keys(name: str, spec: EncoderSpec, encoder: nn.Module, arguments: dict, kwargs: dict) -> set[str]:
        """Keys of the stages a shallow build leaves out: pretrained weights are for the full depth."""
        if arguments["depth"] >= spec.max_depth:
            return set()
        return set(_UnusedStageKeys(name, arguments, kwargs)(encoder))


def check_features(encoder: nn.Module, name: str, provider: str) -> None:
    """Compare the declared ``out_channels`` and ``reductions`` with one forward pass on the meta device.

    The probe input is twice the deepest declared reduction per axis (a size every input of the
    encoder must be a multiple of anyway), batch 1, eval mode; parameters are swapped for meta
    tensors by ``torch.func.functional_call``, so nothing is computed or allocated. An encoder whose
    operations have no meta kernel (or which keeps tensors outside its parameters and buffers) is
    not probed: the error of a real forward then names its own cause.
    """
    channels, reductions = tuple(encoder.out_channels), tuple(encoder.reductions)
    size = tuple(2 * r for r in reductions[-1])
    meta = {k: torch.empty_like(v, device="meta") for k, v in [*encoder.named_parameters(), *encoder.named_buffers()]}
    x = torch.empty(1, channels[0], *size, device="meta")
    training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            features = torch.func.functional_call(encoder, meta, (x,))
    except (NotImplementedError, RuntimeError, TypeError, ValueError) as exc:
        logger.debug("Encoder %r was not probed on the meta device: %s: %s", name, type(exc).__name__, exc)
        return
    finally:
        encoder.train(training)
    where = f"Encoder {name!r} ({provider}, {type(encoder).__module__}.{type(encoder).__qualname__})"
    if not isinstance(features, (list, tuple)) or not all(isinstance(f, torch.Tensor) for f in features):
        raise EncoderPluginError(f"{where}: forward must return a list of tensors, got {type(features).__name__}.")
    if len(features) != len(channels):
        raise EncoderPluginError(
            f"{where}: forward returned {len(features)} features for an input of size {size}, but the encoder "
            f"declares {len(channels)} (depth + 1, item 0 the input)."
        )
    for i, (feature, c, r) in enumerate(zip(features, channels, reductions, strict=True)):
        expected = (1, c, *(n // f for n, f in zip(size, r, strict=True)))
        if tuple(feature.shape) != expected:
            raise EncoderPluginError(
                f"{where}: feature {i} has shape {tuple(feature.shape)} for an input of size {size}, but "
                f"out_channels[{i}] = {c} and reductions[{i}] = {r} declare {expected}."
            )


class _UnusedStageKeys:
    """The state-dict keys of the stages a build below ``max_depth`` leaves out (computed once, on
    the meta device, when first asked): segmentation_models_pytorch keeps those stages unused.

    Set on such an encoder as ``_smp3d_unused_stage_keys`` and registered as its ``load_state_dict``
    pre-hook, so smp's checkpoints load strictly. Holds only the name and build arguments, so the
    encoder still deep-copies and pickles.
    """

    def __init__(self, name: str, arguments: dict, kwargs: dict) -> None:
        self.name, self.arguments, self.kwargs = name, dict(arguments), dict(kwargs)
        self.keys: frozenset[str] | None = None

    def __call__(self, encoder: nn.Module) -> frozenset[str]:
        if self.keys is None:
            spec = _registry().spec(self.name)
            full_arguments = {**self.arguments, "depth": spec.max_depth, "strides": None}
            with torch.device("meta"):
                full = spec.build(**full_arguments, **self.kwargs)
            self.keys = frozenset(set(full.state_dict()) - set(encoder.state_dict()))
        return self.keys

    def hook(self, encoder: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
        """Drop smp's unused deeper-stage keys of ``encoder`` from ``state_dict`` (one warning)."""
        own = set(encoder.state_dict())
        if not any(k.startswith(prefix) and k[len(prefix) :] not in own for k in state_dict):
            return
        from .weights import drop_unused_stage_keys

        inner = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        kept = drop_unused_stage_keys(encoder, inner)
        for k in inner.keys() - kept.keys():
            del state_dict[prefix + k]


_REGISTRY = EncoderRegistry()


def _registry() -> EncoderRegistry:
    return _REGISTRY


def list_encoders(pattern: str | None = None) -> list[str]:
    """Sorted names of all registered encoders, optionally filtered by a wildcard pattern.

    Open-ended names served by resolvers (``tu-<timm name>``) are not listed; see
    :func:`list_encoder_resolvers`.

    >>> "resnet34" in list_encoders("resnet*")
    True
    """
    names = _registry().names()
    if pattern is None:
        return names
    return [n for n in names if fnmatch.fnmatchcase(n.lower(), pattern.lower())]


def list_encoder_resolvers() -> dict[str, str]:
    """Known open-ended prefixes (``"tu"`` -> provider), without importing the resolvers."""
    return _registry().resolver_prefixes()


def get_encoder_spec(name: str) -> EncoderSpec:
    """The :class:`EncoderSpec` registered under ``name`` (resolving prefixed names)."""
    return _registry().spec(name)


def get_encoder(
    name: str,
    in_channels: int = 3,
    depth: int = 5,
    weights: str | None = None,
    spatial_dims: int = 3,
    strides: StridesArg = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the encoder ``name`` for ``spatial_dims`` (2 or 3).

    Args:
        in_channels: channels of the input tensor.
        depth: number of stages (features returned: ``depth + 1``).
        weights: ``None``, a pretrained tag, or a local ``.safetensors`` file or folder.
        strides: ``depth`` per-stage strides, each an int or a per-axis tuple.
        kwargs: passed to the encoder's builder.
    """
    return _registry().build(name, in_channels, depth, weights, spatial_dims, strides, **kwargs)


def register_encoder(name: str, builder_or_spec: EncoderSpec | Builder, *, replace: bool = False) -> EncoderSpec:
    """Register an encoder in this process (tests, notebooks); packages should use entry points."""
    return _registry().register(name, builder_or_spec, replace=replace)


def unregister_encoder(name: str) -> None:
    """Remove an in-process registration made by :func:`register_encoder`."""
    _registry().unregister(name)


def register_encoder_resolver(prefix: str, resolve: Resolver, *, replace: bool = False) -> None:
    """Register an in-process resolver for names ``<prefix>-<rest>``."""
    _registry().register_resolver(prefix, resolve, replace=replace)


def unregister_encoder_resolver(prefix: str) -> None:
    _registry().unregister_resolver(prefix)
