"""Constructor arguments are validated at construction, with errors that name the argument, what was
expected and what came. Generated from the architecture list, so a new architecture is covered."""

from __future__ import annotations

import inspect

import pytest
import repo_scripts
import torch

am = repo_scripts.load("scripts/architecture_matrix.py")


def _channel_cases() -> list[tuple[str, str, object]]:
    """(architecture, argument, bad value) for every ``*channels`` argument other than ``in_channels``."""
    cases = []
    for arch, cls in sorted(am.architectures().items()):
        for name, parameter in inspect.signature(cls.__init__).parameters.items():
            if not name.endswith("channels") or name == "in_channels":
                continue
            default = parameter.default
            if isinstance(default, tuple):  # one channel count per decoder block
                bad = [default[:-1] + (0,), default[:-1] + (-16,), 16, (float(default[0]), *default[1:]), default[:-1]]
            else:
                bad = [0, -8, 16.0, True, "16", (16, 16)]
            cases += [(arch, name, value) for value in bad]
    return cases


CHANNEL_CASES = _channel_cases()


def test_channel_cases_cover_the_architectures_that_take_channels():
    archs = {arch for arch, _, _ in CHANNEL_CASES}
    assert {"Unet", "UnetPlusPlus", "MAnet", "FPN", "DeepLabV3", "DeepLabV3Plus", "PAN", "UPerNet"} <= archs


@pytest.mark.parametrize(("arch", "name", "value"), CHANNEL_CASES, ids=repr)
def test_bad_channel_arguments_are_refused_at_construction(arch, name, value):
    cls = am.architectures()[arch]
    with pytest.raises(ValueError, match=rf"^{arch}: {name} ") as info, torch.device("meta"):
        cls(encoder_name="resnet18", in_channels=1, classes=2, **{name: value})
    message = str(info.value)
    assert f"got {value!r}" in message or f"has {len(value)} items but the encoder has" in message, message
