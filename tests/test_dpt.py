"""DPT: smp 0.6's DPT in 2D (smp is the oracle), the same model in 3D, with ViTs and other encoders."""

from __future__ import annotations

from fractions import Fraction

import pytest
import segmentation_models_pytorch as smp
import torch
from architecture_checks import check_compiles

import smp3d
from smp3d.base.checkpointing import is_checkpointed
from smp3d.decoders.dpt import dpt_level_reductions

TINY = "tu-vit_tiny_patch16_224"
SMALL = dict(decoder_intermediate_channels=(8, 16, 32, 32), decoder_fusion_channels=16)


def _randomize_batch_norm(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)


@pytest.mark.parametrize(
    ("encoder", "readout", "extra"),
    [
        (TINY, "cat", dict(aux_params={"classes": 2})),
        ("tu-deit_tiny_distilled_patch16_224", "add", dict(encoder_output_indices=(1, 4, 7, 11))),
    ],
    ids=["vit-cat-aux", "deit-distilled-add"],
)
def test_2d_state_dict_and_outputs_equal_smp(encoder, readout, extra):
    """smp's DPT state dict loads strictly into ours and gives the same masks (and labels), also at a size
    other than timm's 224 (smp with dynamic_img_size=True; ours resizes positions always)."""
    reference = smp.DPT(
        encoder, encoder_weights=None, decoder_readout=readout, classes=3, dynamic_img_size=True, **SMALL, **extra
    ).eval()
    _randomize_batch_norm(reference)
    ours = smp3d.DPT(encoder, spatial_dims=2, decoder_readout=readout, classes=3, **SMALL, **extra).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        want, got = reference(x), ours(x)
    for a, b in zip(want if isinstance(want, tuple) else [want], got if isinstance(got, tuple) else [got], strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_3d_vit_forward_backward_per_axis_patch():
    torch.manual_seed(0)
    model = smp3d.DPT(
        TINY, encoder_depth=2, in_channels=1, classes=2, patch_size=(16, 16, 4), position_grid=4,
        decoder_intermediate_channels=(8, 16), decoder_fusion_channels=8,
    )  # fmt: skip
    assert model.decoder.level_reductions == ((4, 4, 1), (8, 8, 2))
    assert model.output_stride == (16, 16, 4)  # both levels upsample the patch grid: the patch is the multiple
    x = torch.randn(2, 1, 32, 64, 16)
    out = model(x)
    assert out.shape == (2, 2, 32, 64, 16)
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.decoder.parameters())
    assert model.encoder.model.pos_embed.grad is not None


def test_3d_with_a_hierarchical_encoder_and_anisotropic_strides():
    with pytest.warns(UserWarning, match="no prefix tokens"):
        model = smp3d.DPT("resnet18", in_channels=1, classes=2, strides=((2, 2, 1), 2, (2, 2, 1), 2), **SMALL)
    targets = model.decoder.level_reductions
    assert targets == ((4, 4, 1), (8, 8, 2), (16, 16, 4), (32, 32, 8))
    assert model.output_stride == (32, 32, 8)
    out = model.eval()(torch.randn(1, 1, 64, 32, 16))
    assert out.shape == (1, 2, 64, 32, 16)


def test_level_targets_for_a_patch_of_14():
    """DINOv2's patch 14: targets 3.5, 7, 14, 28 (x4, x2, x1, /2 of the token grid); smp 0.6 truncates them."""
    targets = dpt_level_reductions(((1, 1), (14, 14), (14, 14), (14, 14), (14, 14)), (1, 2, 3, 4))
    assert [t[0] for t in targets] == [Fraction(7, 2), 7, 14, 28]
    with torch.device("meta"):
        model = smp3d.DPT("tu-vit_small_patch14_dinov2", classes=2, img_size=56, **SMALL)
        out = model(torch.empty(1, 3, 56, 28, 28))
    assert out.shape == (1, 2, 56, 28, 28)
    assert model.output_stride == (28, 28, 28)


@pytest.mark.parametrize(
    ("kwargs", "match", "error"),
    [
        (dict(decoder_readout="concat"), r"decoder_readout must be one of \('cat', 'add', 'ignore'\)", ValueError),
        (dict(decoder_intermediate_channels=(8, 16)), r"has 2 items but the encoder has 4 features", ValueError),
        (dict(decoder_intermediate_channels=(8, 16, 0, 4)), r"sequence of positive ints", ValueError),
        (dict(decoder_fusion_channels=0), r"decoder_fusion_channels must be a positive int", ValueError),
        (dict(encoder_output_indices=(1, 2)), r"output_indices must be 4 block indices", ValueError),
    ],
    ids=["readout", "channels-count", "channels-zero", "fusion", "indices"],
)
def test_refused_configurations(kwargs, match, error):
    with torch.device("meta"), pytest.raises(error, match=match):
        smp3d.DPT(TINY, **{**SMALL, **kwargs})


def test_input_must_be_a_multiple_of_the_deepest_level():
    with torch.device("meta"):
        model = smp3d.DPT(TINY, spatial_dims=2, **SMALL)
        with pytest.raises(ValueError, match="32"):
            model(torch.empty(1, 3, 48, 64))


def test_scripts_with_a_cnn_and_refuses_with_a_vit():
    """TorchScript compiles DPT with a CNN encoder (equal to eager); a ViT encoder refuses with its reason."""
    model = smp3d.DPT(
        "resnet18", encoder_depth=3, decoder_readout="ignore", spatial_dims=2, decoder_intermediate_channels=(4, 8, 8),
        decoder_fusion_channels=4, aux_params={"classes": 2},
    ).eval()  # fmt: skip
    x = torch.randn(1, 3, 64, 32)
    scripted = torch.jit.script(model)
    for got, want in zip(scripted(x), model(x), strict=True):
        torch.testing.assert_close(got, want)
    with torch.device("meta"):
        vit = smp3d.DPT(TINY, spatial_dims=2, **SMALL)
    with pytest.raises(Exception, match="TimmViTEncoder: timm's transformer blocks"):
        torch.jit.script(vit)


@pytest.mark.slow  # tracing timm's blocks takes 20-40 s on 2 cores
def test_compiles_without_graph_breaks():
    """torch.compile(fullgraph=True) of DPT with a 3D ViT (class token, cat readout): no graph breaks."""
    model = smp3d.DPT(
        TINY, encoder_depth=2, in_channels=1, classes=2, patch_size=(16, 16, 8), position_grid=2,
        decoder_intermediate_channels=(8, 16), decoder_fusion_channels=8, encoder_output_indices=(0, 1),
    )  # fmt: skip
    check_compiles(model, torch.randn(1, 1, 32, 32, 16))


def test_create_model_and_save_load(tmp_path):
    with torch.device("meta"):
        model = smp3d.create_model("dpt", encoder_name=TINY, encoder_depth=2, decoder_intermediate_channels=(8, 16))
    assert isinstance(model, smp3d.DPT)
    model = smp3d.DPT(
        "resnet18", encoder_depth=3, decoder_readout="ignore", decoder_intermediate_channels=(4, 8, 8),
        decoder_fusion_channels=4,
    )  # fmt: skip
    model.save_pretrained(tmp_path)
    loaded = smp3d.from_pretrained(tmp_path).eval()
    x = torch.randn(1, 3, 32, 32, 32)
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_encoder_checkpointing_gives_the_same_gradients():
    """set_checkpointing(encoder=True) checkpoints the ViT's blocks (stage_modules): same loss and gradients."""
    torch.manual_seed(0)
    model = smp3d.DPT(
        TINY, encoder_depth=2, in_channels=1, classes=2, patch_size=(16, 16, 8), position_grid=2,
        encoder_output_indices=(0, 2), decoder_intermediate_channels=4, decoder_fusion_channels=4,
    )  # fmt: skip
    x = torch.randn(2, 1, 32, 32, 16)
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        model.set_checkpointing(encoder=enabled)
        torch.manual_seed(1)  # the head's dropout draws the same mask in both runs
        model(x).square().mean().backward()
        grads.append([p.grad.clone() for p in model.encoder.parameters() if p.grad is not None])
    assert is_checkpointed(model.encoder.model.blocks[2]) and is_checkpointed(model.encoder.model.patch_embed)
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)
