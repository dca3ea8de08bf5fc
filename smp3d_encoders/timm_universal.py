"""``tu-<timm name>``: timm's CNNs and hierarchical transformers as 2D or 3D encoders, built from the installed timm.

The resolver registered for the prefix ``tu`` (entry-point group ``smp3d.encoder_resolvers``)
turns ``tu-resnet50d`` or ``tu-convnext_atto.d2_in1k`` into a spec whose builder

1. creates ``timm.create_model(name, features_only=True, out_indices=...)`` choosing, for each
   of the ``depth`` levels, the last timm feature at reduction ``2 ** level``;
2. finds, by a forward pass on the ``meta`` device, the convolutions and pools that downsample
   each level, and gives them the requested per-axis strides (1 or 2 per axis per level);
3. in 3D, converts the network in place with :mod:`smp3d_encoders.timm_nd` (module names are
   kept, so timm's 2D state dicts inflate key for key) and checks the feature sizes on ``meta``.

Pyramids that start at reduction 4 (ConvNeXt, most transformers) get feature 1 as a 0-channel
placeholder at reduction 2, as smp's ``tu-`` encoders and our MiT do, so every decoder sees the
usual ``depth + 1`` features; a decoder skips 0-channel features. Pyramids starting deeper (LeViT,
EfficientViT-M: reduction 16) get one placeholder per missing level. Channels-last outputs (NHWC,
e.g. Swin) are permuted to channels-first.

Pretrained: ``encoder_weights`` takes timm's pretrained tags of the model (``"a1_in1k"``; the tag
in the name, or timm's default, is also ``"imagenet"``). The 2D safetensors are fetched from the
Hub repository timm names, the classifier and pruned stages are dropped, and the rest is inflated
(:func:`smp3d.encoders.inflate_state_dict`) and loaded strictly.

Migration names: segmentation_models_pytorch_3d's ``timm-*`` encoders and ``mobilenet_v2``,
``xception``, ``inceptionv4``, ``inceptionresnetv2`` are registered (entry-point group
``smp3d.encoders``, family ``timm``) as aliases of the matching timm models, see
:data:`MIGRATION_ALIASES`.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.pooling import _AvgPoolNd, _MaxPoolNd

from smp3d.encoders import (
    Encoder,
    EncoderSpec,
    WeightSource,
    inflate_state_dict,
    load_state_dict_strict,
    resolve_strides,
)
from smp3d.encoders.hub import hub_file
from smp3d.encoders.weights import read_safetensors

from .timm_nd import ConversionError, convert_attention, convert_to_nd, nd_mode

__all__ = [
    "ENCODERS",
    "MIGRATION_ALIASES",
    "ConversionError",
    "TimmUniversalEncoder",
    "load_timm_weights",
    "resolve",
]

# segmentation_models_pytorch_3d name -> (timm model, timm's pretrained tag used for "imagenet").
# smp 0.6 maps the same names onto timm (timm-mobilenetv3_* onto the tf_ ports). An empty tag: timm
# publishes no Hub weights for that model (the architecture is still available).
MIGRATION_ALIASES: Mapping[str, tuple[str, str]] = {
    **{f"timm-efficientnet-b{i}": (f"efficientnet_b{i}", t) for i, t in enumerate(
        ["ra_in1k", "ft_in1k", "ra_in1k", "ra2_in1k", "ra2_in1k", "sw_in12k", "", "", ""])},
    "timm-efficientnet-l2": ("efficientnet_l2", ""),
    **{f"timm-tf_efficientnet_lite{i}": (f"tf_efficientnet_lite{i}", "in1k") for i in range(5)},
    **{f"timm-resnest{n}": (f"resnest{n}", "gluon_in1k") for n in ("14d", "26d")},
    **{f"timm-resnest{n}": (f"resnest{n}", "in1k") for n in ("50d", "101e", "200e", "269e")},
    "timm-resnest50d_4s2x40d": ("resnest50d_4s2x40d", "in1k"),
    "timm-resnest50d_1s4x24d": ("resnest50d_1s4x24d", "in1k"),
    **{f"timm-res2net{n}": (f"res2net{n}", "in1k") for n in (
        "50_26w_4s", "101_26w_4s", "50_26w_6s", "50_26w_8s", "50_48w_2s", "50_14w_8s")},
    "timm-res2next50": ("res2next50", "in1k"),
    **{f"timm-regnet{k}_{n}": (f"regnet{k}_{n}", "pycls_in1k") for k in "xy" for n in (
        "002", "004", "006", "008", "016", "032", "040", "064", "080", "120", "160", "320")},
    "timm-skresnet18": ("skresnet18", "ra_in1k"),
    "timm-skresnet34": ("skresnet34", "ra_in1k"),
    "timm-skresnext50_32x4d": ("skresnext50_32x4d", "ra_in1k"),
    **{f"timm-mobilenetv3_{n}": (f"tf_mobilenetv3_{n}", "in1k") for n in (
        "large_075", "large_100", "large_minimal_100", "small_075", "small_100", "small_minimal_100")},
    "timm-gernet_s": ("gernet_s", "idstcv_in1k"),
    "timm-gernet_m": ("gernet_m", "idstcv_in1k"),
    "timm-gernet_l": ("gernet_l", "idstcv_in1k"),
    "mobilenet_v2": ("mobilenetv2_100", "ra_in1k"),
    "xception": ("legacy_xception", ""),  # timm's weights for it are not on the Hub as safetensors
    "inceptionv4": ("inception_v4", "tf_in1k"),
    "inceptionresnetv2": ("inception_resnet_v2", "tf_in1k"),
}  # fmt: skip

_CHECK_SIZE = 256  # spatial size of the meta-device probes (free: meta tensors hold no data)


# -- feature selection and downsampling layers -------------------------------------------------


def _timm() -> Any:
    import timm

    return timm


def _level(reduction: int) -> int | None:
    level = round(math.log2(reduction)) if reduction >= 1 else -1
    return level if 2**level == reduction else None


@functools.lru_cache(maxsize=256)
def _feature_info(timm_name: str) -> tuple[tuple[int, int], ...]:
    """``(channels, reduction)`` of every feature timm can return for ``timm_name``."""
    try:
        model = _create(timm_name, meta=True)
    except Exception as exc:  # noqa: BLE001 - timm raises many types for unbuildable models
        raise ConversionError(f"timm could not build {timm_name!r}: {type(exc).__name__}: {exc}") from exc
    info = getattr(model, "feature_info", None)
    if not info:
        raise ConversionError(f"timm model {timm_name!r} has no feature_info, so it cannot serve as an encoder.")
    # an entry without a module (TResNet's space-to-depth stem) is one timm cannot return: reduction 0 = unusable
    return tuple((int(f["num_chs"]), int(f["reduction"]) if f.get("module", "x") else 0) for f in info)


def _plan(timm_name: str, depth: int) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """timm ``out_indices``, our channels (item 0 excluded) and the number of leading placeholder levels.

    Level ``l`` is the last timm feature at reduction ``2**l``. Levels below the first one timm has
    (reduction 2 for ConvNeXt, 2-8 for LeViT-like pyramids starting at 16) are 0-channel placeholders;
    from there on every level up to ``depth`` must exist.
    """
    info = _feature_info(timm_name)
    last: dict[int, int] = {}
    for index, (_, reduction) in enumerate(info):
        level = _level(reduction)
        if level is not None and level >= 1:
            last[level] = index
    reductions = [r for _, r in info]
    first = min(last, default=depth + 1)
    missing = [lvl for lvl in range(first, depth + 1) if lvl not in last]
    if missing or first > depth:
        raise ConversionError(
            f"timm model {timm_name!r} has features at reductions {reductions}; an encoder of depth {depth} needs "
            f"features at consecutive powers of 2 up to {2**depth}. Models whose features all share one reduction "
            f"(plain ViTs, MLP-Mixers, ConvMixer) are not hierarchical and cannot serve as encoders."
        )
    levels = range(first, depth + 1)
    indices = tuple(last[lvl] for lvl in levels)
    channels = (0,) * (first - 1) + tuple(info[i][0] for i in indices)
    return indices, channels, first - 1


def _spatial(t: Any) -> tuple[int, ...] | None:
    return tuple(t.shape[2:]) if isinstance(t, torch.Tensor) and t.ndim >= 3 else None


def _is_layer(m: nn.Module) -> bool:
    """Convolutions, pools and timm's other strided layers (blur pools) are what strides live on."""
    return (
        isinstance(m, (_ConvNd, _MaxPoolNd, _AvgPoolNd))
        or hasattr(m, "set_stride")  # token-merging layers of the attention families (Swin's patch merging)
        or (hasattr(m, "stride") and not list(m.children()) and type(m).__module__.startswith("timm."))
    )


@torch.no_grad()
def _trace_layers(model: nn.Module, in_channels: int) -> list[tuple[str, int, int]]:
    """``(name, input reduction, output reduction)`` of every conv/pool layer, in execution order,
    from a 2D forward pass on the meta device."""
    records: list[tuple[str, int, int]] = []
    handles = []

    def hook(name: str):
        def record(_: nn.Module, args: tuple, out: Any) -> None:
            a, b = _spatial(args[0]) if args else None, _spatial(out)
            if a and b:
                records.append((name, _CHECK_SIZE // a[0], _CHECK_SIZE // b[0]))

        return record

    for name, m in model.named_modules():
        if _is_layer(m):
            handles.append(m.register_forward_hook(hook(name)))
    try:
        model(torch.empty(1, in_channels, _CHECK_SIZE, _CHECK_SIZE, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return records


def _levels(inp: int, out: int) -> tuple[int, ...]:
    a, b = _level(inp), _level(out)
    if a is None or b is None:
        return ()
    return tuple(range(a + 1, b + 1))


def _create(timm_name: str, *, meta: bool, **kwargs: Any) -> nn.Module:
    """``timm.create_model(timm_name, pretrained=False, **kwargs)``, on the meta device when ``meta``
    (or when the caller's default device is meta).

    Some timm releases derive a model's widths with torch operations that have no meta kernel (RegNet's
    ``torch.unique`` in timm 1.0.x releases between the NumPy and the explicit-CPU versions of
    ``generate_regnet``): such a model is built on the CPU and moved to meta.
    """
    create = _timm().create_model
    try:
        if meta:
            with torch.device("meta"):
                return create(timm_name, pretrained=False, **kwargs)
        return create(timm_name, pretrained=False, **kwargs)
    except NotImplementedError:
        if not meta and torch.empty(0).device.type != "meta":
            raise
        with torch.device("cpu"):
            model = create(timm_name, pretrained=False, **kwargs)
        return model.to("meta")


def _normalisation(cfg: Any) -> dict[str, Any]:
    """The input mean/std of a timm pretrained config (for get_preprocessing_params), when it has them."""
    mean, std = getattr(cfg, "mean", None), getattr(cfg, "std", None)
    if mean is None or std is None:
        return {}
    return {"mean": tuple(float(v) for v in mean), "std": tuple(float(v) for v in std)}


def _meta_model(timm_name: str, kwargs: Mapping[str, Any]) -> nn.Module:
    return _create(timm_name, meta=True, features_only=True, **kwargs)


def _layer_strides(
    timm_name: str, layers: list[tuple[str, int, int]], stage_strides: tuple, spatial_dims: int
) -> dict[str, tuple[int, ...]]:
    """New per-axis strides of the layers that downsample, where the requested strides differ from 2.

    A layer taking the reduction from ``2**a`` to ``2**b`` covers levels ``a+1..b``; its stride along
    an axis becomes the product of the requested strides of those levels along it.
    """
    if all(all(s == 2 for s in stage) for stage in stage_strides):
        return {}
    depth = len(stage_strides)
    covered: set[int] = set()
    result: dict[str, tuple[int, ...]] = {}
    for name, inp, out in layers:
        if out <= inp:
            continue
        levels = _levels(inp, out)
        if not levels:
            raise ConversionError(
                f"tu-{timm_name}: layer {name!r} reduces from {inp} to {out}, not by a power of 2; per-axis "
                f"strides are not supported for this model."
            )
        covered.update(levels)
        wanted = tuple(
            math.prod(stage_strides[lvl - 1][a] if lvl <= depth else 2 for lvl in levels) for a in range(spatial_dims)
        )
        if any(w != 2 ** len(levels) for w in wanted):
            result[name] = wanted
    missing = [lvl for lvl in range(1, depth + 1) if lvl not in covered]
    if missing:
        raise ConversionError(
            f"tu-{timm_name}: no convolution or pooling layer downsamples level(s) {missing} (the model does it "
            f"in functional code), so per-axis strides cannot be applied; use the default strides."
        )
    return result


# -- the encoder -------------------------------------------------------------------------------


class TimmUniversalEncoder(Encoder):
    """A timm model's feature pyramid as a 2D or N-D encoder (see the module docs).

    ``self.model`` is timm's feature extractor (``features_only=True``), converted in place for 3D;
    2D keys equal smp 0.6's ``tu-`` encoders (``model.<timm key>``). Extra keyword arguments go to
    ``timm.create_model`` (e.g. ``drop_path_rate``).
    """

    _torch_script_refusal = (
        "a timm model run in N-D through a torch function mode (and timm's feature wrappers), which TorchScript "
        "cannot compile"
    )

    def __init__(
        self,
        timm_name: str,
        in_channels: int = 3,
        depth: int = 5,
        spatial_dims: int = 3,
        strides: Any = None,
        **timm_kwargs: Any,
    ):
        forbidden = {"features_only", "out_indices", "in_chans", "pretrained", "output_stride"} & set(timm_kwargs)
        if forbidden:
            raise TypeError(
                f"tu-{timm_name}: {sorted(forbidden)} are set by the encoder (use in_channels, encoder_depth, "
                f"encoder_weights and the architectures' encoder_output_stride instead)."
            )
        stage_strides = resolve_strides(strides, depth, spatial_dims, max_stride=2, name=f"tu-{timm_name}")
        indices, channels, placeholder = _plan(timm_name, depth)
        kwargs = dict(out_indices=indices, in_chans=in_channels, **timm_kwargs)
        # The layers that downsample each level are found on a meta-device copy, in 2D; the copy is
        # then converted first, so that a model the conversion cannot handle fails before any real work.
        probe = _meta_model(timm_name, kwargs).eval()  # eval: batch statistics of one item would fail
        convert_attention(probe)  # window/grid attention pads: the 2D probe's size imposes nothing
        # tracing costs a meta forward (seconds for big transformers): only for strides other than 2, or dilation
        default = all(all(s == 2 for s in stage) for stage in stage_strides)
        layers = None if default else _trace_layers(probe, in_channels)
        layer_strides = {} if default else _layer_strides(timm_name, layers, stage_strides, spatial_dims)
        super().__init__((in_channels, *channels), stage_strides, spatial_dims)
        self.timm_name = timm_name
        self.placeholder = placeholder
        self.channels_last_output = getattr(probe, "output_fmt", "NCHW") == "NHWC"
        self._layers = tuple(layers) if layers is not None else None
        self._timm_kwargs = kwargs
        convert_to_nd(probe, spatial_dims, layer_strides)
        if spatial_dims != 2 or layer_strides:
            self._check_sizes(probe, len(indices))
        model = _create(timm_name, meta=False, features_only=True, **kwargs)
        convert_to_nd(model, spatial_dims, layer_strides)
        self.model = model

    @torch.no_grad()
    def _check_sizes(self, probe: nn.Module, timm_feats: int) -> None:
        size = (_CHECK_SIZE,) * self.spatial_dims  # divisible by every reduction (at most 2**5 per axis)
        x = torch.empty(1, self.out_channels[0], *size, device="meta")
        with (
            nd_mode(self.spatial_dims) if self.spatial_dims != 2 else contextlib.nullcontext(),
            _blame(probe, f"tu-{self.timm_name}", self.spatial_dims),
        ):
            feats = probe(x)
        got = [tuple(f.shape[1:-1] if self.channels_last_output else f.shape[2:]) for f in feats]
        expected = [
            tuple(n // r for n, r in zip(size, red, strict=True)) for red in self.reductions[1 + self.placeholder :]
        ]
        # unpadded ("valid") layers (Inception, Xception) lose a few voxels per level: compare scales
        # within a factor 2**0.6, which still catches an axis reduced 2x too much or too little
        close = len(got) == timm_feats and all(
            len(g) == len(e) and all(n > 0 and abs(math.log2(m / n)) < 0.6 for n, m in zip(g, e, strict=True))
            for g, e in zip(got, expected, strict=True)
        )
        if not close:
            raise ConversionError(
                f"tu-{self.timm_name}: the {self.spatial_dims}D feature sizes for input {size} are {got}, expected "
                f"about {expected} from the reductions {self.reductions[1:]}: the model reduces some axis in code "
                f"the conversion does not reach."
            )

    # -- protocol
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.spatial_dims == 2:
            feats = self.model(x)
        else:
            with nd_mode(self.spatial_dims):
                feats = self.model(x)
        if self.channels_last_output:
            last = self.spatial_dims + 1
            feats = [f.permute(0, last, *range(1, last)).contiguous() for f in feats]
        empty = [
            x.new_empty(x.shape[0], 0, *(n // r for n, r in zip(x.shape[2:], red, strict=True)))
            for red in self.reductions[1 : 1 + self.placeholder]
        ]
        return [x, *empty, *feats]

    def stage_modules(self, stage: int) -> list[nn.Module]:
        """The conv/pool layers of level ``stage`` (by the reductions traced at build): its downsampling
        layers and those working at its reduction. Models downsampling with other layers cannot be dilated."""
        modules = dict(self.model.named_modules())
        found = []
        if self._layers is None:
            probe = _meta_model(self.timm_name, self._timm_kwargs).eval()
            convert_attention(probe)
            self._layers = tuple(_trace_layers(probe, self.out_channels[0]))
        for name, inp, out in self._layers:
            levels = _levels(inp, out) if out > inp else ((_level(inp),) if inp == out else ())
            if levels and levels[-1] == stage:
                m = modules[name]
                if not isinstance(m, (_ConvNd, _MaxPoolNd, _AvgPoolNd)):
                    raise NotImplementedError(
                        f"tu-{self.timm_name}: layer {name!r} ({type(m).__name__}) cannot be dilated."
                    )
                if m not in found:
                    found.append(m)
        return found

    def source_state_dict(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map a timm checkpoint of the whole 2D model onto this encoder's keys.

        Keys of the classifier and of stages the encoder does not use are dropped; every key of
        the encoder must be found (under timm's own name, or the one before ``features_only``
        flattened a top-level ``nn.Sequential``: ``stages_0`` <- ``stages.0``), else a ValueError
        lists the missing ones. Shapes are left to the strict loading that follows.
        """
        out: dict[str, torch.Tensor] = {}
        missing = []
        for key in self.state_dict():
            inner = key[len("model.") :] if key.startswith("model.") else key
            for candidate in _source_candidates(inner):
                if candidate in state:
                    out[key] = state[candidate]
                    break
            else:
                missing.append(key)
        if missing:
            shown = ", ".join(missing[:8]) + (f", ... ({len(missing) - 8} more)" if len(missing) > 8 else "")
            raise ValueError(
                f"The checkpoint does not hold the weights of tu-{self.timm_name}; nothing was loaded. "
                f"Missing keys ({len(missing)}): {shown}"
            )
        return out


@contextlib.contextmanager
def _blame(model: nn.Module, owner: str, spatial_dims: int) -> Iterator[None]:
    """Turn an error raised inside ``model``'s forward into a ConversionError naming the innermost module."""
    names = {m: n for n, m in model.named_modules()}
    stack: list[nn.Module] = []  # the modules entered and not yet left

    def leave(*_: Any) -> None:
        stack.pop()

    handles = [m.register_forward_pre_hook(lambda m, _: stack.append(m)) for m in names]
    handles += [m.register_forward_hook(leave) for m in names]
    try:
        yield
    except ConversionError:
        raise
    except Exception as exc:
        where = f"module {names[stack[-1]]!r} ({type(stack[-1]).__module__}.{type(stack[-1]).__qualname__})"
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConversionError(
            f"{owner}: the {spatial_dims}D forward failed in {where if stack else 'the top level'}, whose code "
            f"could not be converted: {type(exc).__name__}: {message}"
        ) from exc
    finally:
        for h in handles:
            h.remove()


def _source_candidates(key: str) -> Iterator[str]:
    yield key
    head, _, rest = key.partition(".")
    for match in re.finditer("_", head):
        yield f"{head[: match.start()]}.{head[match.end() :]}" + (f".{rest}" if rest else "")
    if key.startswith("model."):
        yield key[len("model.") :]


# -- weights -----------------------------------------------------------------------------------


def load_timm_weights(encoder: TimmUniversalEncoder, tag: str, name: str, spec: EncoderSpec) -> None:
    """Fetch timm's 2D weights of ``tag``, map and inflate them, and load them strictly."""
    source = spec.weights[tag]
    file = hub_file(
        source.repo_id,
        source.filename,
        source.revision,
        what=f"timm's pretrained weights {name}.{tag}",
        howto="Download them once with network access (they are cached), or pass a local folder.",
    )
    state = encoder.source_state_dict(read_safetensors(file))
    if encoder.spatial_dims != 2:
        state = inflate_state_dict(state, encoder)
    load_state_dict_strict(encoder, state, what=f"{name}.{tag} from the Hub repository {source.repo_id!r}")


# -- resolver and registrations ----------------------------------------------------------------


def _weights(timm_name: str, default_tag: str | None) -> dict[str, WeightSource]:
    timm = _timm()
    arch = timm_name.partition(".")[0]
    sources: dict[str, WeightSource] = {}
    for full in timm.list_pretrained(f"{arch}.*"):
        cfg = timm.models.get_pretrained_cfg(full)
        hub = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        if hub:
            repo, _, revision = hub.partition("@")
            sources[full.partition(".")[2]] = WeightSource(
                repo, revision or None, license=getattr(cfg, "license", None), **_normalisation(cfg)
            )
    default = default_tag or next(iter(sources), None)
    if default in sources:
        sources["imagenet"] = sources[default]
    return sources


def _build(timm_name: str, in_channels: int = 3, depth: int = 5, spatial_dims: int = 3, strides: Any = None, **kwargs):
    return TimmUniversalEncoder(timm_name, in_channels, depth, spatial_dims, strides, **kwargs)


def _spec(timm_name: str, weights: Mapping[str, WeightSource], description: str, family: str = "tu") -> EncoderSpec:
    licenses = {w.license for w in weights.values() if w.license}
    return EncoderSpec(
        build=functools.partial(_build, timm_name),
        weights=weights,
        family=family,
        license=licenses.pop() if len(licenses) == 1 else None,
        description=description,
        load_weights=load_timm_weights,
        extra={"timm_name": timm_name},
    )


def resolve(rest: str) -> EncoderSpec:
    """The spec of ``tu-<rest>``: ``rest`` is a timm model name, optionally with a pretrained tag."""
    timm = _timm()
    arch, _, tag = rest.partition(".")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        raise LookupError(
            f"timm {timm.__version__} has no model {arch!r}. Close matches: {', '.join(close) or 'none'} "
            f"(see timm.list_models())."
        )
    weights = _weights(arch, tag or None)
    if tag and tag not in weights:
        raise LookupError(f"timm has no pretrained tag {tag!r} for {arch!r}; tags: {', '.join(sorted(weights))}.")
    blocks = _single_scale_blocks(arch)
    if blocks:  # plain ViTs and other one-reduction models: smp3d_encoders.timm_vit
        from .timm_vit import vit_spec

        return vit_spec(arch, weights, f"timm's {rest} (single-scale), converted by smp3d", blocks)
    return _spec(arch, weights, f"timm's {rest}, converted by smp3d")


def _single_scale_blocks(timm_name: str) -> int:
    """The number of features of a model whose features all share one reduction (a plain ViT's blocks), else 0."""
    try:
        info = _feature_info(timm_name)
    except ConversionError:  # unbuildable: the ordinary build reports it
        return 0
    return len(info) if len(info) > 1 and len({r for _, r in info}) == 1 else 0


def _alias_spec(name: str, timm_name: str, tag: str) -> EncoderSpec:
    cfg = _timm().models.get_pretrained_cfg(f"{timm_name}.{tag}") if tag else None
    weights = {"imagenet": WeightSource(f"timm/{timm_name}.{tag}", **_normalisation(cfg))} if tag else {}
    return _spec(timm_name, weights, f"timm's {timm_name} (segmentation_models_pytorch_3d's {name})", "timm")


ENCODERS: dict[str, EncoderSpec] = {
    name: _alias_spec(name, timm_name, tag) for name, (timm_name, tag) in MIGRATION_ALIASES.items()
}
