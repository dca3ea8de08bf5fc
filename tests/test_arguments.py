"""Constructor arguments are validated at construction, with errors that name the argument, what was
expected and what came. Generated from the architecture list, so a new architecture is covered."""

from __future__ import annotations

import inspect

import pytest
import repo_scripts
import torch

import smp3d
from smp3d.encoders import resolve_strides
from smp3d.encoders.protocol import MAX_TOTAL_REDUCTION

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


@pytest.mark.parametrize(
    ("strides", "stage", "axis", "total"),
    [
        ((10**6, 2, 2, 2, 2), 1, 0, 10**6),
        ((16, 16, 16, 2, 1), 4, 0, 8192),
        ((2, 2, 2, 2, (1, 1, 512)), 5, 2, 8192),
    ],
)
def test_strides_with_an_absurd_total_reduction_are_refused(strides, stage, axis, total):
    with pytest.raises(
        ValueError,
        match=rf"`strides` item {stage} is .* total reduction along spatial axis {axis} to {total} .* limit of 4096",
    ):
        resolve_strides(strides, 5, 3)
    with pytest.raises(ValueError, match=rf"`strides` item {stage} is"), torch.device("meta"):
        smp3d.Unet("resnet18", strides=strides)  # ResNet takes any stride per stage: the limit is the total


def test_strides_up_to_the_limit_are_accepted():
    assert MAX_TOTAL_REDUCTION == 4096
    assert resolve_strides((16, 16, 16, 1, 1), 5, 2)[-1] == (1, 1)
    assert resolve_strides(((2, 2, 1), (4, 2, 1), 2, (2, 2, 1), (1, 2, 3)), 5, 3)[1] == (4, 2, 1)
