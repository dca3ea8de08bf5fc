"""Whole-volume prediction: test-time mirroring, ensembles, largest components, probability files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from smp3d.inference.predict import (
    connected_components,
    keep_largest_component,
    mirror_combinations,
    predict_probabilities,
)


class SymmetricConv(nn.Module):
    """A convolution whose kernel is symmetric along every axis: it commutes with flips (zero padding
    is symmetric too), so mirroring at test time must change nothing."""

    def __init__(self, spatial_dims: int, classes: int = 3) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.conv = conv(1, classes, 3, padding=1)
        with torch.no_grad():
            weight = self.conv.weight
            for axis in range(2, weight.dim()):
                weight.copy_((weight + weight.flip(axis)) / 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_tta_of_a_flip_equivariant_model_is_the_plain_prediction(spatial_dims):
    torch.manual_seed(0)
    model = SymmetricConv(spatial_dims).eval()
    shape = (1, 1, 20, 18, 12)[: 2 + spatial_dims]
    image = torch.randn(shape)
    # One window per volume: overlapping windows cut the image at places that move under a flip.
    patch = shape[2:]
    plain = predict_probabilities(model, image, patch, blend="constant")
    mirrored = predict_probabilities(model, image, patch, tta_axes=range(spatial_dims), blend="constant")
    torch.testing.assert_close(mirrored, plain, atol=1e-5, rtol=1e-5)
    assert torch.allclose(plain.sum(1), torch.ones(()))  # softmax probabilities


def test_tta_flips_back_each_prediction():
    # A model that is NOT flip-equivariant (it reads a gradient) predicts differently under TTA; the mean
    # equals the mean of the plain prediction and the flipped-back prediction of the flipped input.
    model = nn.Conv2d(1, 2, (1, 3), padding=(0, 1)).eval()
    image = torch.randn(1, 1, 8, 8)
    plain = predict_probabilities(model, image, (8, 8))
    flipped = predict_probabilities(model, image.flip(3), (8, 8)).flip(3)
    both = predict_probabilities(model, image, (8, 8), tta_axes=[1])
    torch.testing.assert_close(both, (plain + flipped) / 2)


def test_mirror_combinations():
    assert mirror_combinations(None, 3) == [()]
    assert mirror_combinations([2, 0], 3) == [(), (0,), (2,), (0, 2)]
    assert len(mirror_combinations(range(3), 3)) == 8
    with pytest.raises(ValueError, match="0..1"):
        mirror_combinations([2], 2)


def test_ensemble_of_identical_models_is_the_single_model():
    torch.manual_seed(0)
    model = nn.Conv3d(1, 2, 3, padding=1).eval()
    image = torch.randn(1, 1, 12, 12, 12)
    single = predict_probabilities(model, image, (8, 8, 8), mode="binary")
    twins = predict_probabilities([model, model], image, (8, 8, 8), mode="binary")
    torch.testing.assert_close(twins, single)
    other = nn.Conv3d(1, 3, 3, padding=1).eval()
    with pytest.raises(ValueError, match="disagree"):
        predict_probabilities([model, other], image, (8, 8, 8))


def test_keep_largest_component_per_class():
    labels = np.zeros((10, 10, 4), dtype=np.uint8)
    labels[0:4, 0:4] = 1  # 64 voxels
    labels[8:10, 8:10] = 1  # 16 voxels, apart: removed
    labels[5:7, 0:3] = 2  # 24 voxels
    labels[0, 9] = 2  # 4 voxels: removed
    cleaned = keep_largest_component(labels)
    expected = labels.copy()
    expected[8:10, 8:10] = 0
    expected[0, 9] = 0
    np.testing.assert_array_equal(cleaned, expected)
    # Diagonal neighbours are separate regions (face connectivity).
    diagonal = np.zeros((4, 4), dtype=np.uint8)
    diagonal[0, 0] = diagonal[1, 1] = 1
    assert connected_components(diagonal, backend="torch")[1] == 2
    # Stacked masks (binary / multi-label) are cleaned per channel.
    stack = np.zeros((2, 6, 6), dtype=np.uint8)
    stack[0, :2, :2] = stack[0, 5, 5] = 1
    stack[1, 3:, 3:] = 1
    cleaned = keep_largest_component(stack, stacked=True)
    assert cleaned[0, 5, 5] == 0 and cleaned[0, :2, :2].all() and (cleaned[1] == stack[1]).all()


def test_torch_components_match_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    mask = rng.random((12, 14, 9)) > 0.55
    ours, count = connected_components(mask, backend="torch")
    theirs, expected = ndimage.label(mask)
    assert count == expected
    # The same partition, up to numbering.
    pairs = set(zip(ours[mask].tolist(), theirs[mask].tolist(), strict=True))
    assert len(pairs) == count


def test_torch_components_of_a_snake():
    # A long winding region: pointer jumping must still join it into one.
    mask = np.zeros((9, 9), dtype=bool)
    mask[0::4, :] = True
    mask[1:4, 8] = mask[5:8, 0] = True
    labels, count = connected_components(mask, backend="torch")
    assert count == 1 and (labels[mask] == labels[0, 0]).all() and (labels[~mask] == 0).all()


def test_probabilities_file_layout(tmp_path):
    from smp3d.training import Volume, write_prediction

    nib = pytest.importorskip("nibabel")
    probabilities = np.random.default_rng(0).random((3, 5, 6, 7)).astype(np.float32)
    affine = np.diag([2.0, 1.0, 1.5, 1.0])
    reference = Volume("x", np.zeros((1, 5, 6, 7), np.float32), affine=affine)
    write_prediction(tmp_path / "p.npy", probabilities, reference)
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), probabilities)  # (C, *spatial)
    write_prediction(tmp_path / "p.nii.gz", probabilities, reference)
    image = nib.load(tmp_path / "p.nii.gz")
    assert image.shape == (5, 6, 7, 3)  # NIfTI: the class is the 4th axis
    np.testing.assert_allclose(image.affine, affine)
    np.testing.assert_array_equal(np.moveaxis(np.asanyarray(image.dataobj), -1, 0), probabilities)


def test_predict_cli_ensembles_mirrors_and_cleans(tmp_path, capsys):
    import smp3d
    from smp3d.cli import main

    torch.manual_seed(0)
    folders = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = smp3d.Unet("resnet18", encoder_depth=3, decoder_channels=(16, 8, 4), in_channels=1, classes=3)
        folders.append(tmp_path / f"fold{seed}")
        model.save_pretrained(folders[-1])
    image = tmp_path / "x.npy"
    np.save(image, np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32))
    out = tmp_path / "labels.npy"
    argv = ["predict", "--checkpoint", *map(str, folders), "--input", str(image), "--output", str(out)]
    argv += ["--patch", "16", "--tta", "--keep-largest", "--no-progress", "--device", "cpu"]
    assert main(argv) == 0, capsys.readouterr().err
    labels = np.load(out)
    assert labels.shape == (16, 16, 16)
    for c in np.unique(labels)[1:]:  # one region per class after --keep-largest
        assert connected_components(labels == c)[1] == 1
    # Probabilities of the same ensemble, TTA over axis 0 only, keep the (C, *spatial) layout.
    probabilities = tmp_path / "p.npy"
    argv = ["predict", "--checkpoint", *map(str, folders), "--input", str(image), "--output", str(probabilities)]
    argv += ["--patch", "16", "--tta", "0", "--probabilities", "--no-progress", "--device", "cpu"]
    assert main(argv) == 0, capsys.readouterr().err
    assert np.load(probabilities).shape == (3, 16, 16, 16)
    bad = ["predict", "--checkpoint", str(folders[0]), "--input", str(image), "--output", str(out), "--patch", "16"]
    assert main([*bad, "--tta", "3"]) == 2
    assert "out of range" in capsys.readouterr().err
