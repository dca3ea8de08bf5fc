"""Sliding-window inference: exactness guarantees, MONAI as oracle, N-D support, clear errors."""

import math

import pytest
import torch
from torch import nn

from smp3d.inference import importance_map, sliding_window_inference, window_starts

monai_inferers = pytest.importorskip("monai.inferers")
monai_data_utils = pytest.importorskip("monai.data.utils")


def conv_net(spatial_dims: int, in_channels: int = 2, out_channels: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]
    return nn.Sequential(
        conv(in_channels, 4, 3, padding=1), nn.ReLU(), conv(4, out_channels, 3, padding=1, padding_mode="reflect")
    ).eval()


class Constant(nn.Module):
    def __init__(self, values):
        super().__init__()
        self.register_buffer("values", torch.tensor(values, dtype=torch.float32))

    def forward(self, x):
        shape = (x.shape[0], len(self.values), *x.shape[2:])
        return self.values.view(1, -1, *([1] * (x.ndim - 2))).expand(shape).clone()


class Recorder(nn.Module):
    """Identity that remembers the shape of every batch it sees."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return x.clone()


# ---------------------------------------------------------------- exactness guarantees


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize(
    ("shape", "patch", "overlap"),
    [((2, 1, 13, 9), (6, 12), 0.5), ((1, 2, 11, 5, 7), (4, 8, 3), 0.3), ((1, 1, 10, 10, 10), 4, 0.75)],
    ids=["2d-padded", "3d-padded", "3d-dense"],
)
def test_constant_model_gives_the_constant_everywhere(shape, patch, overlap, blend):
    volume = torch.randn(shape)
    result = sliding_window_inference(Constant([0.3, -2.0, 7.5]), volume, patch, overlap, blend, batch_size=3)
    assert result.shape == (shape[0], 3, *shape[2:])
    expected = torch.tensor([0.3, -2.0, 7.5]).view(1, 3, *([1] * (len(shape) - 2))).expand_as(result)
    torch.testing.assert_close(result, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_no_overlap_equals_per_patch_prediction_exactly(spatial_dims):
    patch = (4, 6, 2)[:spatial_dims]
    volume = torch.randn(2, 2, *(p * n for p, n in zip(patch, (3, 2, 4), strict=False)))
    model = conv_net(spatial_dims)
    result = sliding_window_inference(model, volume, patch, overlap=0.0, blend="constant", batch_size=1)
    expected = torch.empty_like(result)
    with torch.inference_mode():
        for corner in torch.cartesian_prod(
            *[torch.arange(0, s, p) for s, p in zip(volume.shape[2:], patch, strict=True)]
        ):
            region = tuple(slice(int(c), int(c) + p) for c, p in zip(corner.view(-1), patch, strict=True))
            for item in range(volume.shape[0]):
                expected[(item, slice(None), *region)] = model(volume[(slice(item, item + 1), slice(None), *region)])[0]
    assert torch.equal(result, expected)
    # A Gaussian weight cancels out (up to rounding) where windows do not overlap; so does batching.
    gaussian = sliding_window_inference(model, volume, patch, overlap=0.0, blend="gaussian", batch_size=5)
    torch.testing.assert_close(gaussian, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.9, (0.1, 0.6, 0.0)])
def test_identity_model_returns_the_input(overlap, blend):
    volume = torch.randn(2, 3, 12, 7, 9)
    result = sliding_window_inference(nn.Identity(), volume, (5, 8, 4), overlap, blend, batch_size=4)
    torch.testing.assert_close(result, volume, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- MONAI as oracle

MONAI_CASES = [
    # (shape, patch, overlap, blend, sigma_scale, padding_mode)
    ((2, 2, 19, 23), (8, 10), 0.5, "gaussian", 0.125, "constant"),
    ((1, 2, 19, 5), (8, 10), 0.25, "constant", 0.125, "constant"),  # W smaller than the patch
    ((1, 2, 17, 6), (7, 9), 0.6, "gaussian", (0.2, 0.1), "reflect"),
    ((2, 2, 13, 11, 9), (6, 4, 5), 0.5, "gaussian", 0.125, "constant"),
    ((1, 2, 13, 3, 9), (6, 4, 5), 0.3, "gaussian", 0.25, "replicate"),  # H smaller than the patch
    ((1, 2, 5, 4, 9), (8, 8, 4), (0.5, 0.5, 0.7), "constant", 0.125, "circular"),
    ((1, 2, 10, 7, 12), (-1, 4, 6), 0.5, "gaussian", 0.125, "constant"),  # -1: whole axis
]


@pytest.mark.parametrize(("shape", "patch", "overlap", "blend", "sigma_scale", "padding_mode"), MONAI_CASES)
def test_matches_monai(shape, patch, overlap, blend, sigma_scale, padding_mode):
    spatial_dims = len(shape) - 2
    model = conv_net(spatial_dims)
    volume = torch.randn(shape)
    ours = sliding_window_inference(
        model, volume, patch, overlap, blend, batch_size=3, sigma_scale=sigma_scale, padding_mode=padding_mode, cval=0.5
    )
    with torch.no_grad():
        theirs = monai_inferers.sliding_window_inference(
            volume,
            patch,
            3,
            model,
            overlap=overlap,
            mode=blend,
            sigma_scale=sigma_scale,
            padding_mode=padding_mode,
            **({"cval": 0.5} if padding_mode == "constant" else {}),  # MONAI refuses a value for other modes
        )
    assert ours.shape == theirs.shape
    torch.testing.assert_close(
        ours, theirs.as_tensor() if hasattr(theirs, "as_tensor") else theirs, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    ("patch", "sigma_scale"), [((7, 9), 0.125), ((8, 6, 5), 0.125), ((16, 3), (0.3, 0.05)), ((1, 64), 0.125)]
)
def test_importance_map_matches_monai(patch, sigma_scale):
    ours = importance_map(patch, "gaussian", sigma_scale)
    theirs = monai_data_utils.compute_importance_map(patch, mode="gaussian", sigma_scale=sigma_scale)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
    assert float(ours.max()) <= 1.0 and float(ours.min()) >= 1e-3
    assert importance_map(patch, "gaussian", sigma_scale) is ours  # cached
    assert torch.equal(importance_map(patch, "constant"), torch.ones(patch))


@pytest.mark.parametrize(("size", "patch", "step"), [(10, 8, 4), (96, 48, 24), (64, 48, 24), (7, 3, 1), (9, 9, 9)])
def test_window_starts_cover_the_axis_and_end_flush(size, patch, step):
    starts = window_starts(size, patch, step)
    assert starts[0] == 0 and starts[-1] == size - patch
    assert len(starts) == len(set(starts)) == max(math.ceil((size - patch) / step), 0) + 1
    assert all(b - a <= step for a, b in zip(starts, starts[1:], strict=False))
    slices = monai_data_utils.dense_patch_slices((size,), (patch,), (step,))
    assert starts == [s[0].start for s in slices]


# ---------------------------------------------------------------- behaviour


def test_batches_windows_across_batch_items():
    recorder = Recorder()
    volume = torch.randn(3, 1, 8, 8)
    sliding_window_inference(recorder, volume, 4, overlap=0.0, batch_size=5)  # 4 windows x 3 items = 12
    assert recorder.shapes == [(5, 1, 4, 4), (5, 1, 4, 4), (2, 1, 4, 4)]


def test_any_number_of_spatial_axes():
    one_d = torch.randn(2, 2, 30)
    torch.testing.assert_close(sliding_window_inference(nn.Identity(), one_d, 7, 0.5), one_d, rtol=1e-5, atol=1e-6)
    four_d = torch.randn(1, 1, 5, 6, 4, 7)
    result = sliding_window_inference(nn.Identity(), four_d, (3, 4, -1, 5), 0.5, "gaussian", batch_size=8)
    torch.testing.assert_close(result, four_d, rtol=1e-5, atol=1e-6)


def test_plain_callable_and_changed_channel_count():
    model = conv_net(3, out_channels=5)
    volume = torch.randn(1, 2, 9, 10, 6)
    result = sliding_window_inference(lambda x: model(x).softmax(1), volume, (4, 4, 4), 0.5)
    assert result.shape == (1, 5, 9, 10, 6)
    torch.testing.assert_close(result.sum(1), torch.ones(1, 9, 10, 6), rtol=1e-5, atol=1e-5)


def test_bfloat16_autocast_accumulates_in_float32():
    model = conv_net(3)
    volume = torch.randn(1, 2, 10, 9, 8)
    reference = sliding_window_inference(model, volume, 6, 0.5)
    result = sliding_window_inference(model, volume, 6, 0.5, autocast=torch.bfloat16)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, reference, rtol=0.05, atol=0.05)
    bf16_output = sliding_window_inference(lambda x: model(x).bfloat16(), volume, 6, 0.5)
    assert bf16_output.dtype == torch.float32
    torch.testing.assert_close(bf16_output, reference, rtol=0.02, atol=0.02)


def test_float64_volume_accumulates_in_float64():
    volume = torch.randn(1, 1, 9, 7, dtype=torch.float64)
    result = sliding_window_inference(nn.Identity(), volume, 4, 0.5)
    assert result.dtype == torch.float64
    torch.testing.assert_close(result, volume, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_channels_last_gives_the_same_result(spatial_dims):
    model = conv_net(spatial_dims)
    volume = torch.randn(1, 2, *(9, 11, 7)[:spatial_dims])
    reference = sliding_window_inference(model, volume, 5, 0.5)
    fmt = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
    result = sliding_window_inference(model.to(memory_format=fmt), volume, 5, 0.5, channels_last=True)
    torch.testing.assert_close(result, reference, rtol=1e-5, atol=1e-6)


def test_inference_mode_by_default_and_gradients_on_request():
    model = conv_net(2)
    volume = torch.randn(1, 2, 9, 9)
    assert sliding_window_inference(model, volume, 5).is_inference()
    result = sliding_window_inference(model, volume, 5, inference_mode=False)
    result.sum().backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0


def test_explicit_devices_and_progress_bar(capsys):
    volume = torch.randn(1, 1, 9, 9)
    result = sliding_window_inference(nn.Identity(), volume, 4, device="cpu", output_device="cpu", progress=True)
    assert result.device == torch.device("cpu")
    torch.testing.assert_close(result, volume, rtol=1e-5, atol=1e-6)
    assert "sliding window" in capsys.readouterr().err


# ---------------------------------------------------------------- errors


def test_clear_errors():
    volume = torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError, match=r"\(B, C, \*spatial\)"):
        sliding_window_inference(nn.Identity(), torch.randn(8, 8), 4)
    with pytest.raises(TypeError, match="torch.Tensor"):
        sliding_window_inference(nn.Identity(), volume.numpy(), 4)
    with pytest.raises(ValueError, match="2 spatial axes"):
        sliding_window_inference(nn.Identity(), volume, (4, 4, 4))
    with pytest.raises(ValueError, match=r"overlap.*\[0, 1\)"):
        sliding_window_inference(nn.Identity(), volume, 4, overlap=1.0)
    with pytest.raises(ValueError, match=r"overlap.*\[0, 1\)"):
        sliding_window_inference(nn.Identity(), volume, 4, overlap=(0.5, -0.1))
    with pytest.raises(ValueError, match="Unknown blend 'gauss'"):
        sliding_window_inference(nn.Identity(), volume, 4, blend="gauss")
    with pytest.raises(ValueError, match="patch_size"):
        sliding_window_inference(nn.Identity(), volume, (4, 0))
    with pytest.raises(ValueError, match="batch_size"):
        sliding_window_inference(nn.Identity(), volume, 4, batch_size=0)
    with pytest.raises(ValueError, match="padding_mode"):
        sliding_window_inference(nn.Identity(), volume, 4, padding_mode="mirror")
    with pytest.raises(ValueError, match="sigma_scale"):
        sliding_window_inference(nn.Identity(), volume, 4, sigma_scale=0.0)
    with pytest.raises(ValueError, match="channels_last"):
        sliding_window_inference(nn.Identity(), torch.randn(1, 1, 8), 4, channels_last=True)
    with pytest.raises(ValueError, match=r"keep the window's batch and spatial size.*\(4, 1, 4, 4\).*\(4, 1, 2, 2\)"):
        sliding_window_inference(nn.MaxPool2d(2), volume, 4)
    with pytest.raises(TypeError, match="single"):
        sliding_window_inference(lambda x: (x, x), volume, 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_volume_cuda_model_cpu_output():
    model = conv_net(3)
    volume = torch.randn(2, 2, 19, 13, 11)
    reference = sliding_window_inference(model, volume, (8, 8, 8), 0.5, batch_size=3)
    result = sliding_window_inference(model.cuda(), volume, (8, 8, 8), 0.5, batch_size=3, output_device="cpu")
    assert result.device == torch.device("cpu")
    torch.testing.assert_close(result, reference, rtol=1e-4, atol=1e-4)
    on_gpu = sliding_window_inference(model, volume, (8, 8, 8), 0.5, batch_size=3)
    assert on_gpu.is_cuda
    torch.testing.assert_close(on_gpu.cpu(), reference, rtol=1e-4, atol=1e-4)
