"""nnU-Net networks and results folders into smp3d: :func:`from_nnunet` and the state-dict key map.

nnU-Net (``nnunetv2``) builds its networks with the ``dynamic-network-architectures`` package:
``ResidualEncoderUNet`` (the ResEnc presets) and ``PlainConvUNet`` (the default plans). Both become an
:class:`smp3d.NNUNet` with the encoder ``resenc_*`` or ``plain_nnunet`` and the same topology, and
their state dict loads strictly after renaming keys (:func:`nnunet_key_map`, documented in
``docs/nnunet.md``). This module reads nnU-Net's objects and files; it imports neither nnU-Net nor
dynamic-network-architectures.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .decoders.nnunet import NNUNet

__all__ = [
    "from_nnunet",
    "load_nnunet_checkpoint",
    "load_nnunet_encoder_weights",
    "nnunet_key_map",
    "nnunet_state_dict",
    "read_nnunet_plan",
]

NETWORK_CLASSES = ("ResidualEncoderUNet", "PlainConvUNet")
_PLAN_PRESETS = {"M": "resenc_m", "L": "resenc_l", "XL": "resenc_xl"}

# (nnU-Net key pattern, smp3d key template); a template None drops the key. Deep-supervision heads
# are numbered from the other end and are handled in nnunet_key_map.
_ALIASES = (
    re.compile(r"^decoder\.encoder\."),  # the decoder keeps a reference to the encoder: the same tensors
    re.compile(r"\.all_modules\.\d+\."),  # ConvDropoutNormReLU lists conv and norm twice: the same tensors
)
_RESENC_RULES = (
    (re.compile(r"^encoder\.stem\.convs\.0\.(conv|norm)\.(\w+)$"), r"encoder.stem.\1.\2"),
    (
        re.compile(r"^encoder\.stages\.(\d+)\.blocks\.(\d+)\.(conv1|conv2)\.(conv|norm)\.(\w+)$"),
        r"encoder.stages.\1.\2.\3.\4.\5",
    ),
    (
        re.compile(r"^encoder\.stages\.(\d+)\.blocks\.(\d+)\.skip\.\d+\.(conv|norm)\.(\w+)$"),
        r"encoder.stages.\1.\2.shortcut.\3.\4",
    ),
)
_PLAIN_RULES = (
    (re.compile(r"^encoder\.stages\.(\d+)\.0\.convs\.(\d+)\.conv\.(\w+)$"), "encoder.levels.{0}.block.conv{1}.c.{2}"),
    (re.compile(r"^encoder\.stages\.(\d+)\.0\.convs\.(\d+)\.norm\.(\w+)$"), "encoder.levels.{0}.block.conv{1}.i.{2}"),
)
_DECODER_RULES = (
    (re.compile(r"^decoder\.transpconvs\.(\d+)\.(\w+)$"), r"decoder.blocks.\1.upsample.\2"),
    (re.compile(r"^decoder\.stages\.(\d+)\.convs\.(\d+)\.(conv|norm)\.(\w+)$"), r"decoder.blocks.\1.convs.\2.\3.\4"),
)
_SEG_LAYER = re.compile(r"^decoder\.seg_layers\.(\d+)\.(\w+)$")


def nnunet_key_map(
    keys: list[str] | Mapping[str, Any], kind: str, deep_supervision: bool = True
) -> dict[str, str | None]:
    """nnU-Net key -> smp3d key (``None``: dropped) for every key of a ``ResidualEncoderUNet``
    (``kind="resenc"``) or ``PlainConvUNet`` (``kind="plain"``) state dict.

    Aliases (``decoder.encoder.*``, ``*.all_modules.*``) are dropped: nnU-Net stores those tensors twice.
    ``decoder.seg_layers`` are numbered deepest first: the last is the full-resolution head
    (``segmentation_head.0``), the one before it ``deep_supervision_heads.0``, and so on; without
    ``deep_supervision`` the coarser ones are dropped (nnU-Net always builds them). A key matching no
    rule raises a ValueError naming it.
    """
    if kind not in ("resenc", "plain"):
        raise ValueError(f"kind must be 'resenc' (ResidualEncoderUNet) or 'plain' (PlainConvUNet), got {kind!r}.")
    keys = list(keys)
    seg_layers = {int(m.group(1)) for m in map(_SEG_LAYER.match, keys) if m}
    last = max(seg_layers, default=-1)
    mapping: dict[str, str | None] = {}
    unknown = []
    for key in keys:
        if any(alias.search(key) for alias in _ALIASES):
            mapping[key] = None
            continue
        if match := _SEG_LAYER.match(key):
            level = last - int(match.group(1))
            if level == 0:
                mapping[key] = f"segmentation_head.0.{match.group(2)}"
            else:
                mapping[key] = f"deep_supervision_heads.{level - 1}.{match.group(2)}" if deep_supervision else None
            continue
        for pattern, template in (*(_RESENC_RULES if kind == "resenc" else ()), *_DECODER_RULES):
            if pattern.match(key):
                mapping[key] = pattern.sub(template, key)
                break
        else:
            match = next((m for m in (p.match(key) for p, _ in _PLAIN_RULES) if m), None) if kind == "plain" else None
            if match is None:
                unknown.append(key)
                continue
            template = next(t for p, t in _PLAIN_RULES if p.match(key))
            stage, unit, name = match.groups()
            mapping[key] = template.format(stage, int(unit) + 1, name)
    if unknown:
        raise ValueError(
            f"{len(unknown)} key(s) of the nnU-Net state dict are not part of a {kind} U-Net as smp3d maps it: "
            f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}. See docs/nnunet.md for the supported layouts."
        )
    return mapping


def nnunet_state_dict(
    state: Mapping[str, torch.Tensor], kind: str, deep_supervision: bool = True
) -> dict[str, torch.Tensor]:
    """An nnU-Net state dict renamed to smp3d's keys (see :func:`nnunet_key_map`)."""
    mapping = nnunet_key_map(state, kind, deep_supervision)
    return {new: state[old] for old, new in mapping.items() if new is not None}


# -- reading a dynamic-network-architectures network ------------------------------------------------------


def _refuse(what: str, found: Any, expected: str) -> ValueError:
    return ValueError(f"from_nnunet: the network's {what} is {found!r}; smp3d's NNUNet reproduces {expected} only.")


def _network_arguments(network: nn.Module) -> dict[str, Any]:
    """NNUNet arguments (plus ``kind``) that rebuild a dynamic-network-architectures U-Net."""
    name = type(network).__name__
    if name not in NETWORK_CLASSES:
        raise TypeError(
            f"from_nnunet takes a dynamic_network_architectures ResidualEncoderUNet or PlainConvUNet, a results "
            f"folder or a plans.json; got {type(network).__module__}.{name}."
        )
    encoder, decoder = network.encoder, network.decoder
    conv_op = encoder.conv_op
    spatial_dims = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}.get(conv_op)
    if spatial_dims is None:
        raise _refuse("conv_op", conv_op, "torch.nn.Conv1d/2d/3d")
    norm_kwargs = dict(encoder.norm_op_kwargs or {})
    if encoder.norm_op is None or "InstanceNorm" not in encoder.norm_op.__name__ or not norm_kwargs.get("affine"):
        raise _refuse("norm", (encoder.norm_op, norm_kwargs), "affine InstanceNorm (nnU-Net's plans)")
    if float(norm_kwargs.get("eps", 1e-5)) != 1e-5:
        raise _refuse("norm eps", norm_kwargs["eps"], "1e-5")
    slope = dict(encoder.nonlin_kwargs or {}).get("negative_slope", 0.01)
    if encoder.nonlin is not nn.LeakyReLU or slope != 0.01:
        raise _refuse("nonlinearity", (encoder.nonlin, encoder.nonlin_kwargs), "LeakyReLU(0.01)")
    if encoder.dropout_op is not None:
        raise _refuse("dropout_op", encoder.dropout_op, "no dropout")
    if not encoder.conv_bias:
        raise _refuse("conv_bias", encoder.conv_bias, "conv_bias=True (nnU-Net's plans)")
    depth = len(encoder.output_channels)
    arguments: dict[str, Any] = {
        "encoder_depth": depth,
        "spatial_dims": spatial_dims,
        "strides": tuple(tuple(int(s) for s in stride) for stride in encoder.strides),
        "kernel_sizes": tuple(_per_axis(k, spatial_dims) for k in encoder.kernel_sizes),
        "decoder_convs_per_block": tuple(len(stage.convs) for stage in decoder.stages),
        "classes": int(decoder.seg_layers[-1].out_channels),
        "deep_supervision": bool(decoder.deep_supervision),
    }
    features = tuple(int(c) for c in encoder.output_channels)
    if name == "ResidualEncoderUNet":
        stem_conv = encoder.stem.convs[0].conv
        if stem_conv.out_channels != features[0]:
            raise _refuse("stem width", stem_conv.out_channels, "a stem as wide as the first stage")
        blocks = []
        for stage in encoder.stages:
            if not hasattr(stage, "blocks"):
                raise _refuse("downsampling", "a pooling layer", "strided convolutions (pool_type='conv')")
            if type(stage.blocks[0]).__name__ != "BasicBlockD":
                raise _refuse("block", type(stage.blocks[0]).__name__, "BasicBlockD")
            if any(b.apply_stochastic_depth or b.apply_se for b in stage.blocks):
                raise _refuse("block options", "stochastic depth or squeeze-excitation", "plain BasicBlockD")
            blocks.append(len(stage.blocks))
        arguments.update(kind="resenc", in_channels=stem_conv.in_channels, features=features, blocks=tuple(blocks))
    else:
        for stage in encoder.stages:
            if len(stage) != 1 or len(stage[0].convs) != 2:
                raise _refuse("stage layout", stage, "two conv units per stage and strided convolutions")
            unit = stage[0].convs[0]
            if list(unit.all_modules)[-1] is not unit.nonlin:
                raise _refuse("unit order", "nonlin_first=True", "conv -> norm -> nonlin")
        arguments.update(kind="plain", in_channels=encoder.stages[0][0].convs[0].conv.in_channels)
        arguments.update(_plain_widths(features, spatial_dims))
    return arguments


def _per_axis(value: Any, spatial_dims: int) -> tuple[int, ...]:
    return (int(value),) * spatial_dims if isinstance(value, (int, np.integer)) else tuple(int(v) for v in value)


def _plain_widths(features: tuple[int, ...], spatial_dims: int) -> dict[str, int]:
    base, cap = features[0], max(features)
    if tuple(min(base * 2**i, cap) for i in range(len(features))) != features:
        raise _refuse("features_per_stage", features, "widths min(base * 2**i, cap)")
    return {"base_channels": base, "max_channels": cap}


def _build(arguments: dict[str, Any], encoder_name: str | None = None) -> NNUNet:
    arguments = dict(arguments)
    kind = arguments.pop("kind")
    name = (encoder_name or "resenc_m") if kind == "resenc" else "plain_nnunet"
    return NNUNet(encoder_name=name, decoder_conv_bias=True, **arguments)


# -- reading an nnU-Net results folder ----------------------------------------------------------------------


def read_nnunet_plan(
    plans: Mapping[str, Any] | str | Path, dataset: Mapping[str, Any] | str | Path, configuration: str
) -> dict[str, Any]:
    """NNUNet arguments (plus ``kind`` and ``encoder_name``) from nnU-Net's ``plans.json`` and ``dataset.json``.

    Reads ``configurations[configuration]`` (following ``inherits_from``) in the plans schema of
    nnU-Net >= 2.4, whose ``architecture`` holds ``network_class_name`` and ``arch_kwargs``.
    """
    plans = _read_json(plans, "plans.json")
    dataset = _read_json(dataset, "dataset.json")
    configurations = plans.get("configurations")
    if not isinstance(configurations, Mapping) or configuration not in configurations:
        known = sorted(configurations) if isinstance(configurations, Mapping) else []
        raise ValueError(f"plans.json has no configuration {configuration!r}; it has {known}.")
    config: dict[str, Any] = {}
    seen = []
    name = configuration
    while name is not None:
        if name in seen or name not in configurations:
            raise ValueError(f"plans.json: configuration {name!r} is missing or inherits in a loop ({seen}).")
        seen.append(name)
        config = {**configurations[name], **config}
        name = configurations[name].get("inherits_from")
    architecture = config.get("architecture")
    if not isinstance(architecture, Mapping) or "arch_kwargs" not in architecture:
        raise ValueError(
            f"plans.json configuration {configuration!r} has no 'architecture' with 'arch_kwargs': plans written by "
            f"nnU-Net before 2.4 (UNet_class_name, pool_op_kernel_sizes, ...) are not read; re-plan with a current "
            f"nnU-Net or build smp3d.NNUNet from the plan's numbers yourself."
        )
    class_name = str(architecture.get("network_class_name", "")).rpartition(".")[2]
    if class_name not in NETWORK_CLASSES:
        raise ValueError(
            f"plans.json: network_class_name {architecture.get('network_class_name')!r} "
            f"is not one of {NETWORK_CLASSES}."
        )
    kw = architecture["arch_kwargs"]
    spatial_dims = len(config.get("patch_size", kw["kernel_sizes"][0]))
    for key, expected in (("conv_bias", True), ("dropout_op", None)):
        if kw.get(key, expected) != expected:
            raise ValueError(
                f"plans.json: arch_kwargs[{key!r}] is {kw[key]!r}; smp3d's NNUNet reproduces {expected!r} only."
            )
    if "InstanceNorm" not in str(kw.get("norm_op")) or not (kw.get("norm_op_kwargs") or {}).get("affine"):
        raise ValueError(
            f"plans.json: norm_op {kw.get('norm_op')!r} {kw.get('norm_op_kwargs')}; "
            f"smp3d reproduces affine InstanceNorm only."
        )
    if "LeakyReLU" not in str(kw.get("nonlin")) or (kw.get("nonlin_kwargs") or {}).get("negative_slope", 0.01) != 0.01:
        raise ValueError(
            f"plans.json: nonlin {kw.get('nonlin')!r} {kw.get('nonlin_kwargs')}; smp3d reproduces LeakyReLU(0.01) only."
        )
    depth = int(kw["n_stages"])
    features = tuple(int(c) for c in _expand(kw["features_per_stage"], depth))
    arguments: dict[str, Any] = {
        "encoder_depth": depth,
        "spatial_dims": spatial_dims,
        "strides": tuple(_per_axis(s, spatial_dims) for s in _expand(kw["strides"], depth)),
        "kernel_sizes": tuple(_per_axis(k, spatial_dims) for k in _expand(kw["kernel_sizes"], depth)),
        "decoder_convs_per_block": tuple(int(c) for c in _expand(kw["n_conv_per_stage_decoder"], depth - 1)),
        "in_channels": _input_channels(dataset),
        "classes": _output_classes(dataset),
    }
    if class_name == "ResidualEncoderUNet":
        plans_name = str(plans.get("plans_name", ""))
        preset = re.fullmatch(r"nnUNetResEncUNet(M|L|XL)Plans", plans_name)
        arguments.update(
            kind="resenc",
            features=features,
            blocks=tuple(int(b) for b in _expand(kw["n_blocks_per_stage"], depth)),
            encoder_name=_PLAN_PRESETS[preset.group(1)] if preset else "resenc_m",
        )
    else:
        if any(int(c) != 2 for c in _expand(kw.get("n_conv_per_stage", 2), depth)):
            raise ValueError(
                f"plans.json: n_conv_per_stage {kw['n_conv_per_stage']}; smp3d's plain_nnunet has 2 per stage."
            )
        arguments.update(kind="plain", **_plain_widths(features, spatial_dims))
    return arguments


def _expand(value: Any, count: int) -> list[Any]:
    return [value] * count if isinstance(value, (int, float)) else list(value)


def _read_json(source: Mapping[str, Any] | str | Path, what: str) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        return source
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"nnU-Net {what} not found at {path}.")
    with path.open() as f:
        return json.load(f)


def _input_channels(dataset: Mapping[str, Any]) -> int:
    channels = dataset.get("channel_names", dataset.get("modality"))
    if not isinstance(channels, Mapping) or not channels:
        raise ValueError(
            "dataset.json has no 'channel_names' (or 'modality') mapping, so the input channels are unknown."
        )
    return len(channels)


def _output_classes(dataset: Mapping[str, Any]) -> int:
    """nnU-Net's number of output channels: one per label (background included), without the ``ignore``
    label; with region-based labels (lists of values), one per region (background excluded)."""
    labels = dataset.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        raise ValueError("dataset.json has no 'labels' mapping, so the number of classes is unknown.")
    labels = {k: v for k, v in labels.items() if k != "ignore"}
    if any(isinstance(v, (list, tuple)) for v in labels.values()):
        return len([k for k, v in labels.items() if v != 0])
    return len({int(v) for v in labels.values()})


# A numpy scalar in a checkpoint's log is data (a dtype and its bytes): allowed next to tensors.
def _numpy_safe_globals() -> list[Any]:
    types: list[Any] = [np.dtype]
    try:
        types.append(np._core.multiarray.scalar)
    except AttributeError:  # numpy < 2
        types.append(np.core.multiarray.scalar)
    types += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return types


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` (numpy scalars allowed); anything else is refused with the fix."""
    if not path.is_file():
        raise FileNotFoundError(f"nnU-Net checkpoint not found: {path}.")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{path} holds objects that torch.load(weights_only=True) does not read ({str(exc).splitlines()[0]}). "
            f"smp3d never unpickles arbitrary objects. If you trust the file, save its weights alone: "
            f"torch.save({{'network_weights': torch.load(path, weights_only=False)['network_weights']}}, new_path)."
        ) from None


def load_nnunet_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """``network_weights`` of an nnU-Net checkpoint (``checkpoint_final.pth``), read with
    ``torch.load(weights_only=True)``; numpy scalars (nnU-Net's logs) are allowed, any other object refused."""
    path = Path(path)
    checkpoint = _torch_load(path)
    weights = checkpoint.get("network_weights") if isinstance(checkpoint, Mapping) else None
    if not isinstance(weights, Mapping) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        found = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(
            f"{path} is not an nnU-Net checkpoint: expected a dict with 'network_weights' (tensors), got {found}."
        )
    return dict(weights)


def from_nnunet(
    source: nn.Module | str | Path,
    fold: int | str = 0,
    configuration: str | None = None,
    checkpoint: str = "checkpoint_final.pth",
    deep_supervision: bool | None = None,
) -> NNUNet:
    """An :class:`smp3d.NNUNet` equal to an nnU-Net network, with its weights.

    Args:
        source: a ``dynamic_network_architectures`` ``ResidualEncoderUNet`` or ``PlainConvUNet``, or an
            nnU-Net results folder (``.../<trainer>__<plans>__<configuration>``) holding ``plans.json``,
            ``dataset.json`` and ``fold_<fold>/<checkpoint>``.
        fold: the fold folder to load (``0``..``4`` or ``"all"``); folders only.
        configuration: the plans' configuration (``"3d_fullres"``, ``"2d"``, ...); folders only. ``None``
            reads it from the folder name's last ``__`` part.
        checkpoint: the checkpoint file inside the fold folder.
        deep_supervision: build the coarser heads; ``None`` follows the network (its ``decoder.deep_supervision``)
            or, for a folder, False (inference).

    The weights load strictly (every tensor used, none missing; the coarser heads are dropped without
    deep supervision). Outputs equal nnU-Net's in eval mode, and in training mode with deep supervision
    the list equals its list of outputs.
    """
    if isinstance(source, nn.Module):
        arguments = _network_arguments(source)
        if deep_supervision is not None:
            arguments["deep_supervision"] = deep_supervision
        state = source.state_dict()
    elif isinstance(source, (str, Path)):
        folder = Path(source)
        if not folder.is_dir():
            raise FileNotFoundError(f"nnU-Net results folder not found: {folder}.")
        if configuration is None:
            configuration = folder.name.rpartition("__")[2]
        arguments = read_nnunet_plan(folder / "plans.json", folder / "dataset.json", configuration)
        arguments["deep_supervision"] = bool(deep_supervision)
        fold_name = fold if isinstance(fold, str) and fold.startswith("fold_") else f"fold_{fold}"
        state = load_nnunet_checkpoint(folder / fold_name / checkpoint)
    else:
        raise TypeError(f"from_nnunet takes a network or a results folder path, got {type(source).__name__}.")
    encoder_name = arguments.pop("encoder_name", None)
    model = _build(arguments, encoder_name)
    renamed = nnunet_state_dict(state, arguments["kind"], deep_supervision=arguments["deep_supervision"])
    expected = model.state_dict()
    shapes = [k for k in renamed if k in expected and renamed[k].shape != expected[k].shape]
    missing, unexpected = sorted(set(expected) - set(renamed)), sorted(set(renamed) - set(expected))
    if missing or unexpected or shapes:
        raise ValueError(
            "The nnU-Net weights do not fit the network built from its topology: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatches "
            f"{[(k, tuple(renamed[k].shape), tuple(expected[k].shape)) for k in shapes[:5]]}."
        )
    model.load_state_dict(renamed, strict=True)
    return model


def load_nnunet_encoder_weights(
    encoder: nn.Module, source: Mapping[str, torch.Tensor] | str | Path, kind: str = "resenc"
) -> nn.Module:
    """Load the encoder part of an nnU-Net (or nnssl pretraining) checkpoint into an smp3d encoder.

    ``source`` is a state dict or a checkpoint file (read as :func:`load_nnunet_checkpoint` reads it;
    a file holding a bare state dict works too). Keys under ``encoder.`` are renamed by
    :func:`nnunet_key_map` and must fit ``encoder`` (a ``resenc_*`` encoder for ``kind="resenc"``,
    ``plain_nnunet`` for ``"plain"``) strictly; every other key (decoder, heads) is ignored.
    Returns the encoder.
    """
    state = _torch_load(Path(source)) if isinstance(source, (str, Path)) else source
    if isinstance(state, Mapping) and isinstance(state.get("network_weights"), Mapping):
        state = state["network_weights"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"Expected a state dict or a checkpoint with 'network_weights', got {type(state).__name__}.")
    encoder_keys = [k for k in state if k.startswith("encoder.")]
    if not encoder_keys:
        raise ValueError(f"No 'encoder.*' keys in the nnU-Net weights; found e.g. {sorted(state)[:5]}.")
    mapping = nnunet_key_map(encoder_keys, kind)
    renamed = {new.removeprefix("encoder."): state[old] for old, new in mapping.items() if new is not None}
    expected = encoder.state_dict()
    missing, unexpected = sorted(set(expected) - set(renamed)), sorted(set(renamed) - set(expected))
    shapes = [
        (k, tuple(renamed[k].shape), tuple(expected[k].shape))
        for k in renamed
        if k in expected and renamed[k].shape != expected[k].shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"The nnU-Net encoder weights do not fit this encoder (depth, widths, blocks, kernel sizes must be the "
            f"plan's): missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatches {shapes[:5]}."
        )
    encoder.load_state_dict(renamed, strict=True)
    return encoder
