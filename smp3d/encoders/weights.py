"""Loading encoder weights: strict, all-or-nothing, with errors that name the key and shapes."""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from pathlib import Path

import torch
import torch.nn as nn

from .hub import check_weights_config, download_pretrained, read_weights_config
from .spec import EncoderSpec

__all__ = ["load_encoder_weights", "load_state_dict_strict", "read_safetensors"]

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


def load_state_dict_strict(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str, deeper_keys: Collection[str] = ()
) -> None:
    """Load ``state_dict`` into ``module`` only if every key and shape matches; otherwise change nothing.

    ``deeper_keys`` are keys of stages that a shallower build of the encoder (``encoder_depth`` below
    the full depth) does not have: the full encoder's weights may carry them, and they are left out.

    The error lists missing and unexpected keys and every shape mismatch (key, expected, got).
    """
    if deeper_keys:
        state_dict = {k: v for k, v in state_dict.items() if k not in deeper_keys}
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        (k, tuple(expected[k].shape), tuple(state_dict[k].shape))
        for k in expected
        if k in state_dict and expected[k].shape != state_dict[k].shape
    ]
    if missing or unexpected or mismatched:
        lines = [f"Weights {what} do not match the model; nothing was loaded."]

        def listing(title: str, items: list[str]) -> None:
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items) - 8} more)" if len(items) > 8 else "")
                lines.append(f"{title} ({len(items)}): {shown}")

        listing("Missing keys", missing)
        listing("Unexpected keys", unexpected)
        listing("Shape mismatches (key: model <- weights)", [f"{k}: {e} <- {g}" for k, e, g in mismatched])
        if mismatched and all(len(g) + 1 == len(e) for _, e, g in mismatched):
            lines.append(
                "The weights have one spatial axis fewer than the model: 2D weights must be inflated to 3D first."
            )
        raise ValueError("\n".join(lines))
    module.load_state_dict(state_dict, strict=True)


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
