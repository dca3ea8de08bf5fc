"""smp3d.augment: labels move with the image exactly, p=0 is the identity, seeds reproduce, nothing
reads the device back, and patch sampling (class-first oversampling, reach past borders)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from smp3d.augment import (
    Augment,
    Brightness,
    Contrast,
    Gamma,
    GaussianBlur,
    GaussianNoise,
    LowResolution,
    SpatialParameters,
    SpatialTransform,
    coarse_axis,
    preset,
)
from smp3d.augment.spatial import _theta, affine_grid
from smp3d.training import PatchDataset, TrainConfig, TrainingError, Volume
from smp3d.training.augmentation import build_augment
from smp3d.training.patches import border_value, read_window

SHAPES = {2: (20, 24), 3: (12, 14, 16)}


def _all_on(augment: Augment) -> Augment:
    """Every transform of ``augment`` applied to every sample."""
    if augment.spatial is not None:
        augment.spatial.p_rotation = augment.spatial.p_scaling = 1.0
    for transform in augment.intensity:
        transform.p = 1.0
        if hasattr(transform, "p_per_channel"):
            transform.p_per_channel = 1.0
    return augment


def _blobs(shape: tuple[int, ...], batch: int = 3, seed: int = 0) -> torch.Tensor:
    """(B, 1, *shape) smooth images: a sum of Gaussian blobs in [0, ~1]."""
    g = torch.Generator().manual_seed(seed)
    axes = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij")
    images = torch.zeros(batch, 1, *shape)
    for b in range(batch):
        for _ in range(3):
            centre = [float(torch.rand((), generator=g)) * s for s in shape]
            dist = sum((a - c) ** 2 for a, c in zip(axes, centre, strict=True))
            images[b, 0] += torch.exp(-dist / (2 * (min(shape) / 5) ** 2))
    return images


@pytest.mark.parametrize("dims", [2, 3])
def test_labels_move_with_the_image_exactly(dims):
    # With nearest resampling of both, the image that equals the label must still equal it.
    shape = SHAPES[dims]
    spatial = SpatialTransform(dims, p_rotation=1.0, rotation=45.0, p_scaling=1.0, image_mode="nearest")
    patch = tuple(s - 4 for s in shape)
    augment = Augment(spatial, patch=patch, seed=0)
    label = torch.randint(0, 4, (4, *shape))
    image, moved = augment(label[:, None].float(), label)
    assert image.shape == (4, 1, *patch) and moved.shape == (4, *patch) and moved.dtype == label.dtype
    assert torch.equal(image[:, 0].long(), moved)
    assert not torch.equal(moved, label[(slice(None), *(slice(2, s - 2) for s in shape))])


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("label_mode", ["nearest", "linear"])
def test_threshold_of_the_image_is_the_label_after_every_spatial_transform(dims, label_mode):
    shape = SHAPES[dims]
    image = _blobs(shape)
    label = (image[:, 0] > 0.5).long()
    augment = _all_on(preset("nnunet", dims, shape, label_mode=label_mode, classes=2, seed=1))
    augment.intensity = []  # spatial only: intensity changes would move the threshold
    out, moved = augment(image, label)
    agree = ((out[:, 0] > 0.5).long() == moved).float().mean()
    assert agree > 0.97, f"threshold of the image and the label agree on only {agree:.3f} of the voxels"
    assert moved.sum() > 0


@pytest.mark.parametrize(
    "transform",
    [
        GaussianNoise(p=1.0),
        GaussianBlur(p=1.0, p_per_channel=1.0),
        Brightness(p=1.0),
        Contrast(p=1.0),
        LowResolution(p=1.0, p_per_channel=1.0),
        Gamma(p=1.0),
        Gamma(p=1.0, invert=True),
    ],
    ids=lambda t: type(t).__name__ + ("_inverted" if getattr(t, "invert", False) else ""),
)
@pytest.mark.parametrize("dims", [2, 3])
def test_intensity_transforms_leave_the_label_and_change_the_image(transform, dims):
    image = _blobs(SHAPES[dims], batch=2) + 0.1 * torch.randn(2, 1, *SHAPES[dims])
    label = (image[:, 0] > 0.5).long()
    before, label_before = image.clone(), label.clone()
    out, moved = Augment(intensity=[transform], seed=3)(image, label)
    assert torch.equal(image, before) and torch.equal(label, label_before)  # inputs untouched
    assert torch.equal(moved, label_before)
    assert out.shape == image.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, before)


@pytest.mark.parametrize("dims", [2, 3])
def test_probability_zero_is_the_identity(dims):
    shape = SHAPES[dims]
    augment = preset("nnunet", dims, shape, seed=0)
    augment.spatial.p_rotation = augment.spatial.p_scaling = augment.spatial.p_mirror = 0.0
    for transform in augment.intensity:
        transform.p = 0.0
    assert augment.is_identity
    image, label = torch.randn(3, 2, *shape), torch.randint(0, 3, (3, *shape))
    out, moved = augment(image, label)
    assert torch.equal(out, image) and torch.equal(moved, label)
    out, moved = preset("none", dims, shape)(image, label)
    assert torch.equal(out, image) and torch.equal(moved, label)


def test_same_seed_same_batch_and_samples_drawn_independently():
    shape = SHAPES[3]
    image = _blobs(shape, batch=1).expand(4, -1, -1, -1, -1).contiguous()
    label = (image[:, 0] > 0.5).long()
    first = _all_on(preset("nnunet", 3, shape, seed=7))(image, label)
    second = _all_on(preset("nnunet", 3, shape, seed=7))(image, label)
    other = _all_on(preset("nnunet", 3, shape, seed=8))(image, label)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])
    # Four copies of one sample come out as four different samples.
    out = first[0]
    assert all(not torch.allclose(out[i], out[j]) for i in range(4) for j in range(i + 1, 4))
    # Without a seed, torch's global generator governs the draws.
    augment = _all_on(preset("nnunet", 3, shape))
    torch.manual_seed(5)
    a = augment(image, label)[0]
    torch.manual_seed(5)
    assert torch.equal(a, augment(image, label)[0])


@pytest.mark.parametrize("dims", [2, 3])
def test_no_value_is_read_back_from_the_device(dims):
    # Meta tensors carry no values: any host read of image or label data (.item(), .tolist(),
    # bool(), data-dependent shapes) raises. Every transform runs on every sample here.
    shape = SHAPES[dims]
    for label_mode in ("nearest", "linear"):
        augment = _all_on(preset("nnunet", dims, shape, label_mode=label_mode, classes=3, seed=0))
        window = augment.input_shape()
        image = torch.empty(2, 2, *window, device="meta")
        label = torch.empty(2, *window, dtype=torch.long, device="meta")
        out, moved = augment(image, label)
        assert out.shape == (2, 2, *shape) and moved.shape == (2, *shape) and out.device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_no_device_sync_on_cuda():
    augment = _all_on(preset("nnunet", 3, (32, 32, 32), seed=0))
    image = torch.randn(2, 1, *augment.input_shape(), device="cuda")
    label = (image[:, 0] > 0).long()
    augment(image, label)  # warm-up (lazy CUDA initialisation may synchronise)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        augment(image, label)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_geometry_rotation_mirror_and_scale():
    # A quarter turn equals rot90; a mirror through the resampling path equals flip; a scale of 2
    # doubles the slope of a ramp.
    spatial = SpatialTransform(2)
    image = torch.randn(1, 1, 6, 6)
    quarter = torch.tensor([[[0.0, -1.0], [1.0, 0.0]]], dtype=torch.float64)
    out, _ = spatial.apply(image, None, (6, 6), SpatialParameters(quarter, [0], torch.zeros(1, 2, dtype=torch.bool)))
    torch.testing.assert_close(out, torch.rot90(image, 3, (2, 3)), atol=1e-5, rtol=0)
    spatial = SpatialTransform(3)
    image = torch.randn(1, 1, 5, 6, 7)
    mirror = torch.diag(torch.tensor([-1.0, 1.0, -1.0], dtype=torch.float64))[None]
    out, _ = spatial.apply(image, None, (5, 6, 7), SpatialParameters(mirror, [0], torch.zeros(1, 3, dtype=torch.bool)))
    torch.testing.assert_close(out, image.flip([2, 4]), atol=1e-5, rtol=0)
    ramp = torch.arange(16, dtype=torch.float32).view(1, 1, 1, 16).expand(1, 1, 16, 16).contiguous()
    double = torch.diag(torch.tensor([2.0, 2.0], dtype=torch.float64))[None]
    params = SpatialParameters(double, [0], torch.zeros(1, 2, dtype=torch.bool))
    out, _ = SpatialTransform(2).apply(ramp, None, (4, 4), params)
    torch.testing.assert_close(out[0, 0, 0].diff(), torch.full((3,), 2.0))


@pytest.mark.parametrize("shape", [(5, 6, 7), (9, 4)])
def test_affine_grid_equals_torchs(shape):
    theta = torch.randn(3, len(shape), len(shape) + 1, generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.affine_grid(theta, [3, 1, *shape], align_corners=False)
    torch.testing.assert_close(affine_grid(theta, shape), expected, atol=1e-6, rtol=0)


def test_linear_labels_are_the_argmax_of_resampled_one_hot_channels():
    spatial = SpatialTransform(3, p_rotation=1.0, p_scaling=1.0, label_mode="linear", classes=4)
    label = torch.nn.functional.interpolate(torch.rand(2, 1, 4, 4, 4), size=(12, 12, 12), mode="nearest")
    label = (label[:, 0] * 4).long().clamp(max=3)
    params = spatial.draw(2, torch.Generator().manual_seed(1))
    _, moved = spatial.apply(torch.zeros(2, 1, 12, 12, 12), label, (10, 10, 10), params)
    # The reference: every class's one-hot channel resampled (background padded with 1, so the
    # outside is background), arg-max taken.
    grid = affine_grid(_theta(params.matrices, (12, 12, 12), (10, 10, 10), (1, 1, 1)), (10, 10, 10))
    one_hot = torch.nn.functional.one_hot(label, 4).movedim(-1, 1).float()
    one_hot[:, 0] -= 1
    scores = torch.nn.functional.grid_sample(one_hot, grid, align_corners=False)
    scores[:, 0] += 1
    expected = scores.argmax(1)
    assert (moved == expected).float().mean() > 0.999 and moved.dtype == label.dtype


def test_mirror_only_samples_are_flipped_without_resampling():
    spatial = SpatialTransform(3, p_rotation=0.0, p_scaling=0.0, mirror_axes=(0, 2))
    image = torch.randn(6, 1, 4, 5, 6)
    label = torch.randint(0, 3, (6, 4, 5, 6))
    params = spatial.draw(6, torch.Generator().manual_seed(0))
    assert params.resample == []
    out, moved = spatial.apply(image, label, (4, 5, 6), params)
    for i in range(6):
        axes = [a for a in range(3) if params.mirror[i, a]]
        assert 1 not in axes
        assert torch.equal(out[i], image[i].flip([a + 1 for a in axes]))
        assert torch.equal(moved[i], label[i].flip(axes))


def test_intensity_semantics():
    g = torch.Generator().manual_seed(0)
    image = _blobs((16, 16, 16), batch=4) + 0.05 * torch.randn(4, 1, 16, 16, 16, generator=g)
    dims = (2, 3, 4)
    out = Augment(intensity=[Brightness(p=1.0, multiplier=(0.5, 2.0))], seed=0)(image)[0]
    ratio = out.flatten(1).sum(1) / image.flatten(1).sum(1)
    assert ((ratio >= 0.5 - 1e-5) & (ratio <= 2.0 + 1e-5)).all() and (ratio < 1).any() and (ratio > 1).any()
    out = Augment(intensity=[Contrast(p=1.0)], seed=0)(image)[0]
    assert (out.amin(dims) >= image.amin(dims) - 1e-6).all() and (out.amax(dims) <= image.amax(dims) + 1e-6).all()
    out = Augment(intensity=[Gamma(p=1.0)], seed=0)(image)[0]
    torch.testing.assert_close(out.mean(dims), image.mean(dims), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(dims), image.std(dims), atol=1e-4, rtol=1e-4)
    flat = torch.zeros(4, 1, 16, 16, 16)
    noise = Augment(intensity=[GaussianNoise(p=1.0, std=(0.2, 0.3))], seed=0)(flat)[0]
    assert ((noise.std(dims) > 0.18) & (noise.std(dims) < 0.32)).all()
    constant = torch.full((2, 1, 9, 9), 3.0)
    for transform in (GaussianBlur(p=1.0, p_per_channel=1.0), LowResolution(p=1.0, p_per_channel=1.0)):
        torch.testing.assert_close(Augment(intensity=[transform], seed=0)(constant)[0], constant)
    blurred = Augment(intensity=[GaussianBlur(p=1.0, p_per_channel=1.0)], seed=0)(image)[0]
    assert (blurred.var(dims) < image.var(dims)).all()


def test_input_shape_holds_the_turned_patch():
    spatial = SpatialTransform(3, rotation=30.0)
    window = spatial.input_shape((32, 32, 16))
    assert all(w >= p and (w - p) % 2 == 0 for w, p in zip(window, (32, 32, 16), strict=True))
    # Every corner of the patch turned by random angles in range lands inside the window.
    params = SpatialTransform(3, p_rotation=1.0, p_scaling=0.0, p_mirror=0.0).draw(64, torch.Generator().manual_seed(0))
    corners = torch.tensor([[x, y, z] for x in (-16, 16) for y in (-16, 16) for z in (-8, 8)], dtype=torch.float64)
    reach = (params.matrices @ corners.T).abs().amax(dim=(0, 2))
    assert all(2 * r <= w + 1e-6 for r, w in zip(reach.tolist(), window, strict=True))
    assert SpatialTransform(3, p_rotation=0.0).input_shape((8, 8, 8)) == (8, 8, 8)
    in_plane = SpatialTransform(3, rotation=(180.0, 0.0, 0.0)).input_shape((8, 32, 32))
    assert in_plane[0] == 8 and in_plane[1] >= 32 * math.sqrt(2) - 1


def test_presets_follow_nnunet():
    assert coarse_axis((64, 64, 64)) is None and coarse_axis((16, 128, 128)) == 0
    assert coarse_axis((64, 64, 64), spacing=(1.0, 1.0, 4.0)) == 2 and coarse_axis((64, 64, 64), (1, 1, 2.5)) is None
    iso = preset("nnunet", 3, (64, 64, 64))
    assert iso.spatial.rotation == (30.0, 30.0, 30.0) and iso.spatial.scale_axes == (0, 1, 2)
    thick = preset("nnunet", 3, (64, 64, 64), spacing=(1.0, 1.0, 5.0))
    assert thick.spatial.rotation == (0.0, 0.0, 180.0) and thick.spatial.scale_axes == (0, 1)
    assert [t.axes for t in thick.intensity if isinstance(t, LowResolution)] == [(0, 1)]
    assert preset("nnunet", 2, (64, 64)).spatial.rotation == (180.0,)
    assert preset("nnunet", 2, (32, 96)).spatial.rotation == (15.0,)
    probabilities = [(type(t).__name__, t.p) for t in iso.intensity]
    assert probabilities == [
        ("GaussianNoise", 0.1),
        ("GaussianBlur", 0.2),
        ("Brightness", 0.15),
        ("Contrast", 0.15),
        ("LowResolution", 0.25),
        ("Gamma", 0.1),
        ("Gamma", 0.3),
    ]
    assert (iso.spatial.p_rotation, iso.spatial.p_scaling, iso.spatial.p_mirror) == (0.2, 0.2, 0.5)
    flips = preset("flips", 3, (8, 8, 8), mirror_axes=(0,))
    assert not flips.spatial.resamples and flips.spatial.mirror_axes == (0,) and flips.intensity == []


def test_clear_errors():
    with pytest.raises(ValueError, match="unknown augmentation preset 'nnu'"):
        preset("nnu", 3, (8, 8, 8))
    with pytest.raises(ValueError, match="p_rotation must be a probability"):
        SpatialTransform(3, p_rotation=2)
    with pytest.raises(ValueError, match="needs classes"):
        SpatialTransform(3, label_mode="linear")
    with pytest.raises(ValueError, match="mirror_axes \\[3\\] out of range"):
        SpatialTransform(3, mirror_axes=(3,))
    augment = preset("nnunet", 3, (8, 8, 8))
    with pytest.raises(ValueError, match="label \\(2, 8, 8\\) does not match image"):
        augment(torch.zeros(2, 1, 8, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="floating-point"):
        augment(torch.zeros(2, 1, 8, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="does not fit the batch's spatial size"):
        augment(torch.zeros(2, 1, 6, 8, 8))
    with pytest.raises(TrainingError, match="flip axes \\[3\\] out of range"):
        build_augment(TrainConfig(patch=(8, 8, 8), flip=(3,)))
    with pytest.raises(TrainingError, match="unknown augmentation 'rot'"):
        build_augment(TrainConfig(patch=(8, 8, 8), augment="rot"))


def test_build_augment_from_the_config():
    augment = build_augment(TrainConfig(patch=(16, 16), spatial_dims=2, flip=(1,)))
    assert augment.patch == (16, 16) and augment.spatial.mirror_axes == (1,) and len(augment.intensity) == 7
    assert build_augment(TrainConfig(patch=(8, 8, 8), augment="none")).is_identity
    thick = build_augment(TrainConfig(patch=(32, 32, 32), target_spacing=(0.8, 0.8, 4.0)))
    assert thick.spatial.rotation == (0.0, 0.0, 180.0)  # the planned spacing decides: in-plane only
    assert not build_augment(TrainConfig(patch=(8, 8, 8), augment="flips", flip=False)).spatial.mirror_axes


# -- patch sampling ------------------------------------------------------------------------------
def test_foreground_draws_a_class_first_then_a_voxel():
    label = np.zeros((40, 40, 40), dtype=np.int64)
    label[:20] = 1  # a big class
    label[30:32, 30:32, 30:32] = 2  # 8 voxels
    volume = Volume("v", np.zeros((1, 40, 40, 40), dtype=np.float32), label)
    dataset = PatchDataset([volume], (4, 4, 4), samples=400, foreground=1.0, flip=False, reach=0, seed=0)
    centres = [tuple(c + 2 for c in corner) for _, corner in dataset.windows]
    small = sum(label[c] == 2 for c in centres) / len(centres)
    big = sum(label[c] == 1 for c in centres) / len(centres)
    assert 0.4 < small < 0.6 and 0.4 < big < 0.6  # each class half the time, whatever its size
    rare = PatchDataset([volume], (4, 4, 4), samples=400, foreground=0.0, flip=False, reach=0, seed=0)
    assert sum(label[tuple(c + 2 for c in corner)] == 2 for _, corner in rare.windows) < 5


def test_random_patches_reach_past_the_borders_and_read_the_background_there():
    image = np.ones((1, 16, 16), dtype=np.float32)
    image[:, 1:-1, 1:-1] = 5.0  # the outermost voxels (the background) read 1, the inside 5
    label = np.ones((16, 16), dtype=np.int64)
    volume = Volume("v", image, label)
    dataset = PatchDataset([volume], (8, 8), samples=200, foreground=0.0, flip=False, reach=3, seed=1)
    corners = np.array([corner for _, corner in dataset.windows])
    assert corners.min() == -3 and corners.max() == 16 - 8 + 3
    i = int(np.argmin(corners[:, 0]))
    x, y = dataset[i]
    assert x.shape == (1, 8, 8) and y.shape == (8, 8)
    assert (x[0, :3] == 1).all() and (y[:3] == 0).all() and (x[0, 3] == 1).all() and (y[3:] == 1).all()
    assert (x[0, 4:, 1:-1] == 5).all()
    assert PatchDataset([volume], (8, 8), samples=10).reach == (1, 1)  # default: an eighth of the patch


def test_window_is_read_around_the_patch():
    image = np.arange(20 * 20, dtype=np.float32).reshape(1, 20, 20)
    volume = Volume("v", image, np.zeros((20, 20), dtype=np.int64))
    grid = PatchDataset([volume], (8, 8), (8, 8), flip=False, window=(12, 10))
    x, _ = grid[0]  # the patch at (0, 0) read with 2 and 1 voxels of context on each side
    assert x.shape == (1, 12, 10)
    torch.testing.assert_close(x[0, 2:10, 1:9], torch.from_numpy(image[0, :8, :8]))
    background = border_value(torch.from_numpy(image))  # outside the volume reads its border's median
    assert (x[0, :2] == background).all() and (x[0, :, 0] == background).all()
    tensor = torch.arange(24.0).view(2, 3, 4)
    assert torch.equal(read_window(tensor, (1, 1), (2, 3)), tensor[:, 1:3, 1:4])
    assert read_window(tensor, (5, 5), (2, 2)).abs().sum() == 0
    fill = torch.tensor([-1.0, 7.0])
    padded = read_window(tensor, (-1, 2), (2, 3), fill)  # one row above, one column past the end
    assert torch.equal(padded[:, 1, :2], tensor[:, 0, 2:]) and torch.equal(padded[:, 0, 0], fill)
    assert torch.equal(padded[:, 1, 2], fill)
    torch.testing.assert_close(border_value(torch.from_numpy(image)), torch.tensor([199.0]))
    with pytest.raises(TrainingError, match="window \\(6, 6\\) must have one size per axis"):
        PatchDataset([volume], (8, 8), window=(6, 6))


def test_benchmark_script_runs_both_libraries(tmp_path):
    pytest.importorskip("batchgeneratorsv2.transforms")
    import json

    import repo_scripts

    bench = repo_scripts.load("benchmarks/augment.py")
    out = tmp_path / "augment.json"
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--size", "16", "--iters", "1", "--cases", "all-on", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)  # the script sets one thread
    row = json.loads(out.read_text())["rows"][0]
    assert row["case"] == "all-on" and row["ratio_bg2_over_smp3d"] > 0 and row["smp3d"]["runs"] == 1
