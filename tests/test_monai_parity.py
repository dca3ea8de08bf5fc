"""MONAI is the oracle of SwinUNETR and UNETR: its state dicts load strictly (through the documented key maps)
and give its outputs, in 2D and 3D, from a model or from a bare state dict."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNETR as MonaiUNETR
from monai.networks.nets import SwinUNETR as MonaiSwinUNETR

import smp3d
from smp3d.decoders.swinunetr.model import MONAI_KEY_MAP as SWIN_KEY_MAP
from smp3d.decoders.unetr.model import MONAI_KEY_MAP as UNETR_KEY_MAP


# MONAI initialises biases and norms to constants: random values everywhere make a mismatch visible.
def _randomize(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model.eval()


def _compare(monai_model, ours, x):
    with torch.no_grad():
        expected, got = monai_model(x), ours.eval()(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


SWIN_CASES = {
    # spatial_dims, input size, MONAI arguments: 3D pads 32x16x16 tokens to the 7^3 windows and masks shifted ones
    # (MONAI needs sizes divisible by 32, and more than one voxel at 1/32 for its instance norms)
    "3d": (3, (64, 32, 32), {}),
    "3d-v2-mergingv2-window5": (3, (32, 32, 64), {"use_v2": True, "downsample": "mergingv2", "window_size": 5}),
    "2d": (2, (64, 96), {"patch_norm": True}),
}


@pytest.mark.parametrize("case", list(SWIN_CASES))
def test_swinunetr_from_monai_model_equals_monai(case):
    spatial_dims, size, kwargs = SWIN_CASES[case]
    monai_model = _randomize(
        MonaiSwinUNETR(
            in_channels=2, out_channels=3, feature_size=12, depths=(2, 2, 2, 1), spatial_dims=spatial_dims, **kwargs
        )
    )
    ours = smp3d.SwinUNETR.from_monai(monai_model)
    assert ours.encoder.window_size == (kwargs.get("window_size", 7),) * spatial_dims
    _compare(monai_model, ours, torch.randn(2, 2, *size))


def test_swinunetr_from_monai_state_dict_with_overrides():
    monai_model = _randomize(MonaiSwinUNETR(in_channels=1, out_channels=2, feature_size=12, downsample="mergingv2"))
    # the merging order is not in the state dict: MONAI's default ("merging") is assumed unless given
    ours = smp3d.SwinUNETR.from_monai(monai_model.state_dict(), merging="mergingv2")
    x = torch.randn(1, 1, 32, 64, 32)
    _compare(monai_model, ours, x)
    wrong = smp3d.SwinUNETR.from_monai(monai_model.state_dict()).eval()
    with torch.no_grad():
        assert not torch.allclose(wrong(x), ours(x), atol=1e-3)


UNETR_CASES = {
    "3d": (3, (32, 32, 32), {}),
    "3d-qkv-bias-plain-projections": (3, (32, 32, 48), {"conv_block": False, "qkv_bias": True}),
    "2d-basic-blocks-batchnorm": (2, (64, 48), {"res_block": False, "norm_name": "batch"}),
}


@pytest.mark.parametrize("case", list(UNETR_CASES))
def test_unetr_from_monai_model_equals_monai(case):
    spatial_dims, size, kwargs = UNETR_CASES[case]
    monai_model = _randomize(
        MonaiUNETR(
            in_channels=1,
            out_channels=2,
            img_size=size,
            feature_size=8,
            hidden_size=48,
            mlp_dim=96,
            num_heads=4,
            spatial_dims=spatial_dims,
            **kwargs,
        )
    )
    ours = smp3d.UNETR.from_monai(monai_model)
    _compare(monai_model, ours, torch.randn(2, 1, *size))


def test_unetr_from_monai_state_dict_needs_heads():
    monai_model = _randomize(
        MonaiUNETR(in_channels=1, out_channels=2, img_size=32, feature_size=8, hidden_size=64, mlp_dim=96, num_heads=4)
    )
    ours = smp3d.UNETR.from_monai(monai_model.state_dict(), num_heads=4)
    _compare(monai_model, ours, torch.randn(1, 1, 32, 32, 32))


def test_key_maps_cover_every_monai_key():
    swin = MonaiSwinUNETR(in_channels=1, out_channels=2, feature_size=12, use_v2=True).state_dict()
    ours = smp3d.SwinUNETR.from_monai(swin).state_dict()
    assert len(ours) == len(swin)  # one key of ours per key of MONAI's: nothing dropped, nothing invented
    unetr = MonaiUNETR(in_channels=1, out_channels=2, img_size=32, hidden_size=48, mlp_dim=96, num_heads=4)
    ours = smp3d.UNETR.from_monai(unetr).state_dict()
    # MONAI's blocks keep an unused LayerNorm for cross-attention (2 keys per block): the only keys dropped
    assert len(ours) == len(unetr.state_dict()) - 2 * 12
    assert SWIN_KEY_MAP and UNETR_KEY_MAP


def test_from_monai_refuses_what_does_not_fit():
    state = MonaiSwinUNETR(in_channels=1, out_channels=2, feature_size=12).state_dict()
    with pytest.raises(KeyError, match="not part of MONAI's SwinUNETR layout: extra.weight"):
        smp3d.SwinUNETR.from_monai({**state, "extra.weight": torch.zeros(1)})
    broken = dict(state)
    broken["encoder2.layer.conv1.conv.weight"] = torch.zeros(12, 12, 3, 3, 1)
    with pytest.raises(ValueError, match=r"shape mismatches .*decoder.skips.1.conv1.weight"):
        smp3d.SwinUNETR.from_monai(broken)
    with pytest.raises(KeyError, match="swinViT.patch_embed.proj.weight"):
        smp3d.SwinUNETR.from_monai({"out.conv.conv.weight": torch.zeros(2, 12, 1, 1, 1)})
    with pytest.raises(TypeError, match="MONAI model or its state dict"):
        smp3d.UNETR.from_monai("model.pt")
    with pytest.raises(TypeError, match="checkpoint\\['state_dict'\\]"):
        smp3d.UNETR.from_monai({"state_dict": {}, "epoch": 3})


def test_swinunetr_training_gradients_equal_monai():
    monai_model = _randomize(MonaiSwinUNETR(in_channels=1, out_channels=2, feature_size=12, spatial_dims=2)).train()
    ours = smp3d.SwinUNETR.from_monai(monai_model).train()
    x = torch.randn(2, 1, 64, 64)
    monai_model(x).square().mean().backward()
    ours(x).square().mean().backward()
    expected = monai_model.swinViT.layers1[0].blocks[1].attn.relative_position_bias_table.grad  # a shifted block
    torch.testing.assert_close(ours.encoder.stages[0].blocks[1].attn.relative_position_bias_table.grad, expected)
    torch.testing.assert_close(
        ours.decoder.blocks[0].transp_conv.weight.grad, monai_model.decoder5.transp_conv.conv.weight.grad
    )
