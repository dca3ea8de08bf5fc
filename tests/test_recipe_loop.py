"""The training loop's recipe parts: time budgets, schedules, warm-up, clipping, fp16, folds, pictures."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from smp3d.training import TrainConfig, TrainingError, Volume, fit
from smp3d.training.distributed import Dist
from smp3d.training.folds import fold_split, fold_volumes, make_splits
from smp3d.training.loop import build_parts, check_inputs, train_step
from smp3d.training.schedule import Budget, LRSchedule

MODEL = {"encoder_depth": 3, "decoder_channels": [16, 8, 4]}


def volumes(count: int = 2, size: int = 24) -> list[Volume]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        label = np.zeros((size, size), dtype=np.int64)
        y, x = rng.integers(0, size - 8, size=2)
        label[y : y + 8, x : x + 8] = 1 + i % 2
        image = (label + rng.normal(0, 0.3, label.shape))[None].astype(np.float32)
        out.append(Volume(f"v{i}", image, label))
    return out


def config(**changes) -> TrainConfig:
    base = TrainConfig(
        arch="unet",
        encoder="resnet18",
        model_kwargs=dict(MODEL),
        classes=3,
        spatial_dims=2,
        patch=(16, 16),
        batch_size=2,
        iters=2,
        epochs=1,
        device="cpu",
        progress=False,
        plots=False,
    )
    return replace(base, **changes)


class FakeClock:
    """Seconds that advance by ``tick`` at every reading: the run sees time pass without waiting."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 1000.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_time_budget_ends_in_time_with_final_validation_and_checkpoint(tmp_path):
    data = volumes()
    clock = FakeClock(0.5)
    budget_minutes = 1 / 6  # 10 fake seconds
    cfg = config(time_budget=budget_minutes, epochs=1, checkpoint_dir=str(tmp_path / "run"))
    result = fit(cfg, data[:1], data[1:], clock=clock)
    assert result.epochs > 1  # --epochs is ignored under a budget: epochs continue until the time is spent
    # In time, up to the clock readings after the last one that decided (each reading is a tick here).
    assert 0 < result.seconds <= budget_minutes * 60 + 4 * clock.tick
    last = result.last_metrics
    assert not math.isnan(last["val_mean_dice_foreground"])  # the final epoch was validated
    trainer = json.loads((tmp_path / "run" / "last" / "trainer.json").read_text())
    assert trainer["epoch"] == result.epochs  # and checkpointed
    # The schedule followed the budget: the last step ran past the cosine's midpoint (the rest of the
    # budget went to the final validation and checkpoint).
    assert last["lr"] < 0.5 * 1e-3


def test_budget_counts_earlier_sessions():
    clock = FakeClock(0.0)
    budget = Budget(60, spent=45, clock=clock)
    assert budget.fraction() == pytest.approx(0.75)
    assert budget.allows(15) and not budget.allows(16)
    with pytest.raises(TrainingError, match="positive"):
        Budget(0)


def test_poly_schedule_values():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    schedule = LRSchedule(opt, "poly", exponent=0.9)
    for fraction in (0.0, 0.25, 0.5, 0.99, 1.0):
        schedule.update(fraction)
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * (1 - fraction) ** 0.9)
    state = schedule.state_dict()
    other = LRSchedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-2), "poly")
    other.load_state_dict(state)
    assert other.optimizer.param_groups[0]["lr"] == pytest.approx(0.0)


def test_cosine_reaches_min_lr_and_warmup_is_linear():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    schedule = LRSchedule(opt, "cosine", min_lr=1e-6, warmup=0.1)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5)  # starts at lr / 100
    decay = 1e-6 + (1e-3 - 1e-6) * 0.5 * (1 + math.cos(math.pi * 0.05))
    schedule.update(0.05)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5 + (decay - 1e-5) * 0.5)
    schedule.update(0.1)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5 * (1 + math.cos(math.pi * 0.1)))
    schedule.update(1.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-6)
    with pytest.raises(TrainingError, match="warmup"):
        LRSchedule(opt, "poly", warmup=1.5)


def _parts(cfg: TrainConfig):
    data = volumes(1)
    loss = check_inputs(cfg, data, [])
    return build_parts(cfg, data, loss, torch.device("cpu"), Dist())


def test_gradient_clipping_bounds_the_norm():
    cfg = config(grad_clip=1e-3, optimizer="sgd", deep_supervision=False)
    parts = _parts(cfg)
    image, label = next(iter(parts.loader))
    train_step(cfg, parts, image, label)
    norm = torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for p in parts.model.parameters() if p.grad is not None])
    )
    assert norm <= 1e-3 * (1 + 1e-4)


def test_sgd_defaults_are_nnunets():
    parts = _parts(config(optimizer="sgd", scheduler="poly", deep_supervision=False))
    group = parts.optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (1e-2, 0.99, True, 3e-5)


def test_deep_supervision_is_on_by_default_where_the_decoder_has_levels():
    assert getattr(_parts(config()).model, "deep_supervision", False)
    assert not getattr(_parts(config(deep_supervision=False)).model, "deep_supervision", False)
    single_level = config(arch="pspnet", model_kwargs={"encoder_depth": 3})
    assert not getattr(_parts(single_level).model, "deep_supervision", False)


def test_fp16_with_a_grad_scaler_on_cpu():
    cfg = config(amp="fp16", deep_supervision=False)
    parts = _parts(cfg)
    assert isinstance(parts.scaler, torch.amp.GradScaler)
    image, label = next(iter(parts.loader))
    try:
        loss = train_step(cfg, parts, image, label)
    except RuntimeError as err:  # fp16 kernels are missing on some CPU builds
        pytest.skip(f"fp16 autocast not supported on this CPU build: {err}")
    assert torch.isfinite(loss)
    assert parts.scaler.get_scale() > 0
    with pytest.raises(TrainingError, match="fp16"):
        check_inputs(config(amp="fp8"), volumes(1), [])


def test_folds_split_reproducibly_and_written_once(tmp_path):
    names = [f"case{i}" for i in range(7)]
    splits = make_splits(names, 3, seed=1)
    assert splits == make_splits(list(reversed(names)), 3, seed=1)  # the listing order does not matter
    assert sorted(n for s in splits for n in s["val"]) == sorted(names)
    for s in splits:
        assert not set(s["train"]) & set(s["val"]) and len(s["train"]) + len(s["val"]) == 7
    path = tmp_path / "splits.json"
    train0, val0 = fold_split(names, 3, 0, path, seed=1)
    written = path.read_bytes()
    # Another seed later reuses the file: every fold of a cross-validation sees one split.
    assert fold_split(names, 3, 0, path, seed=99) == (train0, val0)
    assert path.read_bytes() == written
    with pytest.raises(TrainingError, match="other volumes"):
        fold_split(names + ["case7"], 3, 0, path)
    with pytest.raises(TrainingError, match="holds 3 folds"):
        fold_split(names, 4, 0, path)
    with pytest.raises(TrainingError, match="--fold must be in 0..2"):
        fold_split(names, 3, 3, path)
    data = [Volume(n, np.zeros((1, 4, 4), np.float32), np.zeros((4, 4), np.int64)) for n in names]
    train, val = fold_volumes(data, 3, 1, path)
    assert [v.name for v in val] == fold_split(names, 3, 1, path)[1]


def test_progress_and_preview_pictures_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    data = volumes()
    run = tmp_path / "run"
    fit(config(epochs=2, plots=True, checkpoint_dir=str(run)), data[:1], data[1:])
    for name in ("progress.png", "validation_preview.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(run.glob(".*.png"))  # no temporary file left behind


def test_cli_folds_write_the_split_beside_the_runs(tmp_path, capsys):
    from smp3d.cli import main

    pairs = []
    for i, volume in enumerate(volumes(3)):
        np.save(tmp_path / f"x{i}.npy", volume.image[0])
        np.save(tmp_path / f"y{i}.npy", volume.label.astype(np.uint8))
        pairs.append(f"{tmp_path / f'x{i}.npy'},{tmp_path / f'y{i}.npy'}")
    common = ["train", "--train-path", *pairs, "--spatial-dims", "2", "--classes", "3", "--patch", "16"]
    common += ["--iters", "1", "--epochs", "1", "--device", "cpu", "--no-progress", "--no-plots"]
    common += ["--model-kwargs", json.dumps(MODEL)]
    assert main([*common, "--folds", "3", "--fold", "2", "--checkpoint-dir", str(tmp_path / "runs/f2")]) == 0
    splits = json.loads((tmp_path / "runs/splits.json").read_text())
    trainer = json.loads((tmp_path / "runs/f2/last/trainer.json").read_text())
    assert len(splits) == 3 and trainer["config"]["fold"] == 2
    assert main([*common, "--folds", "3", "--fold", "0", "--val-path", pairs[0]]) == 2
    assert "drop --val-path" in capsys.readouterr().err
