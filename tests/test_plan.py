"""Planning (fingerprint -> plan.json), geometry (resampling, same-grid checks), normalisation, label maps,
and the plan as smp3d train and smp3d predict use it. Tiny volumes; trial steps replaced by a cost model
except in one real CPU trial."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from smp3d.cli import main
from smp3d.training import TrainingError
from smp3d.training.budget import fit_budget, measure_step
from smp3d.training.fingerprint import Fingerprint, fingerprint_volumes
from smp3d.training.geometry import (
    check_same_grid,
    resample_image,
    resample_label,
    resampled_shape,
    spacing_from_affine,
)
from smp3d.training.plan import (
    Plan,
    make_plan,
    patch_for_voxels,
    plan_target_spacing,
    plan_topology,
    read_plan,
    write_plan,
)
from smp3d.training.prepare import planned_config, prepare_run
from smp3d.training.volumes import Volume, normalize, parse_label_map, read_volume

SMALL_UNET = '{"encoder_depth": 3, "decoder_channels": [16, 8, 4]}'


def stats(image_min=0.0):
    return [
        dict(mean=0.0, std=1.0, min=-2, max=2, median=0, percentile_00_5=-1.0, percentile_99_5=1.0)
        | dict(image_min=image_min, image_max=5.0)
    ]


def fingerprint(spacings, shapes, image_min=0.0):
    return Fingerprint(3, [str(i) for i in range(len(shapes))], spacings, shapes, 1, stats(image_min), {"0": 9, "1": 1})


def save_pair(folder, name, image, label, affine, label_affine=None):
    image_path, label_path = folder / f"{name}.nii.gz", folder / f"{name}_seg.nii.gz"
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), image_path)
    nib.save(nib.Nifti1Image(label.astype(np.uint8), affine if label_affine is None else label_affine), label_path)
    return f"{image_path},{label_path}"


def blob_scene(shape, seed):
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.int64)
    label[tuple(slice(s // 4, 3 * s // 4) for s in shape)] = 1
    image = label * 2.0 + rng.normal(0, 0.3, shape) + 10.0
    return image, label


# -- planning rules ---------------------------------------------------------------------------------
def test_target_spacing_is_the_median_for_isotropic_data():
    spacing, why = plan_target_spacing([(1, 1, 1), (1.2, 1.2, 1.4), (0.8, 0.8, 1.0)], [(64, 64, 64)] * 3)
    assert spacing == (1.0, 1.0, 1.0) and "median" in why


def test_target_spacing_of_a_thick_slice_axis_is_its_10th_percentile():
    spacings = [(0.8, 0.8, s) for s in (2.5, 5, 5, 6, 6, 8, 10, 10, 10, 10)]
    spacing, why = plan_target_spacing(spacings, [(256, 256, 20)] * 10)
    expected = float(np.percentile([s[2] for s in spacings], 10))
    assert spacing[:2] == (0.8, 0.8) and spacing[2] == pytest.approx(expected) and "10th percentile" in why
    # Thick slices but as many voxels along that axis: the median stays.
    spacing, _ = plan_target_spacing(spacings, [(256, 256, 200)] * 10)
    assert spacing[2] == pytest.approx(float(np.median([s[2] for s in spacings])))
    # The percentile never goes below the in-plane spacing.
    spacing, _ = plan_target_spacing([(1, 1, 0.5)] * 2 + [(1, 1, 5)] * 8, [(256, 256, 20)] * 10)
    assert spacing[2] == pytest.approx(1.0)


def test_topology_pools_isotropic_axes_until_4_voxels():
    topology = plan_topology((1, 1, 1), (128, 128, 128))
    assert topology.strides == [(1, 1, 1)] + [(2, 2, 2)] * 5  # 128 -> 4 voxels
    assert topology.kernel_sizes == [(3, 3, 3)] * 6 and topology.divisor == (32, 32, 32)


def test_topology_pools_a_coarse_axis_only_within_2x_of_the_finest():
    topology = plan_topology((0.8, 0.8, 3.2), (256, 256, 32))
    # The coarse axis (4x) waits two in-plane pools, then pools with them; kernels 1 there until then.
    assert topology.strides[:4] == [(1, 1, 1), (2, 2, 1), (2, 2, 1), (2, 2, 2)]
    assert topology.kernel_sizes[:3] == [(3, 3, 1), (3, 3, 1), (3, 3, 3)]
    sizes = np.array([256, 256, 32]) // np.array(topology.divisor)
    assert (sizes >= 4).all() and topology.kernel_sizes[-1] == (3, 3, 3)


def test_topology_of_a_flat_patch_pools_only_the_long_axes():
    topology = plan_topology((1, 1, 1), (64, 64, 6))
    assert all(stride[2] == 1 for stride in topology.strides)  # 6 < 2 x 4 voxels: never pooled


def test_patch_follows_the_physical_aspect_and_fits_the_topology():
    patch, topology = patch_for_voxels(64**3, (1.0, 1.0, 2.0), (200, 200, 200))
    assert patch[0] == patch[1] and patch[2] < patch[0]  # the coarse axis spans as many millimetres
    assert all(p % d == 0 for p, d in zip(patch, topology.divisor, strict=True))
    assert np.prod(patch) <= 64**3


def test_budget_picks_the_largest_patch_that_fits_and_then_the_batch():
    per_voxel = 1e-6  # a cost model: seconds = batch x voxels x 1e-6

    def measure(patch, batch):
        return batch * float(np.prod(patch)) * per_voxel, 0.0

    candidate = lambda v: patch_for_voxels(v, (1, 1, 1), (96, 96, 96))[0]  # noqa: E731
    patch, batch, trials = fit_budget(measure, 0.2, candidate, 96.0**3, 16.0**3)
    assert 2 * np.prod(patch) * per_voxel <= 0.2
    assert 2 * np.prod(patch) * per_voxel > 0.2 / 2  # not far below: the next size up would not fit
    assert batch == int(0.2 // (np.prod(patch) * per_voxel)) and len(trials) <= 6
    # The whole volume fits: the rest of the budget buys a larger batch.
    patch, batch, _ = fit_budget(measure, 10.0, candidate, 96.0**3, 16.0**3)
    assert patch == (96, 96, 96) and batch == int(10.0 // (96**3 * per_voxel))
    with pytest.raises(TrainingError, match="no patch fits the budget"):
        fit_budget(measure, 1e-9, candidate, 96.0**3, 16.0**3)


def test_make_plan_with_a_cost_model_caps_the_batch_and_writes_editable_json(tmp_path):
    fp = fingerprint([(1, 1, 1)] * 4, [(64, 64, 64)] * 4)

    def measure(patch, batch):
        return batch * float(np.prod(patch)) * 1e-7, 0.0

    plan = make_plan(fp, network="resenc", budget_seconds_per_step=1.0, measure=measure)
    assert plan.patch == (64, 64, 64) and plan.arch == "nnunet" and plan.encoder == "resenc_m"
    assert plan.batch_size == 2  # 4 volumes of 64^3: 5% of the voxels is less than one more patch
    assert plan.model_kwargs["encoder_depth"] == 5 and plan.model_kwargs["strides"][0] == [1, 1, 1]
    path = tmp_path / "plan.json"
    write_plan(plan, path)
    assert '"patch": [64, 64, 64],' in path.read_text() and read_plan(path) == plan
    data = json.loads(path.read_text())
    data["patch"] = [32, 32, 32]  # a person edits it
    path.write_text(json.dumps(data))
    assert read_plan(path).patch == (32, 32, 32)
    data["pach"] = [1, 2, 3]
    path.write_text(json.dumps(data))
    with pytest.raises(TrainingError, match="did you mean 'patch'"):
        read_plan(path)


def test_any_registered_encoder_gets_the_planned_pooling_strides():
    fp = fingerprint([(0.5, 0.5, 1.0)] * 2, [(128, 128, 64)] * 2)
    plan = make_plan(fp, network="resnet18", patch=(128, 128, 64))
    assert (plan.arch, plan.encoder) == ("unet", "resnet18")
    kwargs = plan.model_kwargs
    assert kwargs["encoder_depth"] == 5 and kwargs["strides"][0] == [2, 2, 1] and "kernel_sizes" not in kwargs
    with pytest.raises(KeyError, match="resnet19"):
        make_plan(fp, network="resnet19", patch=(128, 128, 64))


def test_ct_is_recognised_by_hounsfield_air():
    assert make_plan(fingerprint([(1, 1, 1)], [(16, 16, 16)], -1024.0), patch=(16, 16, 16)).normalization == "ct"
    assert make_plan(fingerprint([(1, 1, 1)], [(16, 16, 16)], 0.0), patch=(16, 16, 16)).normalization == "zscore"


def test_a_real_trial_step_on_the_cpu_is_measured():
    cost = measure_step(
        "nnunet", "plain_nnunet", {"encoder_depth": 2, "strides": [[1, 1, 1], [2, 2, 2]]},
        in_channels=1, classes=2, spatial_dims=3, patch=(8, 8, 8), batch=2,
    )  # fmt: skip
    assert cost.seconds > 0 and cost.peak_bytes is None and 0 < cost.cpu_step_seconds <= cost.seconds


# -- geometry ---------------------------------------------------------------------------------------
def test_a_label_resampled_there_and_back_is_itself():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, (6, 5, 7))
    for mode in ("nearest", "onehot"):
        up = resample_label(label, (12, 10, 14), mode)
        assert (resample_label(up, (6, 5, 7), mode) == label).all()
    # Nearest upsampling by 2 repeats each voxel.
    assert (resample_label(label, (12, 10, 14))[::2, ::2, ::2] == label).all()


def test_resampled_shape_and_spacing_from_affine():
    affine = np.array([[-1.5, 0, 0, 90], [0, 1.5, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])
    assert spacing_from_affine(affine, 3) == (1.5, 1.5, 2.0)
    assert resampled_shape((20, 20, 16), (1.5, 1.5, 2.0), (1.0, 1.0, 1.0)) == (30, 30, 32)


def test_thick_slices_are_resampled_along_their_axis_without_blending():
    image = np.zeros((1, 4, 4, 3), np.float32)
    image[..., 1] = 1.0  # the middle slice
    out = resample_image(image, (4, 4, 12), "linear", spacing=(1, 1, 4), target_spacing=(1, 1, 1))
    assert set(np.unique(out)) == {0.0, 1.0} and out[..., 4:8].min() == 1.0
    blended = resample_image(image, (4, 4, 12), "linear", separate=False)
    assert len(np.unique(blended)) > 2


def test_cubic_resampling_keeps_a_constant_and_a_linear_ramp_inside():
    ramp = np.broadcast_to(np.arange(8, dtype=np.float32)[:, None, None], (8, 4, 4))[None].copy()
    out = resample_image(ramp, (16, 4, 4), "cubic")
    inner = out[0, 3:-3, 0, 0]  # away from the repeated border
    assert np.allclose(np.diff(inner), 0.5, atol=1e-5)
    assert np.allclose(resample_image(np.full((1, 5, 3, 3), 2.0, np.float32), (9, 7, 3), "cubic"), 2.0)


def test_a_flipped_label_affine_is_refused_naming_both_files(tmp_path):
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    flipped = affine.copy()
    flipped[0, 0], flipped[0, 3] = -1.0, 15.0
    image, label = blob_scene((16, 16, 16), 0)
    spec = save_pair(tmp_path, "a", image, label, affine, flipped)
    with pytest.raises(TrainingError, match=r"a_seg\.nii\.gz.*a\.nii\.gz.*axis 0 flipped"):
        read_volume(spec, need_label=True)
    with pytest.raises(TrainingError, match="does not match the image"):
        check_same_grid("i.nii", (4, 4, 4), affine, "l.nii", (4, 4, 5), affine)


# -- normalisation and label maps ------------------------------------------------------------------
def test_zscore_uses_the_non_zero_mask_and_ct_clips_with_dataset_statistics():
    image = np.zeros((1, 8, 8, 8), np.float32)
    image[0, 2:6, 2:6, 2:6] = np.random.default_rng(0).normal(100, 10, (4, 4, 4))
    out = normalize(image, "zscore")
    inside = out[0, 2:6, 2:6, 2:6]
    assert abs(inside.mean()) < 1e-5 and abs(inside.std() - 1) < 1e-4 and (out[0, 0] == 0).all()
    full = np.random.default_rng(1).normal(5, 2, (1, 6, 6, 6)).astype(np.float32)  # no background: whole volume
    assert abs(normalize(full, "zscore").mean()) < 1e-5
    ct = np.array([[[-1000.0, 0.0, 40.0, 3000.0]]], np.float32)
    stats_ct = [dict(mean=40.0, std=20.0, percentile_00_5=-100.0, percentile_99_5=200.0)]
    assert np.allclose(normalize(ct, "ct", stats_ct), [[[-7.0, -2.0, 0.0, 8.0]]])
    with pytest.raises(TrainingError, match="needs the dataset's foreground intensity statistics"):
        normalize(ct, "ct")
    assert normalize(ct, "none") is ct


def test_label_map_remaps_values_on_load(tmp_path):
    assert parse_label_map("4:3, 9:0") == {4: 3, 9: 0}
    with pytest.raises(TrainingError, match="OLD:NEW"):
        parse_label_map("4-3")
    image, _ = blob_scene((8, 8, 8), 0)
    label = np.zeros((8, 8, 8), np.int64)
    label[:2], label[2:4], label[4:6] = 4, 9, 1
    volume = read_volume(save_pair(tmp_path, "m", image, label, np.eye(4)), need_label=True, label_map={4: 3, 9: 0})
    assert set(np.unique(volume.label)) == {0, 1, 3} and (volume.label[:2] == 3).all()


def test_fingerprint_reads_foreground_statistics_and_class_frequencies():
    image = np.zeros((1, 10, 10, 10), np.float32)
    label = np.zeros((10, 10, 10), np.int64)
    label[:5] = 1
    image[0, :5] = 7.0
    volume = Volume("v", image, label, spacing=(1.0, 1.0, 2.0))
    fp = fingerprint_volumes([volume])
    assert fp.intensity[0]["mean"] == 7.0 and fp.intensity[0]["image_min"] == 0.0
    assert fp.class_frequencies == {"0": 0.5, "1": 0.5} and fp.classes == 2 and fp.spacings == [(1.0, 1.0, 2.0)]
    assert Fingerprint.from_json(json.loads(json.dumps(fp.to_json()))).shapes == fp.shapes


# -- the plan in train and predict -------------------------------------------------------------------
def test_explicit_settings_override_the_plan():
    fp = fingerprint([(1, 1, 1)] * 2, [(48, 48, 48)] * 2)
    plan = make_plan(fp, network="plain", patch=(40, 40, 40))
    fields = planned_config(plan, {"batch_size": 5, "patch": None, "normalize": "none"})
    assert fields["batch_size"] == 5 and fields["patch"] == (40, 40, 40) and fields["encoder"] == "plain_nnunet"
    # A network of your own: unet + resnet18 with your arguments; the planned patch fits its reduction.
    fields = planned_config(plan, {"encoder": "resnet18", "model_kwargs": json.loads(SMALL_UNET)})
    assert fields["arch"] == "unet" and "strides" not in fields["model_kwargs"]
    assert all(p % 8 == 0 for p in fields["patch"])


def test_prepare_run_resamples_to_the_planned_spacing(tmp_path):
    specs = []
    for i, z in enumerate((2.0, 2.0, 1.0)):
        image, label = blob_scene((12, 12, 8 if z == 2.0 else 16), i)
        specs.append(save_pair(tmp_path, f"v{i}", image, label, np.diag([1.0, 1.0, z, 1.0])))
    run = prepare_run(specs, planning={"network": "plain"}, overrides={"patch": (8, 8, 8)})
    assert run.config["target_spacing"] == (1.0, 1.0, 2.0)  # the median
    assert [v.spatial_shape for v in run.train] == [(12, 12, 8), (12, 12, 8), (12, 12, 8)]
    assert run.train[2].label.dtype == np.int64 and set(np.unique(run.train[2].label)) == {0, 1}


def test_train_with_a_plan_then_predict_back_on_the_input_grid(tmp_path, capsys):
    # Training volumes at 1 x 1 x 2 mm; the test image at 1 x 1 x 1 mm with a flipped x axis.
    specs = []
    for i in range(2):
        image, label = blob_scene((16, 16, 8), i)
        specs.append(save_pair(tmp_path, f"t{i}", image, label, np.diag([1.0, 1.0, 2.0, 1.0])))
    plan_path = tmp_path / "plan.json"
    code = main(
        [
            "plan",
            *specs,
            "-o",
            str(plan_path),
            "--device",
            "cpu",
            "--network",
            "plain",
            "--budget-seconds-per-step",
            "0.05",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    plan = read_plan(plan_path)
    assert plan.target_spacing == (1.0, 1.0, 2.0) and "wrote" in out
    ckpt = tmp_path / "run"
    code = main(
        ["train", "--plan", str(plan_path), "--train-path", *specs, "--epochs", "1", "--iters", "1",
         "--batch-size", "1", "--device", "cpu", "--checkpoint-dir", str(ckpt), "--no-progress"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    trainer = json.loads((ckpt / "last" / "trainer.json").read_text())["config"]
    assert trainer["target_spacing"] == [1.0, 1.0, 2.0] and trainer["batch_size"] == 1  # the flag won
    assert trainer["encoder"] == "plain_nnunet" and (ckpt / "plan.json").is_file()
    affine = np.array([[-1.0, 0, 0, 20], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    test_image, _ = blob_scene((16, 16, 20), 5)
    nib.save(nib.Nifti1Image(test_image.astype(np.float32), affine), tmp_path / "test.nii.gz")
    out_path = tmp_path / "pred.nii.gz"
    code = main(["predict", "--checkpoint", str(ckpt / "last"), "--input", str(tmp_path / "test.nii.gz"),
                 "--output", str(out_path), "--device", "cpu", "--no-progress"])  # fmt: skip
    _, err = capsys.readouterr()
    assert code == 0, err
    written = nib.load(out_path)
    assert written.shape == (16, 16, 20) and np.allclose(written.affine, affine)


def test_train_without_a_plan_plans_and_flags_win(tmp_path, capsys):
    image, label = blob_scene((16, 16, 16), 0)
    spec = save_pair(tmp_path, "a", image, label, np.eye(4))
    code = main(
        ["train", "--train-path", spec, "--patch", "16", "--epochs", "1", "--iters", "1", "--device", "cpu",
         "--model-kwargs", SMALL_UNET, "--no-progress"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "plan: target spacing [1.0, 1.0, 1.0]" in out and "train: unet resnet18, patch [16, 16, 16]" in out


def test_a_plan_for_another_dimension_is_refused(tmp_path):
    plan = make_plan(fingerprint([(1, 1, 1)], [(16, 16, 16)]), patch=(16, 16, 16))
    with pytest.raises(TrainingError, match="contradicts the plan's spatial_dims 3"):
        prepare_run([], plan=plan, spatial_dims=2)
    bad = Plan(**{**plan.__dict__, "patch": (16, 16)})
    with pytest.raises(TrainingError, match="patch needs 3 positive numbers"):
        bad.check()


def test_spacing_flag_is_for_headerless_files_and_gpu_budgets_for_gpus(tmp_path, capsys):
    image, label = blob_scene((8, 8, 8), 0)
    spec = save_pair(tmp_path, "h", image, label, np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.warns(UserWarning, match=r"header gives spacing \(2.0, 2.0, 2.0\)"):
        assert read_volume(spec, need_label=True, spacing=(1.0, 1.0, 1.0)).spacing == (2.0, 2.0, 2.0)
    np.save(tmp_path / "x.npy", image)
    np.save(tmp_path / "y.npy", label)
    volume = read_volume(f"{tmp_path / 'x.npy'},{tmp_path / 'y.npy'}", need_label=True, spacing=(1.0, 1.0, 3.0))
    assert volume.spacing == (1.0, 1.0, 3.0)
    code = main(["plan", spec, "-o", str(tmp_path / "p.json"), "--device", "cpu", "--budget-gb", "4"])
    assert code == 2 and "on the CPU give --budget-seconds-per-step" in capsys.readouterr().err


def test_prepared_volumes_are_cached_once_and_keyed_by_file_and_settings(tmp_path, monkeypatch):
    image, label = blob_scene((12, 12, 8), 0)
    spec = save_pair(tmp_path, "c", image, label, np.diag([1.0, 1.0, 2.0, 1.0]))
    plan = make_plan(fingerprint([(1, 1, 2)], [(12, 12, 8)]), network="plain", patch=(8, 8, 8))
    plan.target_spacing = (1.0, 1.0, 1.0)
    cache = tmp_path / "cache"
    first = prepare_run([spec], plan=plan, cache_dir=cache).train[0]
    assert first.spatial_shape == (12, 12, 16) and len(list(cache.iterdir())) == 1
    import smp3d.training.prepare as prepare_module

    def refuse(*args, **kwargs):
        raise AssertionError("read from the file despite the cache")

    monkeypatch.setattr(prepare_module, "read_volume", refuse)
    again = prepare_run([spec], plan=plan, cache_dir=cache).train[0]
    assert np.array_equal(again.image, first.image) and np.array_equal(again.label, first.label)
    assert again.original_shape == (12, 12, 8) and again.spacing == (1.0, 1.0, 1.0)
    monkeypatch.undo()
    prepare_run([spec], plan=plan, cache_dir=cache, overrides={"normalize": "none"})  # another setting
    assert len(list(cache.iterdir())) == 2


@pytest.mark.parametrize("network", ["plain", "resenc"])
def test_base_channels_sets_the_planned_widths(network):
    from smp3d import create_model

    plan = make_plan(fingerprint([(1, 1, 1)], [(16, 16, 16)]), network=network, patch=(16, 16, 16), base_channels=8)
    with torch.device("meta"):
        model = create_model(plan.arch, encoder_name=plan.encoder, in_channels=1, classes=2, **plan.model_kwargs)
    assert model.encoder.out_channels[1:] == (8, 16, 32)


def test_light_network_pools_one_stage_earlier_and_predicts_at_full_resolution():
    """The CPU's default: resenc with one block per stage, the first stage strided, 16 base channels;
    the planned kernels follow the resolution each stage works at; the output has the input's size."""
    from smp3d import create_model

    fp = fingerprint([(1, 1, 3)], [(64, 64, 16)])
    plan = make_plan(fp, patch=(32, 32, 8))  # device cpu: network light
    topology = plan_topology((1, 1, 3), (32, 32, 8))
    kwargs = plan.model_kwargs
    assert plan.encoder == "resenc_m" and kwargs["blocks"] == [1] * topology.stages
    assert kwargs["strides"] == [list(s) for s in topology.strides[1:]] + [[1, 1, 1]]
    assert kwargs["kernel_sizes"] == [list(k) for k in topology.kernel_sizes[1:]] + [[3, 3, 3]]
    assert kwargs["features"][:2] == [16, 32]
    model = create_model(plan.arch, encoder_name=plan.encoder, in_channels=1, classes=3, **kwargs).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, *plan.patch))
    assert out.shape == (1, 3, *plan.patch)
    with pytest.raises(TrainingError, match="base-channels"):
        make_plan(fp, network="resnet18", patch=(32, 32, 8), base_channels=8)
