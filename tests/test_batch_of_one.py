"""Training with a batch of one sample in 3D, for every architecture (generated from the architecture list).

Each architecture trains one step at the smallest input whose deepest encoder feature has more than one
voxel; where that feature is a single voxel, batch norm has no batch statistics and the model says so in
one line, with the fixes. A tiny plain encoder (4 base channels, batch norm) keeps this fast.
"""

from __future__ import annotations

import inspect

import pytest
import repo_scripts
import torch

import smp3d

am = repo_scripts.load("scripts/architecture_matrix.py")

ONE_VOXEL = r"cannot train on a batch of 1 of size .*: its deepest encoder feature is \(1, 1, 1\) voxel\(s\)"
DEEPEST_ONE_VOXEL = r": its deepest encoder feature is \(1, 1, 1\) voxel\(s\)"
FIXES = r"Use a larger patch \(at least .*\), batch size >= 2, a smaller encoder_depth or smaller `strides`"


def small_model(cls: type) -> torch.nn.Module:
    """``cls`` with the plain encoder (4 base channels) and narrow decoder channels (32 per argument that
    takes one count, 8 per decoder block)."""
    kwargs = {}
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if name.endswith("channels") and name != "in_channels":
            default = parameter.default
            kwargs[name] = (8,) * len(default) if isinstance(default, tuple) else 32
    torch.manual_seed(0)
    return cls(encoder_name="plain", base_channels=4, in_channels=1, classes=2, **kwargs)


@pytest.mark.parametrize("arch", sorted(am.architectures()))
def test_batch_of_one_trains_or_says_why_not(arch):
    model = small_model(am.architectures()[arch]).train()
    reduction = model.output_stride
    # Smallest input whose deepest feature has two voxels: trains.
    size = (2 * reduction[0], *reduction[1:])
    out = model(torch.randn(1, 1, *size))
    masks = out[0] if isinstance(out, (tuple, list)) else out
    assert masks.shape == (1, 2, *size)
    masks.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # One voxel per channel at the deepest feature: one clear line instead of torch's error.
    with pytest.raises(ValueError, match=rf"^{type(model).__name__} {ONE_VOXEL}.*{FIXES}") as info:
        model(torch.randn(1, 1, *reduction))
    assert "\n" not in str(info.value)


POOLED = r"a batch norm after a layer that pools to one cell .* sees 1 value per channel"


@pytest.mark.parametrize(
    ("encoder", "depth", "size", "message"),
    [
        ("tu-test_resnet", 5, 32, rf"{DEEPEST_ONE_VOXEL}.*{FIXES}"),  # deepest feature 1 voxel
        (
            "tu-resnest14d",
            2,
            16,
            rf": {POOLED}.*the deepest encoder feature is \(4, 4, 4\) voxels\. Use batch size >= 2",
        ),
    ],
)
def test_timm_encoders_at_batch_of_one_say_why_not(encoder, depth, size, message):
    """Through ``tu-`` too: a 1-voxel deepest feature, and ResNeSt's split attention (batch norm on a
    globally pooled map inside every block), give one line instead of torch's error."""
    model = smp3d.Unet(encoder, encoder_depth=depth, decoder_channels=(8,) * depth, in_channels=1, classes=2)
    with pytest.raises(
        ValueError, match=rf"^Unet cannot train on a batch of 1 of size \({size}, {size}, {size}\){message}"
    ):
        model.train()(torch.randn(1, 1, size, size, size))
    model.eval()(torch.randn(1, 1, size, size, size))  # eval mode needs no batch statistics
