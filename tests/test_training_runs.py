"""Training runs lose nothing: ``smp3d train`` killed (SIGKILL) at any instant resumes exactly as
the uninterrupted run; an existing run is never overwritten silently; one run at a time owns a
directory; a full disk keeps the last good checkpoint. See docs/reliability.md, "Run directories"."""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import smp3d
from smp3d.cli import main
from smp3d.training import TrainingError, checkpoints, open_run_directory, rundir

EPOCHS = 6
MODEL = '{"encoder_depth": 3, "decoder_channels": [16, 8, 4]}'
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}


def _pair(folder: Path, name: str, seed: int) -> str:
    rng = np.random.default_rng(seed)
    label = np.zeros((32, 32), dtype=np.uint8)
    for c in (1, 2):
        y, x = rng.integers(0, 24, size=2)
        label[y : y + 8, x : x + 8] = c
    image = label.astype(np.float32) + rng.normal(0, 0.3, label.shape).astype(np.float32)
    np.save(folder / f"{name}_x.npy", image)
    np.save(folder / f"{name}_y.npy", label)
    return f"{folder / f'{name}_x.npy'},{folder / f'{name}_y.npy'}"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("data")
    return _pair(folder, "train", 0), _pair(folder, "val", 1)


def train_argv(data: tuple[str, str], ckpt: Path, *extra: str, epochs: int = EPOCHS) -> list[str]:
    """A 2D, 3-class run of a small Unet: 2 iterations of batch 2 per epoch, validated every epoch."""
    return [
        "train", "--train-path", data[0], "--val-path", data[1], "--spatial-dims", "2", "--classes", "3",
        "--patch", "16", "--batch-size", "2", "--iters", "2", "--epochs", str(epochs), "--device", "cpu",
        "--model-kwargs", MODEL, "--checkpoint-dir", str(ckpt), "--no-progress", *extra,
    ]  # fmt: skip


def start(argv: list[str], log: Path, pause: str | None = None) -> subprocess.Popen:
    env = dict(ENV)
    if pause is not None:
        env.update(SMP3D_TEST_PAUSE_AT=pause, SMP3D_TEST_PAUSE_FILE=str(log.with_suffix(".paused")))
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "smp3d", *argv], stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_paused(proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    """Wait until the process signals that it reached its pause point."""
    ready, deadline = log.with_suffix(".paused"), time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run did not reach its pause point (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def state(folder: Path) -> dict:
    return torch.load(folder / "training_state.pt", weights_only=True)


def assert_same(a: object, b: object, where: str = "state") -> None:
    """Equal structures with bitwise-equal tensors."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def leftovers(ckpt: Path) -> list[str]:
    names = [p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*")]
    return [n for n in names if n.split("/")[-1].startswith(".") or n.endswith(".tmp") or n == "run.lock"]


@pytest.fixture(scope="module")
def reference(data: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run of EPOCHS epochs, in a process of its own like the killed ones."""
    ckpt = tmp_path_factory.mktemp("reference") / "run"
    log = ckpt.with_suffix(".log")
    proc = start(train_argv(data, ckpt), log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    return ckpt


# (pause point, epoch it pauses in, the epoch the next run must resume from)
KILLS = [
    ("stage", 2, 1),  # inside the checkpoint write: weights written, optimizer state not
    ("commit", 2, 1),  # checkpoint staged and flushed, not committed
    ("rollforward-last", 2, 2),  # committed; the old last/ moved aside, the new one not in place
    ("rollforward-metrics", 3, 3),  # last/ and best/ in place, metrics.csv not yet
    ("train", 5, 4),  # an epoch's steps done, nothing of it written
]


def test_killed_at_any_point_resumes_exactly(data, reference, tmp_path, capsys):
    ckpt = tmp_path / "run"
    resumes_from = None
    for i, (point, epoch, committed) in enumerate(KILLS):
        log = tmp_path / f"kill{i}.log"
        proc = start(train_argv(data, ckpt, *(["--resume"] if i else [])), log, pause=f"{point}:{epoch}")
        wait_paused(proc, log)
        if resumes_from is not None:
            assert f"at epoch {resumes_from}, iteration {2 * resumes_from}" in log.read_text(), log.read_text()
        if point == "commit":  # while it holds the directory, a second run is refused, naming it
            code = main(train_argv(data, ckpt, "--resume"))
            err = capsys.readouterr().err.strip().splitlines()
            assert code == 2 and len(err) == 1, err
            assert f"is in use by another training run (pid {proc.pid} on {socket.gethostname()}" in err[0]
            with pytest.raises(TrainingError, match=f"pid {proc.pid}"):
                open_run_directory(ckpt, resume=True, overwrite=False, log=print, warn=print)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        resumes_from = committed

    log = tmp_path / "final.log"
    proc = start(train_argv(data, ckpt, "--resume"), log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    out = log.read_text()
    assert f"at epoch {resumes_from}, iteration {2 * resumes_from}" in out
    assert "warning:" in out and "took over the lock of a run that is no longer running" in out  # the killed run's

    # Same weights, optimizer and scheduler state, counters and metrics as the uninterrupted run.
    for part in ("last", "best"):
        assert_same(load_file(ckpt / part / "model.safetensors"), load_file(reference / part / "model.safetensors"))
    assert_same(state(ckpt / "last"), state(reference / "last"))
    assert state(ckpt / "last")["epoch"] == EPOCHS and state(ckpt / "last")["iteration"] == 2 * EPOCHS
    best, want = (json.loads((run / "best" / "trainer.json").read_text()) for run in (ckpt, reference))
    assert best["config"].pop("checkpoint_dir") == str(ckpt) and want["config"].pop("checkpoint_dir")
    assert best == want
    got, want = rows(ckpt / "metrics.csv"), rows(reference / "metrics.csv")
    assert [r["epoch"] for r in got] == [str(e) for e in range(1, EPOCHS + 1)]
    for row in got + want:
        row.pop("seconds")
    assert got == want
    assert (ckpt / "metrics.csv").read_bytes() == (ckpt / "last" / "metrics.csv").read_bytes()
    assert leftovers(ckpt) == []  # temporary folders of the killed runs removed, lock released


def test_existing_run_refused_then_overwritten(data, reference, tmp_path, capsys):
    ckpt = tmp_path / "run"
    shutil.copytree(reference, ckpt)
    (ckpt / "notes.txt").write_text("mine")
    before = {p: p.read_bytes() for p in (ckpt / "metrics.csv", ckpt / "last" / "model.safetensors")}

    assert main(train_argv(data, ckpt, epochs=1)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("smp3d train: error: --checkpoint-dir"), err
    assert f"already holds a training run (last/ at epoch {EPOCHS})" in err[0]
    assert "--resume" in err[0] and "--overwrite" in err[0]
    assert {p: p.read_bytes() for p in before} == before

    assert main(train_argv(data, ckpt, "--resume", "--overwrite")) == 2
    assert "exclude each other" in capsys.readouterr().err

    assert main(train_argv(data, ckpt, "--overwrite", epochs=1)) == 0
    assert [r["epoch"] for r in rows(ckpt / "metrics.csv")] == ["1"]
    assert state(ckpt / "last")["epoch"] == 1
    assert (ckpt / "notes.txt").read_text() == "mine"  # only what a run writes is replaced
    assert leftovers(ckpt) == []


def test_runs_of_older_versions(data, reference, tmp_path, capsys):
    """Before checkpoints were one unit: duplicated metrics rows are cut to the committed epochs
    on resume, and a torn last/ (weights of one epoch, optimizer of another) is refused."""
    ckpt = tmp_path / "run"
    shutil.copytree(reference, ckpt)
    (ckpt / "last" / "metrics.csv").unlink()
    old = rows(reference / "metrics.csv")
    with open(ckpt / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(old[0]))
        writer.writeheader()
        writer.writerows([*old, old[-1], {**old[-1], "epoch": str(EPOCHS + 1)}])  # a repeated and a lost epoch
    assert main(train_argv(data, ckpt, "--resume")) == 0  # all epochs done: nothing to train
    assert [r["epoch"] for r in rows(ckpt / "metrics.csv")] == [str(e) for e in range(1, EPOCHS + 1)]

    trainer = json.loads((ckpt / "last" / "trainer.json").read_text())
    (ckpt / "last" / "trainer.json").write_text(json.dumps({**trainer, "epoch": EPOCHS + 1}))
    capsys.readouterr()
    assert main(train_argv(data, ckpt, "--resume")) == 2
    err = capsys.readouterr().err
    assert f"the weights are of epoch {EPOCHS + 1} but training_state.pt of epoch {EPOCHS}" in err


def test_stale_lock_and_leftovers_are_recovered(data, tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ckpt = tmp_path / "run"
    (ckpt / ".commit-000001.tmp" / "last").mkdir(parents=True)
    (ckpt / ".commit-000001.tmp" / "last" / "model.safetensors").write_bytes(b"half")
    (ckpt / ".metrics.csv.123.tmp").write_text("epoch\n")
    record = {"pid": dead.pid, "host": socket.gethostname(), "started": "yesterday"}
    (ckpt / "run.lock").write_text(json.dumps(record))

    assert main(train_argv(data, ckpt, epochs=1)) == 0
    out, err = capsys.readouterr()
    assert f"smp3d train: warning: {ckpt / 'run.lock'}: took over the lock" in err and f"pid {dead.pid}" in err
    assert "removed 2 temporary file(s)" in out
    assert leftovers(ckpt) == []


@pytest.mark.parametrize("alive", [True, False])
def test_lock_without_flock_decides_by_pid(tmp_path, monkeypatch, alive):
    """Where the filesystem has no flock, the pid in the lock decides: a live one (or one on
    another host) refuses, a dead one is taken over with a warning."""
    monkeypatch.setattr(rundir, "_try_flock", lambda fd: None)
    if alive:
        pid = os.getppid()
    else:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        pid = dead.pid
    ckpt = tmp_path / "run"
    ckpt.mkdir()
    (ckpt / "run.lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    warnings: list[str] = []
    if alive:
        with pytest.raises(TrainingError, match=f"in use by another training run \\(pid {pid} on"):
            open_run_directory(ckpt, resume=False, overwrite=False, log=print, warn=warnings.append)
        (ckpt / "run.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
        with pytest.raises(TrainingError, match="if that run is gone, delete"):
            open_run_directory(ckpt, resume=False, overwrite=False, log=print, warn=warnings.append)
        return
    run = open_run_directory(ckpt, resume=False, overwrite=False, log=print, warn=warnings.append)
    assert len(warnings) == 1 and f"pid {pid}" in warnings[0]
    assert json.loads((ckpt / "run.lock").read_text())["pid"] == os.getpid()
    run.close()
    assert not (ckpt / "run.lock").exists()


def test_full_disk_keeps_the_last_good_checkpoint(data, tmp_path, capsys, monkeypatch):
    ckpt = tmp_path / "run"

    class FullDisk:
        """A file on a disk that fills up halfway through it, as ``write(2)`` reports it."""

        def __init__(self, path, mode):
            self.file = open(path, mode)  # noqa: SIM115 (closed by __exit__)

        def write(self, data):
            self.file.write(bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    def disk_fills_in_epoch_2(path, mode="r", *args, **kwargs):
        if Path(path).name == "training_state.pt" and ".commit-000002" in str(path):
            return FullDisk(path, mode)
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(checkpoints, "open", disk_fills_in_epoch_2, raising=False)  # the module's file writes
    assert main(train_argv(data, ckpt, epochs=2)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith("smp3d train: error: cannot write the checkpoint of epoch 2 to ")
    assert "training_state.pt: No space left on device; it needs " in line and " bytes (" in line
    assert f"the last good checkpoint {ckpt / 'last'} (epoch 1) is intact" in line
    assert leftovers(ckpt) == []
    smp3d.from_pretrained(ckpt / "last")  # loads
    assert state(ckpt / "last")["epoch"] == 1 and [r["epoch"] for r in rows(ckpt / "metrics.csv")] == ["1"]

    monkeypatch.delattr(checkpoints, "open")  # space freed: the run continues
    assert main(train_argv(data, ckpt, "--resume", epochs=2)) == 0
    assert [r["epoch"] for r in rows(ckpt / "metrics.csv")] == ["1", "2"]


def test_best_is_written_only_when_it_improves(data, reference):
    """best/ shares last/'s files of the epoch that improved (hard links): nothing is stored twice."""
    best = json.loads((reference / "best" / "trainer.json").read_text())
    improved = [
        r
        for r in rows(reference / "metrics.csv")
        if float(r["val_mean_dice_foreground"]) == best["val_mean_dice_foreground"]
    ]
    assert int(improved[0]["epoch"]) == best["epoch"]
    weights = reference / "best" / "model.safetensors"
    if best["epoch"] == EPOCHS:
        assert os.path.samefile(weights, reference / "last" / "model.safetensors")
    assert os.stat(weights).st_nlink == 1 + (best["epoch"] == EPOCHS)
    files = sorted(p.name for p in (reference / "last").iterdir())
    assert files == [
        "README.md",
        "config.json",
        "metrics.csv",
        "model.safetensors",
        "trainer.json",
        "training_state.pt",
    ]
