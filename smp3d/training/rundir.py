"""The run directory: a lock for the run's life, checkpoints committed as one unit, and recovery.

Layout (``docs/reliability.md``, "Run directories"): ``last/``, ``best/``, ``metrics.csv``,
``tensorboard/`` and ``run.lock``. A checkpoint is written into ``.commit-<epoch>.tmp/``, flushed,
and committed by renaming that folder to ``.commit-<epoch>/`` (one atomic rename). The commit is
then rolled forward: ``last/`` and ``best/`` are swapped in by renames and ``metrics.csv``
replaced. Every step of the roll-forward can be repeated, so a run killed at any instant leaves
either the previous state (plus a temporary folder the next run deletes) or a committed folder
the next run finishes moving into place.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .checkpoints import (
    METRICS_FILE,
    TRAINER_FILE,
    CheckpointFiles,
    fsync_directory,
    pause_point,
    write_checkpoint,
    write_file,
)
from .errors import TrainingError
from .metric_log import read_rows

LOCK_FILE = "run.lock"
#: What a run owns in its directory (``--overwrite`` deletes these and nothing else).
RUN_ENTRIES = ("last", "best", METRICS_FILE, "tensorboard")
COMMIT_PREFIX = ".commit-"
TEMP_SUFFIX = ".tmp"


# -- the lock ------------------------------------------------------------------------------------
def _process_start(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks) of ``pid`` from /proc, or None where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return (fields[0], fields[19]) if len(fields) > 19 else None


def _owner_alive(record: dict[str, Any]) -> bool | None:
    """Whether the process named by a lock record runs; None when this host cannot tell."""
    pid, host = record.get("pid"), record.get("host")
    if host != socket.gethostname() or not isinstance(pid, int) or os.name == "nt":
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    status = _process_start(pid)
    if status is not None:
        state, start = status
        if state in ("Z", "X"):  # killed, not yet reaped
            return False
        if record.get("start") is not None and record["start"] != start:  # the pid was reused
            return False
    return True


def _try_flock(fd: int) -> bool | None:
    """Take an exclusive advisory lock on ``fd``: True, False when another process holds it, None
    where the platform or filesystem has no such locks (then the pid in the file decides)."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


def _describe_owner(record: dict[str, Any] | None) -> str:
    if not record:
        return "a process that has not written its pid yet"
    return f"pid {record.get('pid')} on {record.get('host')}, started {record.get('started', '?')}"


def _in_use(lock: Path, record: dict[str, Any] | None, ask_to_delete: bool = False) -> str:
    hint = f"; if that run is gone, delete {lock}" if ask_to_delete else ""
    return (
        f"{lock.parent} is in use by another training run ({_describe_owner(record)}); wait for it to end or "
        f"choose another --checkpoint-dir{hint}"
    )


class RunLock:
    """``run.lock``: held (``flock``) by the run that owns the directory, naming its pid and host.
    A lock left by a process that died is taken over with a warning."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, warn: Callable[[str], None]) -> None:
        own = os.getpid()
        start = _process_start(own)
        record = {
            "pid": own,
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "start": start[1] if start else None,
        }
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise TrainingError(f"cannot create the lock {self.path}: {err.strerror}") from None
            try:
                locked = _try_flock(fd)
                previous = _read_record(fd)
                if locked is False:
                    raise TrainingError(_in_use(self.path, previous))
                if locked is None and previous:  # no flock here: the pid in the file decides
                    alive = _owner_alive(previous)
                    if alive is not False:
                        raise TrainingError(_in_use(self.path, previous, ask_to_delete=alive is None))
                if not _same_file(fd, self.path):  # the owner deleted it while we waited: lock the new one
                    os.close(fd)
                    continue
                if previous:
                    warn(
                        f"{self.path}: took over the lock of a run that is no longer running "
                        f"({_describe_owner(previous)})"
                    )
                data = json.dumps(record).encode("utf-8")
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, data)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            return

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if _same_file(self._fd, self.path):
                self.path.unlink()
        finally:
            os.close(self._fd)
            self._fd = None


def _read_record(fd: int) -> dict[str, Any] | None:
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, 4096)
    if not data.strip():
        return None
    try:
        record = json.loads(data)
    except ValueError:
        return {"pid": "?", "host": "?"}
    return record if isinstance(record, dict) else {"pid": "?", "host": "?"}


def _same_file(fd: int, path: Path) -> bool:
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (here.st_dev, here.st_ino)


def read_lock(directory: Path) -> dict[str, Any] | None:
    """The record of ``directory``'s lock when a live process holds it, else None."""
    path = Path(directory) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        locked = _try_flock(fd)
        record = _read_record(fd)
        if locked is False or (locked is None and record and _owner_alive(record) is not False):
            return record or {}
        return None
    finally:
        os.close(fd)  # closing drops a lock we took just to look


# -- the directory -------------------------------------------------------------------------------
class RunDirectory:
    """A run directory owned by this process (rank 0). Use :func:`open_run_directory`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock = RunLock(self.path / LOCK_FILE)

    # state -----------------------------------------------------------------------------------
    def pending_commits(self) -> list[Path]:
        return sorted(p for p in self.path.glob(f"{COMMIT_PREFIX}*") if p.is_dir() and not p.name.endswith(TEMP_SUFFIX))

    def holds_run(self) -> bool:
        """Whether a run has committed anything here (a checkpoint, or metrics rows)."""
        if (self.path / "last").is_dir() or (self.path / "best").is_dir() or self.pending_commits():
            return True
        metrics = self.path / METRICS_FILE
        try:
            return metrics.exists() and bool(read_rows(metrics))
        except (OSError, UnicodeDecodeError):
            return True

    def committed_epoch(self) -> int | None:
        """The epoch of ``last/`` (None without one)."""
        trainer = self.path / "last" / TRAINER_FILE
        try:
            return int(json.loads(trainer.read_text(encoding="utf-8"))["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        epoch = self.committed_epoch()
        if epoch is not None:
            return f"last/ at epoch {epoch}"
        found = [name for name in RUN_ENTRIES if (self.path / name).exists()]
        return ", ".join(found) or "an interrupted checkpoint"

    # recovery --------------------------------------------------------------------------------
    def recover(self, log: Callable[[str], None]) -> None:
        """Finish a commit that a killed run had made, then delete the temporary files it left."""
        for commit in self.pending_commits():
            log(f"completing the checkpoint an interrupted run had committed ({commit.name})")
            self._roll_forward(commit, epoch=None)
        removed = 0
        for folder in (self.path, self.path / "last", self.path / "best"):
            if not folder.is_dir():
                continue
            for entry in folder.iterdir():
                if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX):
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
                    removed += 1
        if removed:
            log(f"removed {removed} temporary file(s) an interrupted run left in {self.path}")

    def clear(self) -> None:
        """Delete what a previous run wrote here (``--overwrite``); other files stay."""
        for commit in self.pending_commits():
            shutil.rmtree(commit)
        for name in RUN_ENTRIES:
            entry = self.path / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            elif entry.exists() or entry.is_symlink():
                entry.unlink()

    # writing ---------------------------------------------------------------------------------
    def write_metrics(self, data: bytes) -> None:
        """Replace ``metrics.csv`` atomically (at the start of a run: the committed rows)."""
        temp = self.path / f".{METRICS_FILE}.{os.getpid()}{TEMP_SUFFIX}"
        temp.unlink(missing_ok=True)
        try:
            write_file(temp, data)
            os.replace(temp, self.path / METRICS_FILE)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def commit(self, files: CheckpointFiles, epoch: int) -> None:
        """Write and commit the checkpoint of ``epoch`` as one unit. A write error (a full disk)
        leaves the previous checkpoint as it was and raises a one-line :class:`TrainingError`."""
        staging = self.path / f"{COMMIT_PREFIX}{epoch:06d}{TEMP_SUFFIX}"
        committed = self.path / f"{COMMIT_PREFIX}{epoch:06d}"
        try:
            if staging.exists():
                shutil.rmtree(staging)
            write_checkpoint(staging, files, epoch)
            pause_point("commit", epoch)
            os.rename(staging, committed)
        except OSError as err:
            shutil.rmtree(staging, ignore_errors=True)
            raise TrainingError(self._write_error(err, files.nbytes, epoch)) from err
        fsync_directory(self.path)
        self._roll_forward(committed, epoch)

    def _roll_forward(self, commit: Path, epoch: int | None) -> None:
        """Move a committed checkpoint into place; safe to repeat after a kill at any step."""
        for part in ("last", "best"):
            new = commit / part
            if not new.is_dir():
                continue
            current, old = self.path / part, commit / f"replaced-{part}"
            if current.exists():
                if old.exists():
                    shutil.rmtree(old)
                os.rename(current, old)
            if part == "last" and epoch is not None:
                pause_point("rollforward-last", epoch)
            os.rename(new, current)
        if epoch is not None:
            pause_point("rollforward-metrics", epoch)
        metrics = commit / METRICS_FILE
        if metrics.exists():
            os.replace(metrics, self.path / METRICS_FILE)
        fsync_directory(self.path)
        shutil.rmtree(commit)

    def _write_error(self, err: OSError, needed: int, epoch: int) -> str:
        try:
            free = f"{shutil.disk_usage(self.path).free} bytes are free there"
        except OSError:
            free = "free space unknown"
        previous = self.committed_epoch()
        kept = (
            f"the last good checkpoint {self.path / 'last'} (epoch {previous}) is intact"
            if previous is not None
            else "no checkpoint was committed yet"
        )
        return (
            f"cannot write the checkpoint of epoch {epoch} to {err.filename or self.path}: {err.strerror}; "
            f"it needs {needed} bytes ({needed / 1e6:.1f} MB), {free}; {kept}"
        )

    def close(self) -> None:
        self.lock.release()


def refusal(directory: Path, description: str) -> str:
    return (
        f"--checkpoint-dir {directory} already holds a training run ({description}); continue it with --resume "
        f"or start again with --overwrite (deletes its last/, best/ and metrics.csv)"
    )


def check_run_directory(directory: str | os.PathLike, *, resume: bool, overwrite: bool) -> None:
    """Refuse early what :func:`open_run_directory` would refuse: both flags, a directory in use,
    or an existing run without ``resume`` or ``overwrite``. Takes no lock."""
    if resume and overwrite:
        raise TrainingError("--resume and --overwrite exclude each other: continue the run, or start again")
    path = Path(directory)
    if not path.is_dir():
        if path.exists():
            raise TrainingError(f"--checkpoint-dir {path} is a file, not a directory")
        return
    holder = read_lock(path)
    if holder is not None:
        raise TrainingError(_in_use(path / LOCK_FILE, holder))
    run = RunDirectory(path)
    if not (resume or overwrite) and run.holds_run():
        raise TrainingError(refusal(path, run.describe()))


def open_run_directory(
    directory: str | os.PathLike,
    *,
    resume: bool,
    overwrite: bool,
    log: Callable[[str], None],
    warn: Callable[[str], None],
) -> RunDirectory:
    """Create or open ``directory`` for a run: take its lock, finish or clean up what an
    interrupted run left, and refuse an existing run unless ``resume`` (continue it) or
    ``overwrite`` (delete it first) is given."""
    if resume and overwrite:
        raise TrainingError("--resume and --overwrite exclude each other: continue the run, or start again")
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise TrainingError(f"--checkpoint-dir {path} is a file, not a directory")
    path.mkdir(parents=True, exist_ok=True)
    run = RunDirectory(path)
    run.lock.acquire(warn)
    try:
        run.recover(log)
        if overwrite:
            run.clear()
        elif not resume and run.holds_run():
            raise TrainingError(refusal(path, run.describe()))
    except BaseException:
        run.close()
        raise
    return run


__all__ = [
    "LOCK_FILE",
    "RUN_ENTRIES",
    "RunDirectory",
    "RunLock",
    "check_run_directory",
    "open_run_directory",
    "read_lock",
]
