"""2D -> 3D weight inflation (smp3d.encoders.inflate) and its numerical proof (weights_tools.verify)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import smp3d
from smp3d.encoders import adapt_input_weight, inflate_kernel, inflate_state_dict
from weights_tools import circular_depth_padding, depth_stride_one, inflation_error, inflation_report

# ---------------------------------------------------------------- inflate_state_dict


def _pair(in_2d: int = 3, in_3d: int = 3) -> tuple[nn.Module, nn.Module]:
    """A tiny conv-bn-conv net in 2D and 3D with identical keys."""

    def net(conv: type[nn.Module], bn: type[nn.Module], cin: int) -> nn.Module:
        return nn.Sequential(conv(cin, 4, 3, padding=1), bn(4), conv(4, 2, 1))

    torch.manual_seed(0)
    return net(nn.Conv2d, nn.BatchNorm2d, in_2d), net(nn.Conv3d, nn.BatchNorm3d, in_3d)


@pytest.mark.parametrize("kd", [1, 3, 5])
def test_i3d_repeats_and_divides(kd: int) -> None:
    w = torch.randn(2, 3, 3, 3)
    out = inflate_state_dict({"w": w}, {"w": torch.empty(2, 3, 3, 3, kd)})["w"]
    assert out.shape == (2, 3, 3, 3, kd)
    for i in range(kd):
        torch.testing.assert_close(out[..., i], w / kd, rtol=0, atol=0)
    torch.testing.assert_close(out.sum(-1), w)


@pytest.mark.parametrize("kd", [1, 3, 4])
def test_center_puts_kernel_in_centre_slice(kd: int) -> None:
    w = torch.randn(2, 3, 3, 3)
    out = inflate_state_dict({"w": w}, {"w": torch.empty(2, 3, 3, 3, kd)}, mode="center")["w"]
    torch.testing.assert_close(out[..., kd // 2], w, rtol=0, atol=0)
    assert out.abs().sum() == w.abs().sum()  # zeros everywhere else


def test_equal_shapes_copied_without_aliasing() -> None:
    b = torch.randn(4)
    out = inflate_state_dict({"b": b}, {"b": torch.zeros(4)})["b"]
    assert torch.equal(out, b) and out.data_ptr() != b.data_ptr()
    out += 1
    assert not torch.equal(out, b)


def test_module_target_loads_strictly() -> None:
    net2, net3 = _pair()
    state = inflate_state_dict(net2.state_dict(), net3)
    assert list(state) == list(net3.state_dict())
    net3.load_state_dict(state, strict=True)
    torch.testing.assert_close(net3[0].weight.sum(-1), net2[0].weight)
    torch.testing.assert_close(net3[1].running_var, net2[1].running_var)
    assert net3[1].num_batches_tracked.dtype == torch.int64


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_follow_the_target(dtype: torch.dtype) -> None:
    net2, net3 = _pair()
    target = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in net3.state_dict().items()}
    state = inflate_state_dict(net2.state_dict(), target)
    assert {k: v.dtype for k, v in state.items()} == {k: v.dtype for k, v in target.items()}
    torch.testing.assert_close(state["0.weight"].float(), inflate_kernel(net2[0].weight.detach(), 3), **_tol(dtype))


def _tol(dtype: torch.dtype) -> dict[str, float]:
    return {"rtol": 1e-2, "atol": 1e-2} if dtype in (torch.float16, torch.bfloat16) else {"rtol": 1e-6, "atol": 1e-7}


@pytest.mark.parametrize("in_channels", [1, 5])
@pytest.mark.parametrize("mode", ["i3d", "center"])
def test_first_conv_adapted_after_inflation(in_channels: int, mode: str) -> None:
    net2, net3 = _pair(in_3d=in_channels)
    state = inflate_state_dict(net2.state_dict(), net3, mode=mode)
    expected = adapt_input_weight(inflate_kernel(net2[0].weight.detach(), 3, mode), in_channels)
    assert state["0.weight"].shape == (4, in_channels, 3, 3, 3)
    torch.testing.assert_close(state["0.weight"], expected, rtol=0, atol=0)
    torch.testing.assert_close(state["2.weight"], inflate_kernel(net2[2].weight.detach(), 1, mode))


@pytest.mark.parametrize("in_channels", [1, 5])
def test_encoder_first_conv_adapted(in_channels: int) -> None:
    torch.manual_seed(0)
    e2 = smp3d.get_encoder("resnet18", depth=2, spatial_dims=2)
    e3 = smp3d.get_encoder("resnet18", depth=2, spatial_dims=3, in_channels=in_channels)
    e3.load_state_dict(inflate_state_dict(e2.state_dict(), e3), strict=True)
    expected = adapt_input_weight(inflate_kernel(e2.conv1.weight.detach(), 7), in_channels)
    torch.testing.assert_close(e3.conv1.weight.detach(), expected, rtol=0, atol=0)


def test_only_the_first_conv_may_differ_in_input_channels() -> None:
    source = {"a": torch.randn(4, 3, 3, 3), "b": torch.randn(2, 4, 1, 1)}
    target = {"a": torch.empty(4, 1, 3, 3, 3), "b": torch.empty(2, 8, 1, 1, 1)}
    with pytest.raises(ValueError, match=r"b: target \(2, 8, 1, 1, 1\), source \(2, 4, 1, 1\)"):
        inflate_state_dict(source, target)
    # input_key pins the adapted key
    with pytest.raises(ValueError, match=r"a: target \(4, 1, 3, 3, 3\), source \(4, 3, 3, 3\)"):
        inflate_state_dict(source, {"a": target["a"], "b": torch.empty(2, 4, 1, 1, 1)}, input_key="b")


def test_encoder_target_adapts_only_its_input_channels() -> None:
    # A module target names its input channels: a middle conv with another channel count is refused.
    net2, net3 = _pair()
    net3.out_channels = (3, 4)  # make it look like an encoder with 3 input channels
    source = dict(net2.state_dict())
    source["2.weight"] = torch.randn(2, 2, 1, 1)
    with pytest.raises(ValueError, match=r"2\.weight: target \(2, 4, 1, 1, 1\), source \(2, 2, 1, 1\)"):
        inflate_state_dict(source, net3)
    del net3.out_channels  # a bare state dict has no such knowledge: the first mismatch is adapted
    assert inflate_state_dict(source, net3.state_dict())["2.weight"].shape == (2, 4, 1, 1, 1)


def test_refusals_list_every_problem() -> None:
    net2, net3 = _pair()
    source = dict(net2.state_dict())
    source["1.weight"] = torch.randn(5)
    source["extra.weight"] = torch.randn(7, 7)
    del source["2.bias"]
    with pytest.raises(ValueError) as info:
        inflate_state_dict(source, net3)
    msg = str(info.value)
    assert "nothing was inflated" in msg
    assert "1.weight: target (4,), source (5,)" in msg
    assert "2.bias (2,)" in msg and "Missing" in msg
    assert "extra.weight (7, 7)" in msg and "Unexpected" in msg


def test_non_kernel_axes_are_not_inflated() -> None:
    # Only tensors with at least 3 axes (kernels) gain a trailing axis.
    with pytest.raises(ValueError, match=r"v: target \(4, 3\), source \(4,\)"):
        inflate_state_dict({"v": torch.randn(4)}, {"v": torch.empty(4, 3)})
    with pytest.raises(ValueError, match=r"w: target \(2, 3, 3, 3, 3\), source \(2, 3, 5, 5\)"):
        inflate_state_dict({"w": torch.randn(2, 3, 5, 5)}, {"w": torch.empty(2, 3, 3, 3, 3)})


def test_unknown_mode() -> None:
    with pytest.raises(ValueError, match="Unknown inflation mode 'mean'"):
        inflate_state_dict({}, {}, mode="mean")


def test_exported() -> None:
    import weights_tools

    assert weights_tools.inflate_state_dict is smp3d.encoders.inflate_state_dict


# ---------------------------------------------------------------- the proof


def _randomize_bn(module: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
    return module.eval()


def _encoders(name: str, in_channels: int = 3, depth: int = 5) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    e2 = _randomize_bn(smp3d.get_encoder(name, depth=depth, spatial_dims=2), seed=1)
    e3 = smp3d.get_encoder(name, in_channels=in_channels, depth=depth, spatial_dims=3, strides=depth_stride_one(depth))
    return e2, e3


FAMILIES = ["resnet18", "efficientnet-b0", "densenet121"]


@pytest.mark.parametrize("mode", ["i3d", "center"])
@pytest.mark.parametrize("name", FAMILIES)
def test_inflated_features_equal_2d_at_every_slice(name: str, mode: str) -> None:
    e2, e3 = _encoders(name)
    report = inflation_report(e2, e3, depth=3, mode=mode, size=32)
    assert len(report.per_feature) == 6
    assert report.max_rel < 1e-4, report
    # the check used a copy: encoder_3d itself is untouched
    assert not torch.equal(next(e3.parameters()).sum(-1), next(e2.parameters()))


def test_proof_on_loaded_weights_and_adapted_channels() -> None:
    e2, e3 = _encoders("resnet18", in_channels=1, depth=3)
    e3.load_state_dict(inflate_state_dict(e2.state_dict(), e3), strict=True)
    e3.train()
    assert inflation_error(e2, e3, depth=5, size=32) < 1e-4  # mode=None: e3's own weights
    assert e3.training and not e2.training  # modes restored
    # in float64, with the inflation itself done in float64, only float64 rounding is left
    assert inflation_report(e2, e3, depth=3, size=32, mode="i3d", dtype=torch.float64).max_rel < 1e-12
    assert next(e3.parameters()).dtype == torch.float32


def test_negative_control_wrong_inflation_fails() -> None:
    e2, e3 = _encoders("resnet18", depth=3)
    state = inflate_state_dict(e2.state_dict(), e3)
    wrong = {k: v * v.shape[-1] if v.ndim == 5 else v for k, v in state.items()}  # not divided by kd
    e3.load_state_dict(wrong, strict=True)
    assert inflation_report(e2, e3, depth=4, size=32).max_rel > 0.1
    # and the correct weights pass with the same encoder
    e3.load_state_dict(state, strict=True)
    assert inflation_report(e2, e3, depth=4, size=32).max_rel < 1e-4


def test_zero_depth_padding_breaks_equality_only_at_borders() -> None:
    # Without the circular padding the borders differ, which is why the check pads circularly.
    e2, e3 = _encoders("resnet18", depth=1)
    e3.load_state_dict(inflate_state_dict(e2.state_dict(), e3), strict=True)
    e2.eval(), e3.eval()
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    volume = image.unsqueeze(-1).expand(1, 3, 32, 32, 9).contiguous()
    with torch.no_grad():
        f2 = e2(image)[1]
        plain = e3(volume)[1]
        with circular_depth_padding(e3):
            wrapped = e3(volume)[1]
        again = e3(volume)[1]
    torch.testing.assert_close(again, plain, rtol=0, atol=0)  # hooks removed on exit
    torch.testing.assert_close(wrapped, f2.unsqueeze(-1).expand_as(wrapped), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(plain[..., 3:-3], wrapped[..., 3:-3], rtol=1e-4, atol=1e-5)  # conv1: kd 7
    assert (plain[..., 0] - wrapped[..., 0]).abs().max() > 1e-3


def test_depth_strides_are_refused() -> None:
    torch.manual_seed(0)
    e2 = smp3d.get_encoder("resnet18", depth=1, spatial_dims=2)
    e3 = smp3d.get_encoder("resnet18", depth=1, spatial_dims=3)
    with pytest.raises(ValueError, match="stride 1 along depth"):
        inflation_report(e2, e3, mode="i3d", size=32)
    conv = nn.Conv3d(1, 1, 3, stride=2, padding=1)
    with pytest.raises(ValueError, match="stride 2 along depth"), circular_depth_padding(conv):
        pass
