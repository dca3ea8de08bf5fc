"""MONAI state dicts -> smp3d state dicts, by documented key maps (used by ``SwinUNETR.from_monai`` and
``UNETR.from_monai``).

A key map is an ordered list of ``(pattern, replacement)`` regular expressions; the first pattern that
matches a key rewrites it, and a key no pattern matches is an error. Two facts are common to both
architectures: MONAI wraps every convolution in a ``Convolution`` module (``conv1.conv.weight``) where we
hold the convolution directly (``conv1.weight``), and its UNETR blocks wrap the residual block once more
(``encoder1.layer.conv1``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

__all__ = ["KeyMap", "convert_state_dict", "load_converted", "state_dict_of"]

KeyMap = Sequence[tuple[str, str]]

#: MONAI's ``Convolution`` wrapper: ``<name>.conv.weight`` -> ``<name>.weight``.
UNWRAP_CONV = (r"\.conv\.(weight|bias)$", r".\1")


def state_dict_of(source: Any, owner: str) -> dict[str, torch.Tensor]:
    """The state dict of a MONAI model, or ``source`` itself when it is a mapping of tensors."""
    if isinstance(source, nn.Module):
        return dict(source.state_dict())
    if isinstance(source, Mapping):
        bad = [k for k, v in source.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise TypeError(
                f"{owner}.from_monai: the state dict must map keys to tensors; {len(bad)} entries are not tensors "
                f"(e.g. {bad[0]!r}: {type(source[bad[0]]).__name__}). Pass checkpoint['state_dict']."
            )
        return dict(source)
    raise TypeError(
        f"{owner}.from_monai takes a MONAI model or its state dict, got {type(source).__name__}: {source!r}."
    )


def _rewrite(key: str, key_map: KeyMap) -> str | None:
    for pattern, replacement in key_map:
        new, count = re.subn(pattern, replacement, key, count=1)
        if count:
            return new
    return None


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor], key_map: KeyMap, dropped: Sequence[str], owner: str
) -> dict[str, torch.Tensor]:
    """Rewrite every key of a MONAI ``state_dict`` with ``key_map``, dropping keys that match a pattern of
    ``dropped`` (parameters MONAI keeps but never uses); a key matched by neither raises a KeyError."""
    converted: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        if any(re.search(pattern, key) for pattern in dropped):
            continue
        new = _rewrite(key, key_map)
        if new is None:
            unknown.append(key)
            continue
        # the conv wrapper may be nested once more (UNETR's projection blocks): unwrap until stable
        while True:
            again = re.sub(UNWRAP_CONV[0], UNWRAP_CONV[1], new)
            if again == new:
                break
            new = again
        converted[new] = value
    if unknown:
        raise KeyError(
            f"{owner}.from_monai: {len(unknown)} keys are not part of MONAI's {owner} layout: "
            f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}."
        )
    return converted


def load_converted(model: nn.Module, state_dict: Mapping[str, torch.Tensor], owner: str) -> None:
    """Load strictly, with an error listing missing/unexpected keys and shape mismatches by name."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [
        f"{k}: MONAI {tuple(state_dict[k].shape)} vs ours {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append(f"shape mismatches {shapes[:5]}")
        raise ValueError(
            f"{owner}.from_monai: the MONAI state dict does not fit the model built from it ({'; '.join(parts)}). "
            f"Pass the constructor arguments the checkpoint was trained with (they override what is read from it)."
        )
    model.load_state_dict(state_dict, strict=True)
