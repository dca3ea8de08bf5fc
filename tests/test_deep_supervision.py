"""Deep supervision: per-level heads of every architecture whose decoder has several resolution levels,
and DeepSupervisionLoss.

The architectures come from scripts/architecture_matrix.py (the list tests/test_architectures.py uses),
so a new architecture is tested here the day it lands: with deep supervision if its constructor takes
``deep_supervision``, for a clear refusal otherwise.
"""

from __future__ import annotations

import inspect
import json
import math

import pytest
import repo_scripts
import torch
import torch.nn.functional as F

import smp3d
from smp3d.losses import DeepSupervisionLoss, deep_supervision_weights, downsample_target

am = repo_scripts.load("scripts/architecture_matrix.py")
ARCHS = am.architectures()
SUPPORTED = sorted(name for name, cls in ARCHS.items() if "deep_supervision" in inspect.signature(cls).parameters)
UNSUPPORTED = sorted(set(ARCHS) - set(SUPPORTED))

# A tiny encoder (plain, 4 base channels) with per-axis strides: levels are anisotropic.
STRIDES = {2: ((2, 1), 2, (1, 2), 2, 2), 3: ((2, 2, 1), 2, (2, 1, 2), 2, 2)}
SIZE = {2: (32, 32), 3: (32, 32, 16)}


def small_decoder(cls: type) -> dict:
    """Narrow decoder widths for whatever width arguments the architecture takes (fast 3D tests)."""
    widths = {}
    for name, parameter in inspect.signature(cls).parameters.items():
        if name == "decoder_channels":
            default = parameter.default
            widths[name] = (32, 16, 8, 8, 4)[-len(default) :] if isinstance(default, tuple) else 16
        elif name in ("decoder_pyramid_channels", "decoder_segmentation_channels"):
            widths[name] = 32  # GroupNorm(32) needs a multiple of 32
    return widths


def build(arch: str, spatial_dims: int, **kwargs):
    torch.manual_seed(0)
    return ARCHS[arch](
        encoder_name="plain",
        base_channels=4,
        in_channels=1,
        classes=2,
        spatial_dims=spatial_dims,
        strides=STRIDES[spatial_dims][: kwargs.get("encoder_depth", am.default_depth(ARCHS[arch]))],
        **{**small_decoder(ARCHS[arch]), **kwargs},
    )


def test_the_list_is_not_empty():
    assert {"Unet", "UnetPlusPlus", "MAnet", "Linknet", "FPN", "UPerNet", "HRNet"} <= set(SUPPORTED)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("arch", SUPPORTED)
def test_levels_shapes_and_eval_mode(arch, spatial_dims):
    model = build(arch, spatial_dims, deep_supervision=True)
    reference = build(arch, spatial_dims)  # same seed: same weights except the heads
    result = reference.load_state_dict(model.state_dict(), strict=False)
    assert not result.missing_keys
    assert result.unexpected_keys and all(k.startswith("deep_supervision_heads.") for k in result.unexpected_keys)

    levels = model.decoder.level_channels
    assert len(model.decoder.level_reductions) == len(levels) >= 2
    # the deepest level is left out by default (NNUNet returns it, as nnU-Net's network does)
    assert 1 <= len(model.deep_supervision_heads) <= len(levels) - 1
    x = torch.randn(2, 1, *SIZE[spatial_dims])

    torch.manual_seed(1)
    outputs = model.train()(x)
    assert isinstance(outputs, list) and len(outputs) == len(model.deep_supervision_reductions) >= 2
    reductions = model.deep_supervision_reductions
    assert reductions[0] == (1,) * spatial_dims
    assert tuple(map(tuple, reductions[1:])) == tuple(map(tuple, model.decoder.level_reductions[1 : len(outputs)]))
    assert len(set(reductions)) > 1
    for out, reduction in zip(outputs, reductions, strict=True):
        expected = tuple(math.ceil(n / r) for n, r in zip(SIZE[spatial_dims], reduction, strict=True))
        assert tuple(out.shape) == (2, 2, *expected)
    # Level 0 is the ordinary mask (same batch statistics, same dropout draw).
    torch.manual_seed(1)
    torch.testing.assert_close(outputs[0], reference.train()(x))
    sum(o.square().mean() for o in outputs).backward()
    returned_heads = list(model.deep_supervision_heads)[: len(outputs) - 1]  # MedNeXt keeps an unused deepest head
    assert all(p.grad is not None for head in returned_heads for p in head.parameters())

    with torch.no_grad():
        out = model.eval()(x)
        assert isinstance(out, torch.Tensor)
        torch.testing.assert_close(out, reference.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("arch", UNSUPPORTED)
def test_architectures_without_levels_refuse_clearly(arch):
    build(arch, 2, deep_supervision=False)
    with pytest.raises(ValueError, match=rf"{arch} does not support deep_supervision=True.*Unet"):
        build(arch, 2, deep_supervision=True)


def test_levels_argument():
    model = build("Unet", 2, deep_supervision=True, deep_supervision_levels=5)
    assert len(model.deep_supervision_heads) == 4  # every level, the deepest included
    assert model.deep_supervision_reductions[-1] == (8, 8)
    for bad in (1, 6, True, "2"):
        with pytest.raises(ValueError, match="deep_supervision_levels"):
            build("Unet", 2, deep_supervision=True, deep_supervision_levels=bad)
    with pytest.raises(ValueError, match="deep_supervision_levels=2"):
        build("Unet", 2, encoder_depth=2, decoder_channels=(8, 4), deep_supervision=True)
    with pytest.raises(ValueError, match="deep_supervision must be True or False"):
        build("Unet", 2, deep_supervision="yes")


def test_aux_classification_head_and_save_load_round_trip(tmp_path):
    model = build("Unet", 2, deep_supervision=True, aux_params={"classes": 3})
    x = torch.randn(2, 1, 32, 32)
    masks, labels = model.train()(x)
    assert isinstance(masks, list) and len(masks) == 4 and labels.shape == (2, 3)
    mask, labels = model.eval()(x)
    assert isinstance(mask, torch.Tensor) and mask.shape == (2, 2, 32, 32)

    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["deep_supervision"] is True and config["deep_supervision_levels"] is None
    loaded = smp3d.from_pretrained(tmp_path)
    assert loaded.deep_supervision and len(loaded.deep_supervision_heads) == 3
    assert loaded.deep_supervision_reductions == model.deep_supervision_reductions
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)


def test_compile_fullgraph_without_graph_breaks():
    """The training-mode list output traces as one graph (eager backend: tracing only, no codegen)."""
    from torch._dynamo.utils import counters

    model = build("Unet", 2, deep_supervision=True, encoder_depth=3, decoder_channels=(16, 8, 4)).train()
    x = torch.randn(2, 1, *SIZE[2])
    torch.manual_seed(0)
    expected = model(x)
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    compiled = torch.compile(model, backend="eager", fullgraph=True)(x)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 1
    assert isinstance(compiled, list) and len(compiled) == len(expected) == 2
    for a, b in zip(compiled, expected, strict=True):
        torch.testing.assert_close(a, b)
    torch._dynamo.reset()


# -- the loss ---------------------------------------------------------------------------------------


def test_weights_follow_nnunet():
    assert deep_supervision_weights(4) == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15])
    # nnU-Net's trainer: 1/2**i, the coarsest set to 0, normalised
    assert deep_supervision_weights(5, exclude_lowest=True) == pytest.approx(
        [w / 1.875 for w in (1, 0.5, 0.25, 0.125, 0)]
    )
    # a model that leaves the deepest level out + default weights == nnU-Net's rule on every level
    assert deep_supervision_weights(4) == pytest.approx(deep_supervision_weights(5, exclude_lowest=True)[:4])
    with pytest.raises(ValueError, match="weights"):
        DeepSupervisionLoss(F.cross_entropy, weights=(1, -1))
    with pytest.raises(ValueError, match="2 weights but the prediction has 3 levels"):
        DeepSupervisionLoss(F.cross_entropy, weights=(1, 1))([torch.zeros(1, 2, 4, 4)] * 3, torch.zeros(1, 4, 4).long())


def test_plain_tensor_equals_the_wrapped_loss():
    prediction, target = torch.randn(2, 3, 8, 8, 4), torch.randint(0, 3, (2, 8, 8, 4))
    loss = smp3d.losses.DiceLoss("multiclass")
    assert DeepSupervisionLoss(loss)(prediction, target) == loss(prediction, target)


def _hand_levels():
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 8, 8, 4))
    reductions = ((1, 1, 1), (2, 2, 1), (4, 4, 2))
    predictions = [torch.randn(2, 3, 8 // a, 8 // b, 4 // c) for a, b, c in reductions]
    return target, reductions, predictions


def test_loss_on_anisotropic_class_maps_by_hand():
    target, reductions, predictions = _hand_levels()
    # Level 1 keeps voxel 1 of every 2 along H and W and every voxel along D; level 2 voxel 2 of 4, 1 of 2.
    level1 = torch.empty(2, 4, 4, 4, dtype=torch.long)
    level2 = torch.empty(2, 2, 2, 2, dtype=torch.long)
    for b in range(2):
        for i in range(4):
            for j in range(4):
                for k in range(4):
                    level1[b, i, j, k] = target[b, 2 * i + 1, 2 * j + 1, k]
                    if i < 2 and j < 2 and k < 2:
                        level2[b, i, j, k] = target[b, 4 * i + 2, 4 * j + 2, 2 * k + 1]
    weights = (4 / 7, 2 / 7, 1 / 7)
    expected = sum(
        w * F.cross_entropy(p, t) for w, p, t in zip(weights, predictions, (target, level1, level2), strict=True)
    )
    loss = DeepSupervisionLoss(F.cross_entropy, reductions=reductions)
    torch.testing.assert_close(loss(predictions, target), expected)
    # reductions read from the shapes, and pre-downsampled targets, give the same
    torch.testing.assert_close(DeepSupervisionLoss(F.cross_entropy)(predictions, target), expected)
    torch.testing.assert_close(loss(predictions, [target, level1, level2]), expected)
    with pytest.raises(ValueError, match=r"not the target's \(8, 8, 4\) reduced by \(2, 2, 2\)"):
        DeepSupervisionLoss(F.cross_entropy, reductions=((1, 1, 1), (2, 2, 2), (4, 4, 2)))(predictions, target)


def test_loss_on_anisotropic_soft_targets_by_hand():
    target, reductions, predictions = _hand_levels()
    one_hot = F.one_hot(target, 3).movedim(-1, 1).float()  # (B, C, 8, 8, 4)
    level1 = one_hot.reshape(2, 3, 4, 2, 4, 2, 4, 1).mean(dim=(3, 5, 7))
    level2 = one_hot.reshape(2, 3, 2, 4, 2, 4, 2, 2).mean(dim=(3, 5, 7))
    assert torch.allclose(level2.sum(1), torch.ones(2, 2, 2, 2))  # class fractions per block
    calls = []

    def loss(p, t):
        calls.append(tuple(t.shape))
        return F.cross_entropy(p, t)

    wrapped = DeepSupervisionLoss(loss, reductions=reductions, exclude_lowest=True)
    expected = (2 / 3) * F.cross_entropy(predictions[0], one_hot) + (1 / 3) * F.cross_entropy(predictions[1], level1)
    torch.testing.assert_close(wrapped(predictions, one_hot), expected)
    assert calls == [(2, 3, 8, 8, 4), (2, 3, 4, 4, 4)]  # the level of weight 0 is not computed
    torch.testing.assert_close(downsample_target(one_hot, (2, 2, 2), "area"), level2)


def test_downsampling_of_sizes_that_do_not_divide():
    target = torch.arange(10).reshape(1, 10)  # a 1-D class map: voxels 0..9 into 4 cells
    assert downsample_target(target, (4,), "nearest").tolist() == [[1, 3, 6, 8]]  # nearest-exact
    soft = torch.arange(10.0).reshape(1, 1, 10)
    torch.testing.assert_close(downsample_target(soft, (5,), "area"), torch.tensor([[[0.5, 2.5, 4.5, 6.5, 8.5]]]))


def test_loss_with_a_model_and_odd_input_sizes():
    model = build("Unet", 3, deep_supervision=True).train()
    x = torch.randn(2, 1, 30, 34, 18)  # Unet takes sizes that the reductions do not divide
    target = torch.randint(0, 2, (2, 30, 34, 18))
    loss = DeepSupervisionLoss(smp3d.losses.DiceLoss("multiclass"), reductions=model.deep_supervision_reductions)
    value = loss(model(x), target)
    value.backward()
    assert torch.isfinite(value)
