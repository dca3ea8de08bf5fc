"""Constructor arguments are validated at construction, with errors that name the argument, what was
expected and what came. Generated from the architecture list, so a new architecture is covered."""

from __future__ import annotations

import inspect

import pytest
import repo_scripts
import torch

import smp3d
from smp3d import losses
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


# --- losses: every constructor argument is checked at construction ---------------------------------------------

#: Bad values for every constructor argument of the losses; a loss with an argument not listed here fails
#: test_every_loss_argument_is_covered, so a new argument comes with its checks.
BAD_LOSS_ARGUMENTS: dict[str, list] = {
    "mode": ["multiclas", 3, None],
    "ignore_index": ["multiclass", 1.5, True],
    "smooth": [-1.0, "0.1", float("nan")],
    "eps": [-1e-7, float("inf"), "1e-7"],
    "smooth_factor": [1.5, -0.1, "0.1"],
    "alpha": [-0.5, "0.5", float("nan")],
    "beta": [-0.5, None],
    "gamma": [-1.0, "2"],
    "reduced_threshold": [0.0, -1.0, "0.5"],
    "class_weights": [[1.0, -1.0], [[1.0, 2.0]], [], "ab", [float("nan"), 1.0]],
    "classes": [[1.5], "ab", 3],
    "log_loss": ["yes", 1],
    "from_logits": ["yes", None],
    "per_image": ["no", 0],
    "normalized": ["no"],
    "reduction": ["avg", None],
    "weight": [[1.0, 2.0], torch.tensor([-1.0, 1.0]), torch.tensor([True])],
    "pos_weight": ["a", torch.tensor([float("nan")])],
    "dim": [1.5, "1"],
}


def _loss_classes() -> dict[str, type]:
    return {
        name: obj
        for name, obj in vars(losses).items()
        if isinstance(obj, type)
        and issubclass(obj, torch.nn.Module)
        and name in losses.__all__
        # a wrapper of another loss, its arguments checked in test_deep_supervision.py
        and name != "DeepSupervisionLoss"
    }


def _loss_cases() -> list[tuple[str, str, object]]:
    cases = []
    for name, cls in sorted(_loss_classes().items()):
        for argument in list(inspect.signature(cls.__init__).parameters)[1:]:
            cases += [(name, argument, value) for value in BAD_LOSS_ARGUMENTS.get(argument, [])]
    return cases


def _required(cls: type, argument: str) -> dict:
    """The required arguments (only ``mode``), with a mode where ``argument`` applies."""
    parameters = inspect.signature(cls.__init__).parameters
    return {"mode": "multiclass"} if "mode" in parameters and argument != "mode" else {}


def test_every_loss_argument_is_covered():
    assert len(_loss_classes()) >= 10
    for name, cls in _loss_classes().items():
        missing = set(list(inspect.signature(cls.__init__).parameters)[1:]) - set(BAD_LOSS_ARGUMENTS)
        assert not missing, f"{name}: add bad values for {sorted(missing)} to BAD_LOSS_ARGUMENTS"


@pytest.mark.parametrize(("loss", "argument", "value"), _loss_cases(), ids=repr)
def test_bad_loss_arguments_are_refused_at_construction(loss, argument, value):
    cls = _loss_classes()[loss]
    with pytest.raises(ValueError, match=rf"^{loss}: .*{argument}") as info:
        cls(**_required(cls, argument), **{argument: value})
    assert "\n" not in str(info.value)


def test_weighted_cross_entropy_takes_no_mode():
    with pytest.raises(ValueError, match=r"ignore_index must be an int .* got 'multiclass'\. .* has no mode argument"):
        losses.WeightedCrossEntropyLoss("multiclass")
    assert losses.WeightedCrossEntropyLoss(ignore_index=255).ignore_index == 255
