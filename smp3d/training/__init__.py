"""``smp3d.training``: the engine behind ``smp3d train`` as a library.

Train from Python with the same behaviour as the command line::

    from smp3d.training import TrainConfig, fit, load_volumes

    train = load_volumes(["data/train/"], spatial_dims=3)
    val = load_volumes(["data/val.h5"], spatial_dims=3)
    config = TrainConfig(arch="unet", encoder="resnet34", classes=3, patch=(96, 96, 64),
                         epochs=100, iters=250, checkpoint_dir="runs/exp1")
    result = fit(config, train, val)             # resume=True continues runs/exp1
    model = result.model

Modules, each with one job: :mod:`.config` (what defines a run), :mod:`.volumes` (files in and
out), :mod:`.patches` (training patches), :mod:`.build` (model, loss, optimizer, schedule),
:mod:`.distributed` (ranks and devices), :mod:`.evaluation` (validation Dice), :mod:`.schedule`
(learning-rate schedule, time budget, precision), :mod:`.folds` (cross-validation splits),
:mod:`.plots` (progress pictures), :mod:`.loop`
(the epochs), :mod:`.checkpoints` (what a checkpoint holds), :mod:`.rundir` (the run directory:
lock, atomic commits, recovery) and :mod:`.metric_log` (metrics rows); :mod:`.fingerprint`,
:mod:`.plan`, :mod:`.budget` and :mod:`.geometry` (planning, resampling) and :mod:`.prepare` (a planned
run's config and volumes). The run directory's contract is in ``docs/reliability.md``.
"""

from __future__ import annotations

from .build import build_loss, build_model, build_optimizer, build_scheduler, check_patch_fits_model
from .checkpoints import Progress, load_training_state, read_trainer_file
from .config import TrainConfig
from .distributed import Dist, resolve_device
from .errors import TrainingError
from .evaluation import activate, dice_table, evaluate, foreground_classes, to_target
from .fingerprint import Fingerprint, fingerprint_volumes, read_fingerprint
from .folds import fold_split, fold_volumes
from .loop import TrainResult, fit, set_seed
from .patches import PatchDataset, window_starts
from .plan import Plan, make_plan, read_plan, write_plan
from .prepare import PreparedRun, prepare_run
from .rundir import RunDirectory, check_run_directory, open_run_directory
from .schedule import NNUNET_OPTIMISATION, Budget, LRSchedule
from .volumes import (
    NORMALIZATIONS,
    Volume,
    expand_specs,
    load_volumes,
    normalize,
    prepare_volume,
    read_volume,
    read_volumes,
    write_prediction,
)

__all__ = [
    "NORMALIZATIONS",
    "Fingerprint",
    "Plan",
    "PreparedRun",
    "fingerprint_volumes",
    "make_plan",
    "prepare_run",
    "prepare_volume",
    "read_fingerprint",
    "read_plan",
    "read_volumes",
    "write_plan",
    "NNUNET_OPTIMISATION",
    "Budget",
    "LRSchedule",
    "fold_split",
    "fold_volumes",
    "Dist",
    "PatchDataset",
    "Progress",
    "RunDirectory",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "Volume",
    "activate",
    "build_loss",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "check_patch_fits_model",
    "check_run_directory",
    "dice_table",
    "evaluate",
    "expand_specs",
    "fit",
    "foreground_classes",
    "load_training_state",
    "load_volumes",
    "normalize",
    "open_run_directory",
    "read_trainer_file",
    "read_volume",
    "resolve_device",
    "set_seed",
    "to_target",
    "window_starts",
    "write_prediction",
]
