"""The ``smp3d`` command line end to end on tiny generated HDF5, NIfTI and NumPy files."""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

import smp3d
from smp3d.cli import main
from smp3d.cli.demo import synthetic_volume
from smp3d.training import PatchDataset, Volume, window_starts

SMALL = ["--model-kwargs", '{"encoder_depth": 3, "decoder_channels": [16, 8, 4]}', "--no-progress"]


def scene(shape, seed, classes=2):
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, dtype=np.uint8)
    for c in range(1, classes):
        corner = [int(rng.integers(0, s - 6)) for s in shape]
        label[tuple(slice(k, k + 6) for k in corner)] = c
    image = label.astype(np.float32) * 2 + rng.normal(0, 0.3, shape).astype(np.float32)
    return image, label


@pytest.fixture
def h5_pair(tmp_path):
    paths = []
    for i in range(2):
        image, label = scene((24, 20, 16), i, classes=3)
        path = tmp_path / f"vol{i}.h5"
        with h5py.File(path, "w") as f:
            f["raw"], f["label"] = image, label
        paths.append(str(path))
    return paths


@pytest.fixture
def nifti_pair(tmp_path):
    image, label = scene((20, 20, 16), 5)
    affine = np.array([[-1.5, 0, 0, 90], [0, 1.5, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "seg.nii.gz")
    return f"{tmp_path / 'img.nii.gz'},{tmp_path / 'seg.nii.gz'}", affine


def argv(text):
    """A command line from one string (our temporary paths hold no spaces); training gets the small model."""
    words = shlex.split(text)
    return [*words, *SMALL] if words[0] == "train" else [*words, "--no-progress"]


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_train_hdf5_then_resume_then_predict(tmp_path, h5_pair, capsys):
    ckpt = tmp_path / "ckpt"
    base = argv(
        f"train --train-path {h5_pair[0]} --val-path {h5_pair[1]} --classes 3 --patch 16 --batch-size 2 "
        f"--iters 2 --checkpoint-dir {ckpt}"
    )
    code, out, err = run([*base, "--epochs", "2"], capsys)
    assert code == 0, err
    assert "val_mean_dice_foreground" in out and "done: 2 epochs, 4 iterations" in out
    for sub in ("best", "last"):
        assert (ckpt / sub / "model.safetensors").exists() and (ckpt / sub / "trainer.json").exists()
    assert (ckpt / "last" / "training_state.pt").exists()
    log = rows(ckpt / "metrics.csv")
    assert [r["epoch"] for r in log] == ["1", "2"]
    assert {"dice_0", "dice_1", "dice_2", "val_mean_dice_foreground", "train_loss", "lr"} <= set(log[0])
    trainer = json.loads((ckpt / "best" / "trainer.json").read_text())
    assert trainer["config"]["patch"] == [16, 16, 16] and trainer["config"]["mode"] == "multiclass"

    code, out, err = run([*base, "--epochs", "3", "--resume"], capsys)
    assert code == 0, err
    assert "resumed" in out and "at epoch 2, iteration 4" in out
    assert [r["epoch"] for r in rows(ckpt / "metrics.csv")] == ["1", "2", "3"]

    pred = tmp_path / "pred.h5"
    code, _, err = run(argv(f"predict --checkpoint {ckpt / 'best'} --input {h5_pair[1]} --output {pred}"), capsys)
    assert code == 0, err
    with h5py.File(pred) as f:
        labels = f["predictions"][()]
    assert labels.shape == (24, 20, 16) and labels.dtype == np.uint8 and labels.max() <= 2

    probs = tmp_path / "probs.npy"
    code, _, err = run(
        argv(
            f"predict --checkpoint {ckpt / 'best'} --input {h5_pair[1]} --output {probs} --probabilities --overlap 0.25"
        ),
        capsys,
    )
    assert code == 0, err
    p = np.load(probs)
    assert p.shape == (3, 24, 20, 16)
    np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(p.argmax(0), labels)


def test_nifti_roundtrip_keeps_affine(tmp_path, nifti_pair, capsys):
    pair, affine = nifti_pair
    ckpt = tmp_path / "ck"
    code, _, err = run(
        argv(
            f"train --train-path {pair} --classes 2 --patch 16 --epochs 1 --iters 2 --loss gdl --checkpoint-dir {ckpt}"
        ),
        capsys,
    )
    assert code == 0, err
    out_dir = tmp_path / "preds"
    image = pair.split(",")[0]
    code, _, err = run(
        argv(f"predict --checkpoint {ckpt / 'best'} --input {image} {image} --output {out_dir}/"), capsys
    )
    assert code == 0, err
    written = nib.load(out_dir / "img_prediction.nii.gz")
    np.testing.assert_allclose(written.affine, affine)
    assert written.shape == (20, 20, 16)


@pytest.mark.parametrize("loss", ["bce", "dice+focal", "tversky"])
def test_binary_2d_numpy(tmp_path, capsys, loss):
    image, label = scene((32, 32), 1)
    np.save(tmp_path / "x.npy", image)
    np.save(tmp_path / "y.npy", label)
    pair = f"{tmp_path / 'x.npy'},{tmp_path / 'y.npy'}"
    code, _, err = run(
        argv(
            f"train --train-path {pair} --val-path {pair} --spatial-dims 2 --classes 1 --patch 16 --stride 8 "
            f"--epochs 1 --loss {loss} --checkpoint-dir {tmp_path / 'c'}"
        ),
        capsys,
    )
    assert code == 0, err
    code, _, err = run(
        argv(
            f"predict --checkpoint {tmp_path / 'c' / 'best'} --input {tmp_path / 'x.npy'} --output {tmp_path / 'p.npy'}"
        ),
        capsys,
    )
    assert code == 0, err
    predicted = np.load(tmp_path / "p.npy")
    assert predicted.shape == (32, 32) and set(np.unique(predicted)) <= {0, 1}


def test_multilabel_targets(tmp_path, capsys):
    image, label = scene((16, 16, 16), 2)
    target = np.stack([label == 1, label == 0]).astype(np.float32)
    with h5py.File(tmp_path / "m.h5", "w") as f:
        f["raw"], f["label"] = image, target
    code, _, err = run(
        argv(
            f"train --train-path {tmp_path / 'm.h5'} --classes 2 --multilabel --loss bce+dice --patch 16 "
            "--batch-size 1 --epochs 1"
        ),
        capsys,
    )
    assert code == 0, err


def test_early_stopping(h5_pair, capsys):
    # Epoch 1 sets the best score; with lr 0 epoch 2 cannot improve on it, and patience 1 stops there.
    code, out, err = run(
        argv(
            f"train --train-path {h5_pair[0]} --val-path {h5_pair[1]} --classes 3 --patch 16 --iters 1 --epochs 30 "
            "--patience 1 --lr 0 --min-lr 0 --no-deep-supervision"
        ),
        capsys,
    )
    assert code == 0, err
    assert "early stopping" in out
    assert "done: 2 epochs" in out


def test_demo_smoke(capsys):
    code, out, err = run(shlex.split("demo --epochs 1 --iters 2 --size 32 --train-volumes 1 --no-progress"), capsys)
    assert code == 0, err
    last = out.strip().splitlines()[-1]
    assert last.startswith("mean_dice_foreground=") and 0.0 <= float(last.split("=")[1]) <= 1.0


def test_synthetic_volume_is_labelled_noise():
    volume = synthetic_volume((24, 24, 24), np.random.default_rng(0))
    assert volume.image.shape == (1, 24, 24, 24) and volume.label.shape == (24, 24, 24)
    assert set(np.unique(volume.label)) == {0, 1, 2}
    means = [volume.image[0][volume.label == c].mean() for c in range(3)]
    assert means[2] < means[0] < means[1]


def test_window_starts_cover_the_axis():
    assert window_starts(10, 4, 4) == [0, 4, 6]
    assert window_starts(8, 4, 2) == [0, 2, 4]
    assert window_starts(4, 4, 1) == [0]


def test_patch_dataset_grid_and_random():
    image, label = scene((20, 12, 8), 0)
    volume = Volume("v", image[None], label.astype(np.int64))
    grid = PatchDataset([volume], (8, 8, 8), (8, 8, 8), flip=False)
    assert len(grid) == 3 * 2 * 1
    x, y = grid[len(grid) - 1]
    assert x.shape == (1, 8, 8, 8) and y.shape == (8, 8, 8)
    torch.testing.assert_close(x[0], torch.from_numpy(image[12:20, 4:12, 0:8]))
    rand = PatchDataset([volume], (8, 8, 8), samples=50, foreground=1.0, seed=3)
    assert len(rand) == 50
    assert all(rand[i][1].any() for i in range(len(rand)))  # every patch holds labelled voxels
    first = list(rand.windows)
    rand.set_epoch(1)
    assert rand.windows != first
    rand.set_epoch(0)
    assert rand.windows == first


def _bad_h5(tmp_path, name, **datasets):
    path = tmp_path / name
    with h5py.File(path, "w") as f:
        for key, value in datasets.items():
            f[key] = value
    return str(path)


def bad_cases(tmp_path, h5_pair):
    no_label = _bad_h5(tmp_path, "nolabel.h5", raw=np.zeros((16, 16, 16), np.float32))
    mismatch = _bad_h5(
        tmp_path, "mismatch.h5", raw=np.zeros((16, 16, 16), np.float32), label=np.zeros((16, 16, 8), np.uint8)
    )
    vol = h5_pair[0]
    transposed = '{"encoder_depth": 3, "decoder_channels": [16, 8, 4], "decoder_interpolation": "transposed"}'
    return {
        "no /label": (f"--train-path {no_label}", "no dataset '/label'"),
        "shapes": (f"--train-path {mismatch}", "does not match"),
        "patch too large": (f"--train-path {vol} --patch 32", "larger than the volume"),
        "unknown loss": (f"--train-path {vol} --loss hinge", "unknown loss 'hinge'"),
        "missing file": (f"--train-path {tmp_path / 'nope.h5'}", "no such file"),
        "unknown encoder": (f"--train-path {vol} --encoder resnet33", "resnet33"),
        "class out of range": (f"--train-path {vol} --classes 2", "label holds class 2 but --classes is 2"),
        "ce on multilabel": (f"--train-path {vol} --multilabel --loss ce", "--loss ce needs class-index labels"),
        "divisibility": (
            [f"--train-path {vol} --patch 12 --model-kwargs", transposed],
            "must be divisible by the model's reduction (8, 8, 8) on every axis; try 16 16 16",
        ),
        "channels": (f"--train-path {vol} --in-channels 2", "image has 1 channels but --in-channels is 2"),
        "bad overlap": (
            f"predict --checkpoint {tmp_path} --input {vol} --output x.h5 --overlap 1.5",
            "expected a number in [0, 1)",
        ),
        "no checkpoint": (
            f"predict --checkpoint {tmp_path / 'none'} --input {vol} --output {tmp_path / 'x.h5'}",
            "not a directory",
        ),
    }


def bad_argv(tmp_path, h5_pair, case):
    """The case's command line: train cases get a 16^3 patch, 3 classes and one epoch unless they say otherwise."""
    spec, expected = bad_cases(tmp_path, h5_pair)[case]
    parts = spec if isinstance(spec, list) else [spec]
    words = [w for part in parts[:1] for w in part.split()] + parts[1:]
    if words[0] == "predict":
        return words, expected
    defaults = {"--patch": "16", "--classes": "3", "--epochs": "1"}
    extra = [w for key, value in defaults.items() if key not in words for w in (key, value)]
    if "--model-kwargs" not in words:
        extra += SMALL[:2]
    return ["train", *words, *extra, "--no-progress"], expected


CASES = [
    "no /label",
    "shapes",
    "patch too large",
    "unknown loss",
    "missing file",
    "unknown encoder",
    "class out of range",
    "ce on multilabel",
    "divisibility",
    "channels",
    "bad overlap",
    "no checkpoint",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_clear_line(tmp_path, h5_pair, capsys, case):
    argv, expected = bad_argv(tmp_path, h5_pair, case)
    code, _, err = run(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"smp3d {argv[0]}: error:") and expected in lines[0], lines[0]


def test_console_script_prints_no_traceback(tmp_path, h5_pair):
    argv, expected = bad_argv(tmp_path, h5_pair, "no /label")
    proc = subprocess.run([sys.executable, "-m", "smp3d", *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and expected in proc.stderr


def test_torchrun_two_processes_gloo(tmp_path, h5_pair):
    ckpt = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "smp3d"]
    cmd = torchrun + argv(
        f"train --train-path {h5_pair[0]} --val-path {h5_pair[1]} --classes 3 --patch 16 --iters 2 --epochs 2 "
        f"--batch-size 1 --device cpu --checkpoint-dir {ckpt}"
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("done: 2 epochs") == 1  # only rank 0 reports
    assert [r["epoch"] for r in rows(ckpt / "metrics.csv")] == ["1", "2"]  # and only rank 0 logs
    assert (ckpt / "best" / "model.safetensors").exists()


class _Oracle(torch.nn.Module):
    """Logits that reproduce a noise-free binary image exactly: the validation Dice must be 1."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(10.0))

    def forward(self, x):
        return torch.cat([-(x - 0.5), x - 0.5], 1) * self.scale


@pytest.mark.parametrize("mode,classes", [("multiclass", 2), ("binary", 1)])
def test_validation_dice_of_a_perfect_model_is_one(mode, classes):
    from smp3d.training import TrainConfig, evaluate

    _, label = scene((16, 16, 8), 4)
    volume = Volume("v", label[None].astype(np.float32), label.astype(np.int64))
    model = _Oracle() if classes == 2 else torch.nn.Sequential(_Oracle(), torch.nn.Conv3d(2, 1, 1))
    if classes == 1:
        with torch.no_grad():
            model[1].weight.copy_(torch.tensor([-1.0, 1.0]).view(1, 2, 1, 1, 1))
            model[1].bias.zero_()
    config = TrainConfig(mode=mode, classes=classes, patch=(8, 8, 8), batch_size=2)
    result = evaluate(model, [volume], config, torch.device("cpu"))
    assert result["val_mean_dice_foreground"] == pytest.approx(1.0)
    assert all(d == pytest.approx(1.0) for d in result["dice_per_class"])


def test_flips_only_the_chosen_axes():
    image = np.arange(4 * 6 * 8, dtype=np.float32).reshape(4, 6, 8)
    volume = Volume("v", image[None], np.zeros((4, 6, 8), np.int64))
    dataset = PatchDataset([volume], (4, 6, 8), (4, 6, 8), flip=(0,))
    torch.manual_seed(0)
    seen = {bool((dataset[0][0][0] != torch.from_numpy(image)).any()) for _ in range(20)}
    assert seen == {False, True}  # flipped sometimes, not always
    for _ in range(20):
        x = dataset[0][0][0]
        assert torch.equal(x, torch.from_numpy(image)) or torch.equal(x, torch.from_numpy(image).flip(0))


def test_flip_axes_and_small_validation_volume(tmp_path, h5_pair, capsys):
    small = _bad_h5(
        tmp_path, "small.h5", raw=np.random.rand(12, 12, 12).astype(np.float32), label=np.zeros((12, 12, 12), np.uint8)
    )
    code, out, err = run(
        argv(
            f"train --train-path {h5_pair[0]} --val-path {small} --classes 3 --patch 16 --iters 1 --epochs 1 "
            "--flip-axes 0 2"
        ),
        capsys,
    )
    assert code == 0, err  # the sliding window pads a validation volume smaller than the patch
    code, _, err = run(
        argv(f"train --train-path {h5_pair[0]} --classes 3 --patch 16 --iters 1 --epochs 1 --flip-axes 3"), capsys
    )
    assert code == 2 and "flip axes [3] out of range: the volumes have 3 spatial axes" in err


def test_train_with_activation_checkpointing(tmp_path, h5_pair, capsys):
    ckpt = tmp_path / "ckpt"
    code, out, err = run(
        argv(
            f"train --train-path {h5_pair[0]} --val-path {h5_pair[1]} --classes 3 --patch 16 --batch-size 2 "
            f"--iters 2 --epochs 1 --checkpointing both --checkpoint-dir {ckpt}"
        ),
        capsys,
    )
    assert code == 0, err
    assert "done: 1 epochs, 2 iterations" in out
    trainer = json.loads((ckpt / "last" / "trainer.json").read_text())
    assert trainer["config"]["checkpointing"] == "both"


def test_train_with_deep_supervision_then_predict(tmp_path, h5_pair, capsys, monkeypatch):
    from smp3d.losses import DeepSupervisionLoss

    seen = []
    real_forward = DeepSupervisionLoss.forward

    def spy(self, prediction, target):
        seen.append(len(prediction) if isinstance(prediction, list) else 1)
        return real_forward(self, prediction, target)

    monkeypatch.setattr(DeepSupervisionLoss, "forward", spy)
    ckpt = tmp_path / "ckpt"
    code, out, err = run(
        argv(
            f"train --train-path {h5_pair[0]} --val-path {h5_pair[1]} --classes 3 --patch 16 --batch-size 2 "
            f"--iters 2 --epochs 1 --deep-supervision --checkpoint-dir {ckpt}"
        ),
        capsys,
    )
    assert code == 0, err
    # Training steps see [mask, coarser masks ...] (every decoder level but the deepest); validation one mask.
    assert seen and max(seen) == 2 and 1 in seen  # SMALL's encoder_depth 3 -> 3 levels, the deepest left out
    config = json.loads((ckpt / "last" / "config.json").read_text())
    assert config["deep_supervision"] is True
    model = smp3d.from_pretrained(ckpt / "last")
    assert model.deep_supervision and len(model.deep_supervision_heads) == 1
    out_path = tmp_path / "pred.h5"
    code, _, err = run(argv(f"predict --checkpoint {ckpt / 'last'} --input {h5_pair[1]} --output {out_path}"), capsys)
    assert code == 0, err
    assert out_path.exists()


def test_deep_supervision_refused_where_the_decoder_has_one_level(tmp_path, h5_pair, capsys):
    code, _, err = run(
        argv(
            f"train --train-path {h5_pair[0]} --classes 3 --patch 16 --batch-size 2 --iters 1 --epochs 1 "
            f"--arch pspnet --deep-supervision"
        ),
        capsys,
    )
    assert code != 0 and "deep_supervision" in err and len(err.strip().splitlines()) == 1, err
