"""The ``smp3d`` command line: ``smp3d demo``, ``smp3d plan``, ``smp3d train``, ``smp3d predict``,
``smp3d --version``.

``smp3d COMMAND --help`` lists every option with its default. ``smp3d train --config run.yaml``
reads options from a YAML file (:mod:`.config_file`); options on the command line override it, and
the run's effective options are saved as ``RUN_DIR/config.yaml``. Progress bars are drawn only
when stderr is a terminal (``--progress`` / ``--no-progress`` decide otherwise).

``python -m smp3d ...`` is the same program, so ``torchrun --nproc_per_node N -m smp3d train ...``
trains with DistributedDataParallel. A user error (a missing file or dataset, mismatched shapes,
an unknown loss, ...) prints one line and exits with status 2; set ``SMP3D_DEBUG=1`` to see the
traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from ..training.errors import TrainingError as CLIError
from ..training.volumes import NORMALIZATIONS
from .plan import add_data_geometry_arguments, add_plan_parser, add_planning_arguments

__all__ = ["CLIError", "build_parser", "command_parser", "main", "parse_arguments", "show_progress"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _overlap(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value}")
    return value


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({err.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse prints usage on errors; we print one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CLIError(message)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help line ends with its default: ``(required)``, ``(default: off)`` for a flag,
    ``(default: none)`` where nothing is set, or ``(default: VALUE)``; a help text that already
    says its default keeps its own words."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "(default:" in text or action.default is argparse.SUPPRESS:
            return text
        if action.required:
            return f"{text} (required)"
        if action.nargs == 0 and action.default is False:
            return f"{text} (default: off)"
        if action.default is None or action.default == []:
            return f"{text} (default: none)"
        return f"{text} (default: %(default)s)"


_PROGRESS_HELP = "progress bars on stderr; without them one line per epoch (default: only when stderr is a terminal)"


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``smp3d`` and its commands ``demo``, ``plan``, ``train`` and ``predict``."""
    return _build_parser(relaxed=False)


def _build_parser(relaxed: bool) -> argparse.ArgumentParser:
    """``relaxed``: no option required and no ``--help``, to find ``--config`` before the real parse."""
    from .. import __version__

    parser = _Parser(
        prog="smp3d", description="2D and 3D segmentation: demo, plan, train, predict.", add_help=not relaxed
    )
    parser.add_argument("--version", action="version", version=f"smp3d {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{demo,plan,train,predict}", parser_class=_Parser)
    required = not relaxed

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter, add_help=not relaxed)

    demo = command("demo", "train on built-in synthetic volumes and segment a held-out one")
    demo.add_argument("--epochs", type=_positive_int, default=10, help="training epochs")
    demo.add_argument("--iters", type=_positive_int, default=40, help="iterations per epoch")
    demo.add_argument("--size", type=_positive_int, default=64, help="edge of the training volumes")
    demo.add_argument("--train-volumes", type=_positive_int, default=6, help="how many training volumes to make")
    demo.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:N")
    demo.add_argument("--amp", action="store_true", help="bf16 autocast")
    demo.add_argument("--seed", type=int, default=0, help="seed of the volumes, the weights and the patches")
    demo.add_argument(
        "--out", type=Path, default=None, help="also save checkpoints and the held-out prediction here (default: none)"
    )
    demo.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    demo.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help=_PROGRESS_HELP)

    add_plan_parser(sub, formatter_class=_HelpFormatter, add_help=not relaxed)

    train = command("train", "train a model on HDF5, NIfTI or NumPy volumes")
    train.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="YAML",
        help="read options from this YAML file: every option below is a key, without its dashes (train_path, "
        "epochs, ...); options given on the command line override it; RUN_DIR/config.yaml is such a file "
        "(default: none)",
    )
    train.add_argument(
        "--plan",
        default=None,
        metavar="PLAN.json",
        help="train with this plan (smp3d plan); flags given override it "
        "(default: none, the training data is planned now)",
    )
    data = train.add_argument_group("data")
    data.add_argument(
        "--train-path",
        nargs="+",
        required=required,
        metavar="PATH",
        help="HDF5 files (/raw, /label), IMAGE,LABEL pairs (.nii, .nii.gz, .npy) or directories",
    )
    data.add_argument(
        "--val-path", nargs="+", default=[], metavar="PATH", help="validation volumes, same forms (default: none)"
    )
    data.add_argument("--raw-dataset", default="raw", help="HDF5 dataset with the image")
    data.add_argument("--label-dataset", default="label", help="HDF5 dataset with the label")
    data.add_argument(
        "--spatial-dims",
        type=int,
        choices=(2, 3),
        default=None,
        help="3: volumes (*, H, W, D); 2: images (*, H, W) (default: the plan's, else 3)",
    )
    data.add_argument("--normalize", choices=NORMALIZATIONS, default=None, help="intensity scaling (default: planned)")
    data.add_argument(
        "--patch",
        type=_positive_int,
        nargs="+",
        default=None,
        help="patch size in voxels, one or one per axis (default: planned)",
    )
    add_data_geometry_arguments(data, cache=True)
    data.add_argument(
        "--stride",
        type=_positive_int,
        nargs="+",
        default=None,
        help="grid stride of training patches; ignored with --iters (default: the patch)",
    )
    data.add_argument(
        "--foreground", type=float, default=0.33, help="with --iters: fraction of patches centred on a labelled voxel"
    )
    data.add_argument("--no-flip", action="store_true", help="no random flips")
    data.add_argument(
        "--flip-axes",
        type=int,
        nargs="+",
        default=None,
        metavar="AXIS",
        help="flip only these spatial axes (0-based), e.g. 0 for left-right only (default: all)",
    )
    data.add_argument(
        "--augment",
        choices=("nnunet", "flips", "none"),
        default="nnunet",
        help="batched augmentation on the training device: nnU-Net's transform set and probabilities, "
        "mirroring only, or nothing (docs/augment.md); mirroring uses the --flip-axes",
    )
    model = train.add_argument_group("model")
    model.add_argument(
        "--arch",
        default=None,
        help="unet, unetplusplus, fpn, deeplabv3plus, nnunet, mednext, ... (smp3d.create_model; default: planned; "
        "with --arch, --encoder or --model-kwargs the network is yours: unet, resnet18 for what you leave out)",
    )
    model.add_argument(
        "--encoder",
        default=None,
        help="encoder name (smp3d.list_encoders(), or tu-<timm model>) (default: planned; resnet18 with --arch)",
    )
    model.add_argument(
        "--encoder-weights", default=None, help="a tag, a .safetensors file or folder (default: none, random init)"
    )
    model.add_argument("--in-channels", type=_positive_int, default=None, help="image channels (default: the data's)")
    model.add_argument(
        "--classes",
        type=_positive_int,
        default=None,
        help="classes incl. background for class-index labels; channels for (C, *spatial) targets "
        "(default: the data's)",
    )
    model.add_argument(
        "--multilabel", action="store_true", help="targets are (C, *spatial) independent masks (--classes C)"
    )
    model.add_argument(
        "--deep-supervision",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a head per decoder level, trained with nnU-Net's 1/2**i weights "
        "(default: on when the architecture has decoder levels)",
    )
    model.add_argument(
        "--model-kwargs",
        type=_json_object,
        default=None,
        help="extra model arguments as JSON, e.g. '{\"encoder_depth\": 4}' (default: none)",
    )
    add_planning_arguments(train.add_argument_group("planning (without --plan)"))
    opt = train.add_argument_group("optimisation")
    opt.add_argument(
        "--loss", default="ce+dice", help="ce, wce, bce, dice, gdl, focal, tversky, lovasz, or a sum: ce+dice"
    )
    opt.add_argument("--ignore-index", type=int, default=None, help="label value left out of the loss and the metrics")
    opt.add_argument(
        "--batch-size", type=_positive_int, default=None, help="patches per training step (default: planned)"
    )
    opt.add_argument("--epochs", type=_positive_int, default=50, help="training epochs")
    opt.add_argument(
        "--iters",
        type=_positive_int,
        default=None,
        help="iterations per epoch on random patches (default: one pass over the patch grid)",
    )
    opt.add_argument(
        "--optimizer", choices=("adam", "adamw", "sgd"), default="adamw", help="sgd: Nesterov momentum (nnU-Net's)"
    )
    opt.add_argument(
        "--lr", type=float, default=None, help="initial learning rate (default: 0.001 for adam and adamw, 0.01 for sgd)"
    )
    opt.add_argument(
        "--weight-decay", type=float, default=None, help="weight decay (default: 1e-4 for adam and adamw, 3e-5 for sgd)"
    )
    opt.add_argument("--momentum", type=float, default=0.99, help="sgd's Nesterov momentum")
    opt.add_argument("--min-lr", type=float, default=1e-6, help="the floor of the cosine schedule")
    opt.add_argument(
        "--scheduler",
        choices=("cosine", "poly", "plateau", "constant"),
        default="cosine",
        help="cosine and poly follow the fraction of the run done (iterations, or time with --time-budget)",
    )
    opt.add_argument("--poly-exponent", type=float, default=0.9, help="poly schedule: lr * (1 - done) ** exponent")
    opt.add_argument(
        "--warmup", type=float, default=0.0, help="fraction of the run with a linear learning-rate warm-up"
    )
    opt.add_argument("--grad-clip", type=float, default=None, help="clip the gradients' norm (nnU-Net: 12)")
    opt.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="MINUTES",
        help="train for this long (the schedule follows the time spent; ends with a validation and checkpoint; "
        "--epochs is then ignored)",
    )
    opt.add_argument(
        "--patience",
        type=_positive_int,
        default=None,
        help="early stopping: validations without gain (default: none, never stop early)",
    )
    opt.add_argument("--validate-every", type=_positive_int, default=1, help="epochs between validations")
    opt.add_argument(
        "--val-overlap", type=_overlap, default=0.5, help="sliding-window overlap of validation, in [0, 1)"
    )
    opt.add_argument(
        "--folds", type=_positive_int, default=None, help="cross-validation: split the training volumes into FOLDS"
    )
    opt.add_argument("--fold", type=int, default=None, help="with --folds: the fold to validate on (0-based)")
    opt.add_argument(
        "--splits",
        type=Path,
        default=None,
        help="with --folds: the split file, written once (default: splits.json beside --checkpoint-dir)",
    )
    run = train.add_argument_group("run")
    run.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="run directory: best/, last/, metrics.csv, config.yaml go here (default: none, nothing saved)",
    )
    run.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="DIR",
        help="resume from DIR, or CHECKPOINT_DIR/last without DIR (default: start a new run)",
    )
    run.add_argument(
        "--overwrite", action="store_true", help="delete the run already in --checkpoint-dir and start again"
    )
    run.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:N")
    run.add_argument(
        "--amp",
        nargs="?",
        const="bf16",
        default=False,
        choices=("bf16", "fp16"),
        help="mixed precision: --amp or --amp bf16 for bf16 autocast, --amp fp16 for fp16 with a gradient scaler "
        "(default: off)",
    )
    run.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (memory pinned on CUDA)")
    run.add_argument("--no-plots", action="store_true", help="no progress.png / validation_preview.png")
    run.add_argument(
        "--checkpointing",
        choices=("none", "encoder", "decoder", "both"),
        default="none",
        help="activation checkpointing: recompute these blocks' activations in backward (less memory)",
    )
    run.add_argument("--seed", type=int, default=0, help="seed of the weights, patches and flips")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help=_PROGRESS_HELP)

    predict = command("predict", "segment images with a saved model")
    predict.add_argument(
        "--checkpoint",
        nargs="+",
        required=required,
        metavar="DIR",
        help="a run directory of smp3d train (its best/ is used), or a folder with config.json and "
        "model.safetensors (best/, last/, save_pretrained); several (e.g. folds) are ensembled",
    )
    predict.add_argument(
        "--input", nargs="+", required=required, metavar="FILE", help="HDF5 (/raw), NIfTI or .npy images"
    )
    predict.add_argument(
        "--output",
        required=required,
        help="output file (.h5: dataset 'predictions'; .nii/.nii.gz: the input's affine; .npy), "
        "or a directory for several inputs",
    )
    predict.add_argument(
        "--patch", type=_positive_int, nargs="+", default=None, help="window size (default: the training patch)"
    )
    predict.add_argument("--overlap", type=_overlap, default=0.5, help="sliding-window overlap, in [0, 1)")
    predict.add_argument(
        "--blend", choices=("gaussian", "constant"), default="gaussian", help="weighting of overlapping windows"
    )
    predict.add_argument("--batch-size", type=_positive_int, default=4, help="patches per forward pass")
    predict.add_argument("--probabilities", action="store_true", help="write probabilities instead of labels")
    predict.add_argument("--threshold", type=float, default=0.5, help="binary / multi-label threshold")
    predict.add_argument("--dataset", default="raw", help="HDF5 dataset with the image")
    predict.add_argument(
        "--spacing",
        type=float,
        nargs="+",
        default=None,
        metavar="MM",
        help="voxel size of HDF5/NumPy inputs (default: as in training)",
    )
    predict.add_argument(
        "--normalize", choices=NORMALIZATIONS, default=None, help="intensity scaling (default: as in training)"
    )
    predict.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:N")
    predict.add_argument(
        "--output-device",
        default=None,
        help="accumulate the output here, e.g. cpu for huge volumes (default: the --device)",
    )
    predict.add_argument(
        "--amp",
        nargs="?",
        const="bf16",
        default=False,
        choices=("bf16", "fp16"),
        help="mixed precision: --amp or --amp bf16 (CPU or GPU), --amp fp16 (GPU); docs/recipe.md says when it "
        "pays (default: off)",
    )
    predict.add_argument(
        "--tta",
        type=int,
        nargs="*",
        default=None,
        metavar="AXIS",
        help="test-time mirroring over these spatial axes (0-based; --tta alone: all), averaged (default: off)",
    )
    predict.add_argument(
        "--keep-largest",
        action="store_true",
        help="keep only the largest connected region of each class (the rest becomes background)",
    )
    predict.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help=_PROGRESS_HELP)
    predict.add_argument("--quiet", action="store_true", help="report written files on stderr instead of stdout")
    return parser


def show_progress(args: argparse.Namespace) -> bool:
    """``--progress`` / ``--no-progress`` as given, else progress bars only when stderr is a terminal
    (carriage-return updates do not belong in log files)."""
    if args.progress is not None:
        return bool(args.progress)
    return sys.stderr.isatty()


def command_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of the command ``name`` (``demo``, ``plan``, ``train``, ``predict``) inside ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise KeyError(name)


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; for ``train --config FILE`` the file's options come first, so that the
    options typed on the command line override them."""
    if not argv or argv[0] != "train":
        return parser.parse_args(argv)
    from .config_file import config_tokens

    relaxed = _build_parser(relaxed=True)  # the same options, none required: which --config was given?
    config = relaxed.parse_known_args(argv)[0].config
    if config is None:
        return parser.parse_args(argv)
    tokens = config_tokens(config, command_parser(parser, "train"))
    try:
        relaxed.parse_args(["train", *tokens])  # the file's own values checked, and named as the file's
    except CLIError as err:
        raise CLIError(f"--config {config}: {err}") from None
    try:
        return parser.parse_args(["train", *tokens, *argv[1:]])
    except CLIError as err:
        if "required" in str(err):
            raise CLIError(f"{err} (on the command line or as keys of --config {config})") from None
        raise


def _per_axis_ints(values: list[int] | None, spatial_dims: int, flag: str) -> tuple[int, ...] | None:
    if values is None:
        return None
    values = values * spatial_dims if len(values) == 1 else values
    if len(values) != spatial_dims:
        raise CLIError(f"{flag} takes 1 or {spatial_dims} sizes, got {len(values)}")
    return tuple(values)


def _run_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..training import Dist, TrainConfig, check_run_directory, fit, resolve_device
    from ..training.plan import write_plan
    from ..training.prepare import prepare_run
    from ..training.volumes import parse_label_map
    from .config_file import CONFIG_FILE, effective_config, write_config
    from .plan import per_axis, planning_options

    if not 0 <= args.foreground <= 1:
        raise CLIError(f"--foreground must be in [0, 1], got {args.foreground}")
    if args.resume is True and args.checkpoint_dir is None:
        raise CLIError("--resume without a folder needs --checkpoint-dir (resumes CHECKPOINT_DIR/last)")
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if args.checkpoint_dir is not None and main_rank:
        # Before reading the data: an occupied or existing run directory is refused at once.
        check_run_directory(args.checkpoint_dir, resume=args.resume is not None, overwrite=args.overwrite)
    plan = args.plan
    if plan is None and int(os.environ.get("WORLD_SIZE", "1")) > 1 and (args.patch is None or args.batch_size is None):
        # Every process would measure its own trial steps and could settle on different patches.
        raise CLIError("under torchrun, plan first (smp3d plan DATA -o plan.json) and pass --plan plan.json")
    kept = args.checkpoint_dir / "plan.json" if args.checkpoint_dir is not None else None
    if plan is None and args.resume is not None and kept is not None and kept.is_file():
        plan = kept  # a resumed run keeps its plan rather than measuring again
    dims = args.spatial_dims or 3
    overrides = dict(
        arch=args.arch,
        encoder=args.encoder,
        model_kwargs=args.model_kwargs,
        in_channels=args.in_channels,
        classes=args.classes,
        patch=_per_axis_ints(args.patch, dims, "--patch"),
        batch_size=args.batch_size,
        normalize=args.normalize,
        target_spacing=per_axis(args.target_spacing, dims, "--target-spacing"),
        image_resampling=args.image_resampling,
        label_resampling=args.label_resampling,
    )
    device = resolve_device(args.device, Dist()) if plan is None else None
    run = prepare_run(
        args.train_path,
        args.val_path,
        plan=plan,
        overrides=overrides,
        spatial_dims=args.spatial_dims,
        spacing=per_axis(args.spacing, dims, "--spacing"),
        label_map=parse_label_map(args.label_map),
        raw_key=args.raw_dataset,
        label_key=args.label_dataset,
        planning=planning_options(args, dims, device) if plan is None else None,
        cache_dir=args.cache_dir,
        log=lambda line: print(line, flush=True) if main_rank else None,
    )
    fields = run.config
    if args.checkpoint_dir is not None and main_rank:
        # The run's options, file and command line merged: `smp3d train --config RUN_DIR/config.yaml` repeats it.
        args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        write_config(args.checkpoint_dir / CONFIG_FILE, effective_config(args, command_parser(parser, "train")))
    stride = _per_axis_ints(args.stride, fields["spatial_dims"], "--stride")
    multilabel = args.multilabel or run.plan.multilabel and args.classes is None
    mode = "multilabel" if multilabel else ("binary" if fields["classes"] == 1 else "multiclass")
    train_volumes, val_volumes = run.train, run.val
    if args.folds is not None or args.fold is not None:
        train_volumes, val_volumes = _fold(args, train_volumes, val_volumes)
    config = TrainConfig(
        **fields,
        deep_supervision=args.deep_supervision,
        encoder_weights=args.encoder_weights,
        mode=mode,
        loss=args.loss,
        ignore_index=args.ignore_index,
        stride=stride,
        epochs=args.epochs,
        iters=args.iters,
        foreground=args.foreground,
        flip=False if args.no_flip else (tuple(args.flip_axes) if args.flip_axes else True),
        augment=args.augment,
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        momentum=args.momentum,
        min_lr=args.min_lr,
        scheduler=args.scheduler,
        poly_exponent=args.poly_exponent,
        warmup=args.warmup,
        grad_clip=args.grad_clip,
        time_budget=args.time_budget,
        workers=args.workers,
        folds=args.folds,
        fold=args.fold,
        plots=not args.no_plots,
        patience=args.patience,
        validate_every=args.validate_every,
        val_overlap=args.val_overlap,
        checkpoint_dir=str(args.checkpoint_dir) if args.checkpoint_dir else None,
        device=args.device,
        amp=args.amp,
        checkpointing=args.checkpointing,
        seed=args.seed,
        progress=show_progress(args),
    )
    if main_rank:
        print(
            f"train: {config.arch} {config.encoder}, patch {list(config.patch)}, batch {config.batch_size}, "
            f"normalize {config.normalize}, spacing {config.target_spacing}",
            flush=True,
        )
        if kept is not None and plan != kept:
            write_plan(run.plan, kept)
    resume = None
    if args.resume is not None:
        resume = args.checkpoint_dir / "last" if args.resume is True else Path(args.resume)
    result = fit(
        config,
        train_volumes,
        val_volumes,
        resume=resume,
        overwrite=args.overwrite,
        log=lambda line: print(line, flush=True),
    )
    if main_rank:
        summary = f"done: {result.epochs} epochs, {result.iterations} iterations in {result.seconds:.1f}s"
        if val_volumes:
            summary += f"; best val_mean_dice_foreground {result.best_dice:.4f}"
        if config.checkpoint_dir:
            summary += f"; checkpoints in {config.checkpoint_dir}, options in {args.checkpoint_dir / CONFIG_FILE}"
        print(summary, flush=True)
    return 0


def _fold(args: argparse.Namespace, train_volumes: list, val_volumes: list) -> tuple[list, list]:
    """``--folds K --fold k``: fold k of the training volumes validates, the others train."""
    from ..training.folds import fold_volumes

    if args.folds is None or args.fold is None:
        raise CLIError("--folds and --fold go together, e.g. --folds 5 --fold 0")
    if val_volumes:
        raise CLIError("--folds takes the validation volumes from --train-path; drop --val-path")
    splits = args.splits
    if splits is None:
        if args.checkpoint_dir is None:
            raise CLIError("--folds needs --splits FILE or --checkpoint-dir (the splits go beside it)")
        splits = Path(args.checkpoint_dir).parent / "splits.json"
    return fold_volumes(train_volumes, args.folds, args.fold, splits, seed=args.seed)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    command = argv[0] if argv and not argv[0].startswith("-") else None
    prog = f"smp3d {command}" if command in ("demo", "plan", "train", "predict") else "smp3d"

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # type: ignore[no-untyped-def]
        # A warning on the command line is one line too, e.g. a stale run lock that was taken over.
        print(f"{prog}: warning: {message}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        return _dispatch(parser, argv, prog)


def _dispatch(parser: argparse.ArgumentParser, argv: list[str], prog: str) -> int:
    try:
        args = parse_arguments(parser, argv)
        if args.command is None:
            parser.print_help()
            return 2
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(args)
        if args.command == "plan":
            from .plan import run_plan

            return run_plan(args)
        if args.command == "train":
            return _run_train(args, parser)
        from .predict import run_predict

        return run_predict(args)
    except CLIError as err:
        if os.environ.get("SMP3D_DEBUG"):
            raise
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, TypeError, OSError) as err:
        # Our library's own refusals (unknown encoder, bad strides, ...) are user errors here too.
        if os.environ.get("SMP3D_DEBUG"):
            raise
        message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        first = message.strip().splitlines()[0] if message.strip() else type(err).__name__
        print(f"{prog}: error: {first}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
