"""Loading encoder weights: strict, all-or-nothing, with errors that name the key and shapes."""

from __future__ import annotations

import os
import warnings
from collections.abc import Collection, Mapping
from pathlib import Path

import torch
import torch.nn as nn

from .hub import check_weights_config, download_pretrained, read_weights_config
from .spec import EncoderSpec

__all__ = ["drop_unused_stage_keys", "load_encoder_weights", "load_state_dict_strict", "read_safetensors"]

WEIGHTS_FILENAME = "model.safetensors"


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors file on the CPU; a corrupt or truncated file raises a ValueError naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for damaged headers/data
        raise ValueError(
            f"Could not read weights from {str(path)!r}: the file is not valid safetensors ({exc})."
        ) from exc


def drop_unused_stage_keys(module: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` without the keys of encoder stages that ``module`` does not build.

    An encoder built shallower than its full depth (``encoder_depth`` below ``max_depth``) leaves
    its deeper stages out, while segmentation_models_pytorch keeps them (unused) in the model, so
    smp's checkpoints carry their weights. The registry marks such encoders with a callable
    ``_smp3d_unused_stage_keys(encoder)`` giving those keys; they are dropped here, with one warning.
    """
    state = dict(state_dict)
    for prefix, sub in module.named_modules():
        unused_keys = getattr(sub, "_smp3d_unused_stage_keys", None)
        if unused_keys is None:
            continue
        prefix = f"{prefix}." if prefix else ""
        own = set(sub.state_dict())
        candidates = [k for k in state if k.startswith(prefix) and k[len(prefix) :] not in own]
        if not candidates:
            continue
        unused = unused_keys(sub)
        dropped = [k for k in candidates if k[len(prefix) :] in unused]
        for k in dropped:
            del state[k]
        if dropped:
            warnings.warn(
                f"Ignored {len(dropped)} weight(s) of encoder stages this model does not build (its encoder depth "
                f"is below the full depth; segmentation_models_pytorch keeps those stages unused), "
                f"e.g. {dropped[0]!r}.",
                UserWarning,
                stacklevel=3,
            )
    return state


def _first_non_finite(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    for key, tensor in state_dict.items():
        floating = tensor.is_floating_point() or tensor.is_complex()
        if floating and tensor.numel() and not bool(torch.isfinite(tensor).all()):
            return key
    return None


def load_state_dict_strict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    what: str,
    deeper_keys: Collection[str] = (),
    strict: bool = True,
) -> list[str]:
    """Load ``state_dict`` into ``module`` only if every key, shape and dtype kind matches; otherwise
    change nothing.

    ``deeper_keys`` are keys of stages that a shallower build of the encoder (``encoder_depth`` below
    the full depth) does not have: the full encoder's weights may carry them, and they are left out
    (so are smp's unused deeper-stage keys, see :func:`drop_unused_stage_keys`).

    A floating-point parameter or buffer never takes integer or bool weights (a silent cast would
    hide a damaged or foreign file). Weights holding NaN or Inf load with a warning naming the first
    such key.

    The error lists missing and unexpected keys, every shape mismatch (key, expected, got) and every
    dtype mismatch. With ``strict=False`` the keys that fit load, the rest are reported in one
    warning and returned (``"key: reason"`` strings); an empty list means everything loaded.
    """
    if deeper_keys:
        state_dict = {k: v for k, v in state_dict.items() if k not in deeper_keys}
    state_dict = drop_unused_stage_keys(module, state_dict)
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"Weights {what}: the value of {key!r} is a {type(value).__name__}, not a tensor.")
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        (k, tuple(expected[k].shape), tuple(state_dict[k].shape))
        for k in expected
        if k in state_dict and expected[k].shape != state_dict[k].shape
    ]
    wrong_kind = [
        (k, expected[k].dtype, state_dict[k].dtype)
        for k in expected
        if k in state_dict
        and expected[k].is_floating_point()
        and not (state_dict[k].is_floating_point() or state_dict[k].is_complex())
    ]
    problems = missing or unexpected or mismatched or wrong_kind
    lines: list[str] = []

    def listing(title: str, items: list[str]) -> None:
        if items:
            shown = ", ".join(items[:8]) + (f", ... ({len(items) - 8} more)" if len(items) > 8 else "")
            lines.append(f"{title} ({len(items)}): {shown}")

    if problems:
        listing("Missing keys", missing)
        listing("Unexpected keys", unexpected)
        listing("Shape mismatches (key: model <- weights)", [f"{k}: {e} <- {g}" for k, e, g in mismatched])
        listing(
            "Non-floating weights for floating-point tensors (key: model <- weights)",
            [f"{k}: {e} <- {g}" for k, e, g in wrong_kind],
        )
    if problems and strict:
        head = f"Weights {what} do not match the model; nothing was loaded."
        if mismatched and all(len(g) + 1 == len(e) for _, e, g in mismatched):
            lines.append(
                "The weights have one spatial axis fewer than the model: 2D weights must be inflated to 3D first."
            )
        if not (missing or unexpected or mismatched):
            lines.append("Store the weights in a floating-point dtype (they were saved with an integer or bool dtype).")
        else:
            lines.append("Pass strict=False to load the keys that fit and list the rest.")
        raise ValueError("\n".join([head, *lines]))
    skipped = {k for k, _, _ in mismatched} | {k for k, _, _ in wrong_kind}
    loadable = {k: v for k, v in state_dict.items() if k in expected and k not in skipped}
    bad = _first_non_finite(loadable)
    if bad is not None:
        warnings.warn(
            f"Weights {what} hold NaN or Inf values (first key: {bad!r}); the model will produce NaN.",
            UserWarning,
            stacklevel=2,
        )
    if not problems:
        module.load_state_dict(loadable, strict=True)
        return []
    module.load_state_dict(loadable, strict=False)
    report = (
        [f"{k}: missing" for k in missing]
        + [f"{k}: unexpected" for k in unexpected]
        + [f"{k}: shape {e} <- {g}" for k, e, g in mismatched]
        + [f"{k}: dtype {e} <- {g}" for k, e, g in wrong_kind]
    )
    warnings.warn(
        f"Weights {what}: loaded {len(loadable)} of {len(expected)} tensors (strict=False); not loaded:\n"
        + "\n".join(lines),
        UserWarning,
        stacklevel=2,
    )
    return report


def _weights_file(source: str | os.PathLike) -> Path | None:
    path = Path(source).expanduser()
    if path.is_dir():
        file = path / WEIGHTS_FILENAME
        if not file.is_file():
            raise FileNotFoundError(f"The weights folder {str(path)!r} has no {WEIGHTS_FILENAME}.")
        return file
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(
                f"Encoder weights are read from .safetensors files only, got {str(path)!r}. "
                f"Convert a PyTorch checkpoint with safetensors.torch.save_file first."
            )
        return path
    return None


def load_encoder_weights(
    encoder: nn.Module,
    weights: str | os.PathLike,
    name: str,
    spec: EncoderSpec,
    deeper_keys: Collection[str] = (),
) -> None:
    """Load ``weights`` into ``encoder``, strictly: a local ``.safetensors`` file, a folder holding
    ``model.safetensors`` (and optionally the ``config.json`` written by ``smp3d-convert-weights``),
    or a pretrained tag of the spec (``"imagenet"``), fetched from the Hub (see :mod:`.hub`).

    A ``config.json`` naming another encoder or another ``spatial_dims`` is refused before loading.
    """
    spatial_dims = int(getattr(encoder, "spatial_dims", 0)) or None

    def check(config: dict, where: str) -> None:
        if spatial_dims is not None:
            check_weights_config(config, name, spatial_dims, where=where)

    # A tag wins over a same-named relative path: pass "./imagenet" for a folder called "imagenet".
    if isinstance(weights, str) and weights in spec.weights:
        file, _, repo_id = download_pretrained(name, weights, spec, check=check)
        load_state_dict_strict(
            encoder,
            read_safetensors(file),
            what=f"{name}.{weights} from the Hub repository {repo_id!r}",
            deeper_keys=deeper_keys,
        )
        return
    file = _weights_file(weights)
    if file is not None:
        config = read_weights_config(file.parent) if file.name == WEIGHTS_FILENAME else None
        if config is not None:
            check(config, f"in {str(file.parent)!r}")
        load_state_dict_strict(
            encoder, read_safetensors(file), what=f"from {str(file)!r} for encoder {name!r}", deeper_keys=deeper_keys
        )
        return
    tags = ", ".join(sorted(spec.weights)) or "none"
    raise ValueError(
        f"encoder_weights={str(weights)!r} is neither an existing file or folder nor a pretrained tag of "
        f"encoder {name!r} (tags: {tags})."
    )
