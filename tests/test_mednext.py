"""MedNeXt: the paper's parameter counts, equal outputs with MONAI's port (MedNeXt's and MONAI's key layouts),
UpKern, deep supervision, per-axis strides, 2D and 3D."""

from __future__ import annotations

import architecture_checks as checks
import pytest
import torch
import torch.nn as nn

import smp3d
from smp3d.decoders.mednext import mednext_state_dict

# Whole-network counts of MIC-DKFZ/MedNeXt's create_mednext_v1(1 input channel, 3 classes, size, kernel,
# deep_supervision=True), counted on its code; they include its 1-element ``dummy_tensor``, which we do not have.
MEDNEXT_COUNTS = {
    ("s", 3): 5_553_840,
    ("s", 5): 5_983_472,
    ("b", 3): 10_529_232,
    ("b", 5): 10_958_864,
    ("m", 3): 17_551_888,
    ("m", 5): 18_263_760,
    ("l", 3): 61_782_192,
    ("l", 5): 62_995_824,
}
# The table of MedNeXt's README / paper, in millions.
PAPER_MILLIONS = {
    ("s", 3): 5.6,
    ("s", 5): 5.9,
    ("b", 3): 10.5,
    ("b", 5): 11.0,
    ("m", 3): 17.6,
    ("m", 5): 18.3,
    ("l", 3): 61.8,
    ("l", 5): 63.0,
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("size", "kernel"), sorted(MEDNEXT_COUNTS))
def test_parameter_counts_equal_mednext_and_the_paper(size, kernel):
    with torch.device("meta"):
        model = smp3d.MedNeXt(f"mednext_{size}", kernel_size=kernel, in_channels=1, classes=3, deep_supervision=True)
    assert count(model) == MEDNEXT_COUNTS[size, kernel] - 1  # MedNeXt's dummy_tensor
    # The deep-supervision heads: 1x1 convs from 64, 128, 256, 512 channels to 3 classes.
    assert count(model.deep_supervision_heads) == 3 * (64 + 128 + 256 + 512) + 4 * 3
    paper = PAPER_MILLIONS[size, kernel]
    if (size, kernel) == ("s", 5):
        # The one figure that is not the count rounded: 5.98M is printed as 5.9M (truncated).
        assert int(count(model) / 1e5) / 10 == paper
    else:
        assert round(count(model) / 1e6, 1) == paper


def test_kernel_size_reaches_encoder_and_decoder():
    with torch.device("meta"):
        model = smp3d.MedNeXt(encoder_name="mednext_b", kernel_size=5, in_channels=1, classes=2)
    depthwise = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1]
    assert len(depthwise) == 2 * 9 + 4 + 4  # 2 blocks per stage, 4 down blocks, 4 up blocks
    assert {m.kernel_size for m in depthwise} == {(5, 5, 5)}
    assert model.decoder.stages[0].up.conv2.out_channels == 4 * 512  # B's deepest decoder ratio is 4


def _monai(spatial_dims: int, kernel: int, deep_supervision: bool):
    monai_nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    reference = monai_nets.MedNeXt(
        spatial_dims=spatial_dims,
        init_filters=4,
        in_channels=2,
        out_channels=3,
        encoder_expansion_ratio=2,
        decoder_expansion_ratio=(3, 2, 4, 2),
        bottleneck_expansion_ratio=2,
        kernel_size=kernel,
        deep_supervision=deep_supervision,
        use_residual_connection=True,
        blocks_down=(1, 2, 1, 1),
        blocks_bottleneck=2,
        blocks_up=(1, 1, 2, 1),
    )
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_(0.0, 0.2)
    return reference


# The smp3d model with _monai's layout (its blocks per stage, decoder ratios, 4 channels at full resolution).
SMALL = dict(
    encoder_name="mednext_s",
    base_channels=4,
    blocks=(1, 2, 1, 1, 2),
    decoder_blocks=(1, 1, 2, 1),
    decoder_expansion_ratios=(3, 2, 4, 2),
    in_channels=2,
    classes=3,
)


# MONAI's names -> MedNeXt's (MIC-DKFZ) names for a 5-level network: the same modules, named as in its repo.
def _as_mednext_keys(state: dict) -> dict:
    renames = [("enc_stages.", "enc_block_"), ("down_blocks.", "down_")]
    out = {"dummy_tensor": torch.ones(1)}
    for key, value in state.items():
        for old, new in renames:
            key = key.replace(old, new)
        for prefix, base, fmt in (
            ("up_blocks.", 3, "up_{}"),
            ("dec_stages.", 3, "dec_block_{}"),
            ("out_blocks.", 4, "out_{}"),
        ):
            if key.startswith(prefix):
                index, rest = key[len(prefix) :].split(".", 1)
                key = fmt.format(base - int(index)) + "." + rest
        out[key] = value
    return out


@pytest.mark.parametrize(("spatial_dims", "kernel", "layout"), [(3, 3, "monai"), (3, 3, "mednext"), (2, 5, "mednext")])
def test_loads_strictly_and_equals_monai_with_deep_supervision(spatial_dims, kernel, layout):
    reference = _monai(spatial_dims, kernel, deep_supervision=True)
    model = smp3d.MedNeXt(**SMALL, kernel_size=kernel, spatial_dims=spatial_dims, deep_supervision=True)
    state = reference.state_dict()
    smp3d.load_mednext_state_dict(model, _as_mednext_keys(state) if layout == "mednext" else state)
    x = torch.randn(2, 2, *(32,) * spatial_dims)
    reference.train()
    model.train()
    with torch.no_grad():
        expected, got = reference(x), model(x)
        deepest = model.deep_supervision_heads[-1](model.encoder(x)[-1])
    assert len(expected) == 5 and len(got) == 4  # the deepest level is not returned (nnU-Net's rule)
    for e, g in zip(expected, [*got, deepest], strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
    reductions = model.deep_supervision_reductions
    assert [tuple(g.shape[2:]) for g in got] == [tuple(32 // r for r in red) for red in reductions]
    reference.eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)


def test_key_map_refuses_what_it_cannot_place():
    with pytest.raises(KeyError, match="global response norm"):
        mednext_state_dict({"enc_block_0.0.grn_beta": torch.zeros(1)})
    with pytest.raises(KeyError, match="no MedNeXt layout"):
        mednext_state_dict({"encoder.stem.weight": torch.zeros(1)})
    model = smp3d.MedNeXt(**SMALL, spatial_dims=2)
    state = _as_mednext_keys(_monai(2, 3, deep_supervision=True).state_dict())
    with pytest.raises(RuntimeError, match="deep_supervision_heads"):  # the checkpoint has heads, the model none
        smp3d.load_mednext_state_dict(model, state)


def test_loads_a_checkpoint_file(tmp_path):
    reference = _monai(2, 3, deep_supervision=False)
    torch.save({"state_dict": _as_mednext_keys(reference.state_dict()), "epoch": 3}, tmp_path / "model.model")
    model = smp3d.MedNeXt(**SMALL, spatial_dims=2)
    smp3d.load_mednext_state_dict(model, tmp_path / "model.model")
    x = torch.randn(1, 2, 32, 32)
    model.eval()
    reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_upkern_interpolates_kernels_and_copies_the_rest(spatial_dims):
    kwargs = dict(base_channels=4, blocks=1, in_channels=1, classes=2, spatial_dims=spatial_dims, deep_supervision=True)
    torch.manual_seed(0)
    small = smp3d.MedNeXt("mednext_b", kernel_size=3, **kwargs)
    with torch.no_grad():
        for p in small.parameters():
            p.normal_()
    large = smp3d.upkern(smp3d.MedNeXt("mednext_b", kernel_size=5, **kwargs), small)
    before, after = small.state_dict(), large.state_dict()
    resized = [k for k in after if after[k].shape != before[k].shape]
    assert resized and all(k.endswith("conv1.weight") for k in resized)
    assert all(after[k].shape[2:] == (5,) * spatial_dims for k in resized)
    centre3, centre5 = (..., *(1,) * spatial_dims), (..., *(2,) * spatial_dims)
    corner = (..., *(0,) * spatial_dims)
    for key in resized:
        # Linear interpolation (align_corners=False) keeps the centre tap and, clamped, the corner taps.
        torch.testing.assert_close(after[key][centre5], before[key][centre3])
        torch.testing.assert_close(after[key][corner], before[key][corner])
    for key in set(after) - set(resized):
        assert torch.equal(after[key], before[key]), key
    # A constant kernel stays constant.
    flat = {k: torch.ones_like(v) if k in resized else v for k, v in before.items()}
    large = smp3d.upkern(large, flat)
    assert all(torch.equal(large.state_dict()[k], torch.ones_like(after[k])) for k in resized)
    with pytest.raises(ValueError, match="only the spatial axes"):
        smp3d.upkern(smp3d.MedNeXt("mednext_s", kernel_size=5, **kwargs), small)  # S and B differ in channels


def test_deep_supervision_anisotropic_forward_backward_and_eval():
    strides = (1, (2, 2, 1), 2, (2, 1, 2), 2)
    model = smp3d.MedNeXt(
        "mednext_s", base_channels=4, blocks=1, decoder_blocks=1, in_channels=1, classes=2, strides=strides,
        kernel_size=5, deep_supervision=True,
    )  # fmt: skip
    assert model.decoder.level_reductions == ((1, 1, 1), (2, 2, 1), (4, 4, 2), (8, 4, 4), (16, 8, 8))
    assert model.decoder.level_channels == (4, 8, 16, 32, 64)
    x = torch.randn(2, 1, 32, 16, 16)
    masks = model(x)
    assert model.deep_supervision_reductions == ((1, 1, 1), (2, 2, 1), (4, 4, 2), (8, 4, 4))
    assert [m.shape for m in masks] == [(2, 2, 32, 16, 16), (2, 2, 16, 8, 16), (2, 2, 8, 4, 8), (2, 2, 4, 4, 4)]
    sum(m.square().mean() for m in masks).backward()
    unused = {name for name, _ in model.deep_supervision_heads[-1].named_parameters(prefix="deep_supervision_heads.3")}
    missing = [n for n, p in model.named_parameters() if p.grad is None and n not in unused]
    assert not missing, missing
    model.eval()
    with torch.no_grad():
        out = model(x)
        assert isinstance(out, torch.Tensor) and out.shape == (2, 2, 32, 16, 16)
        torch.testing.assert_close(model.decoder(model.encoder(x)), model.decoder.forward_levels(model.encoder(x))[0])


def test_stride_on_stage_one_patchifies_and_2d_model_runs():
    model = smp3d.create_model(
        "mednext", encoder_name="mednext_m", base_channels=4, blocks=1, decoder_blocks=1, in_channels=3,
        classes=2, spatial_dims=2, strides=((2, 1), 2, 2, 2, 2),
    )  # fmt: skip
    assert model.encoder.stem.kernel_size == (2, 1) and model.encoder.reductions[1] == (2, 1)
    x = torch.randn(2, 3, 64, 32)
    out = model(x)
    assert out.shape == (2, 2, 64, 32)
    out.mean().backward()


def test_with_other_encoders_and_other_decoders():
    checks.check_meta(smp3d.MedNeXt, (1, 1, 64, 64, 64), encoder_name="resnet18", in_channels=1, classes=2)
    checks.check_meta(
        smp3d.Unet, (1, 1, 32, 32, 16), encoder_name="mednext_s", kernel_size=5, in_channels=1, classes=2,
        strides=(1, 2, 2, 2, (2, 2, 1)),
    )  # fmt: skip


def test_encoder_depth_and_save_load(tmp_path):
    model = smp3d.MedNeXt("mednext_l", encoder_depth=3, kernel_size=5, base_channels=4, in_channels=1, classes=2,
                          deep_supervision=True)  # fmt: skip
    assert len(model.decoder.stages) == 2 and len(model.deep_supervision_heads) == 2
    assert model.decoder.stages[0].blocks[0].conv2.out_channels == 4 * 8  # L's two finest decoder ratios: 4, 3
    assert len(model.decoder.stages[1].blocks) == 3
    model.save_pretrained(tmp_path / "m")
    loaded = smp3d.from_pretrained(tmp_path / "m")
    assert loaded.deep_supervision and loaded.encoder.kernel_size == 5
    x = torch.randn(1, 1, 16, 16, 16)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_compiles_without_graph_breaks():
    """``torch.compile(fullgraph=True)`` of the training forward (encoder, every decoder level, the heads): no
    graph breaks. (The eval forward runs the same blocks through ``decoder.forward``.)"""
    torch.manual_seed(0)
    model = smp3d.MedNeXt(
        "mednext_s", encoder_depth=3, base_channels=4, blocks=1, decoder_blocks=1, in_channels=1, classes=2,
        deep_supervision=True,
    )  # fmt: skip
    assert len(model.deep_supervision_heads) == 2  # the second, on the bottleneck, is not returned
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        masks = compiled(x)
        assert len(masks) == 2
        for got, expected in zip(masks, model(x), strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kernel_size": 4}, "odd positive int"),
        ({"decoder_blocks": (1, 2)}, "decoder_blocks|blocks must be"),
        ({"strides": (1, 2, 2, 2, 4)}, "at most 3"),
        ({"expansion_ratios": 0}, "expansion_ratios"),
        ({"deep_supervision": 1}, "deep_supervision"),
        ({"decoder_kernel_size": 2}, "odd positive int"),
    ],
)
def test_refuses_bad_arguments(kwargs, match):
    with torch.device("meta"), pytest.raises(ValueError, match=match):
        smp3d.MedNeXt("mednext_s", in_channels=1, **kwargs)


def test_activation_checkpointing_gives_the_same_step():
    torch.manual_seed(0)
    model = smp3d.MedNeXt("mednext_s", base_channels=4, blocks=1, decoder_blocks=1, in_channels=1, classes=2)
    x = torch.randn(2, 1, 32, 32, 32)
    model(x).square().mean().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_checkpointing(encoder=True, decoder=True)
    assert smp3d.base.checkpointing.is_checkpointed(model.decoder.stages[0])
    model(x).square().mean().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-5, msg=name)
