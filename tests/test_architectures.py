"""Every architecture x every installed encoder family x {2D, 3D} x {isotropic, anisotropic strides}.

The matrix is generated from the registry and from ``create_model``'s table, so a new
architecture, family or plugin is covered without editing this file. Structural cells run on the
``meta`` device; real forward+backward runs once per architecture with a small encoder.
"""

from __future__ import annotations

import functools
import inspect

import pytest
import repo_scripts
import torch

import smp3d

am = repo_scripts.load("scripts/architecture_matrix.py")

FAMILIES = am.installed_families()
CELLS = am.cells(FAMILIES)
FIRST_PARTY = set(am.first_party_families().values())


# The cells and the doc check share one worker (``--dist loadgroup``), so each cell is built once in a
# run: the doc check, collected after the cells, reuses their outcomes from this cache.
MATRIX_GROUP = pytest.mark.xdist_group("architecture_matrix")


@functools.cache
def _outcome(cell):
    return am.run_cell(cell)


@MATRIX_GROUP
@pytest.mark.parametrize("cell", CELLS, ids=lambda c: f"{c.arch}-{c.encoder}-{c.spatial_dims}d-{c.strides}")
def test_cell_passes_or_is_refused_at_construction(cell):
    outcome = _outcome(cell)
    assert outcome.status != "bug", outcome.detail
    if outcome.status == "refused":
        # A refusal must say what was expected and why, and be documented when first-party.
        assert len(outcome.detail) > 40, outcome.detail
        if cell.encoder in FIRST_PARTY:
            assert outcome.detail in am.DOC.read_text()


@MATRIX_GROUP
def test_matrix_doc_is_up_to_date():
    first_party = {c: _outcome(c) for c in CELLS if c.encoder in FIRST_PARTY}
    assert am.DOC.read_text() == am.render(first_party), (
        "docs/architectures.md is stale: run python scripts/architecture_matrix.py"
    )


def test_matrix_covers_every_architecture_and_family():
    classes = set(am.architectures())
    assert {c.arch for c in CELLS} == classes
    assert {"Unet"} <= classes
    assert set(FAMILIES.values()) >= FIRST_PARTY
    assert len(CELLS) == len(classes) * len(FAMILIES) * 4


@pytest.mark.parametrize("arch", sorted(am.architectures()))
def test_real_forward_backward_3d_anisotropic(arch):
    """Real compute: resnet18, batch 2, a 32x32x16 volume with per-axis strides (the deepest feature is one
    voxel), output = input size."""
    cls = am.architectures()[arch]
    depth = inspect.signature(cls.__init__).parameters["encoder_depth"].default
    strides = ((2, 2, 1), 2, 2, 2, 2)[:depth]
    torch.manual_seed(0)
    model = cls(encoder_name="resnet18", in_channels=1, classes=3, strides=strides)
    # SwinUNETR's instance norm at the bottleneck needs more than one voxel per sample.
    size = (64, 64, 32) if arch == "SwinUNETR" else (32, 32, 16)
    x = torch.randn(2, 1, *size)
    out = model(x)
    assert out.shape == (2, 3, *size)
    out.float().square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", sorted(smp3d.models.ARCHITECTURES))
def test_create_model_knows_every_name(name):
    with torch.device("meta"):
        model = smp3d.create_model(name.upper(), encoder_name="resnet18", spatial_dims=2)
    assert isinstance(model, smp3d.models.ARCHITECTURES[name])
