"""``smp3d plan DATA... -o plan.json``, and the planning flags ``smp3d train`` shares with it.
Argument parsing and messages only; the rules live in :mod:`smp3d.training.plan`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..training.errors import TrainingError as CLIError
from ..training.geometry import IMAGE_RESAMPLING, LABEL_RESAMPLING
from ..training.plan import MODALITIES

__all__ = ["add_data_geometry_arguments", "add_planning_arguments", "add_plan_parser", "planning_options", "run_plan"]


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def add_data_geometry_arguments(group: argparse._ArgumentGroup, cache: bool = False) -> None:
    """``--spacing`` and ``--label-map``: how files are read (plan and train); ``--cache-dir`` (train)."""
    group.add_argument(
        "--spacing",
        type=_positive_float,
        nargs="+",
        default=None,
        metavar="MM",
        help="voxel size of HDF5/NumPy files (one or per axis; NIfTI files carry their own) (default: 1)",
    )
    group.add_argument(
        "--label-map", default=None, metavar="OLD:NEW,...", help="remap label values on load, e.g. 4:3,9:0"
    )
    if cache:
        group.add_argument(
            "--cache-dir",
            default=None,
            metavar="DIR",
            help="keep the normalised, resampled volumes here and reuse them in later runs",
        )


def add_planning_arguments(group: argparse._ArgumentGroup) -> None:
    """The flags that steer a plan (plan and train)."""
    budget = group.add_mutually_exclusive_group()
    budget.add_argument(
        "--budget-gb", type=_positive_float, default=None, help="GPU memory per step, measured (default: 8 on CUDA)"
    )
    budget.add_argument(
        "--budget-seconds-per-step",
        type=_positive_float,
        default=None,
        help="seconds per training step, measured (default: 2.0 on the CPU)",
    )
    group.add_argument(
        "--network",
        default=None,
        help="resenc, plain, light, or a registered encoder (default: resenc on CUDA, light on the CPU)",
    )
    group.add_argument(
        "--base-channels",
        type=int,
        default=None,
        help="first-stage width of the resenc/plain/light network (default: 32, nnU-Net's; light: 16)",
    )
    group.add_argument(
        "--modality",
        choices=MODALITIES,
        default="auto",
        help="ct: clip and z-score with dataset statistics; mr/other: per-volume z-score in the non-zero mask; "
        "auto: ct when every channel reaches below -500",
    )
    group.add_argument(
        "--target-spacing",
        type=_positive_float,
        nargs="+",
        default=None,
        metavar="MM",
        help="voxel size to resample to (default: planned)",
    )
    group.add_argument(
        "--image-resampling", choices=IMAGE_RESAMPLING, default=None, help="image interpolation (default: linear)"
    )
    group.add_argument(
        "--label-resampling", choices=LABEL_RESAMPLING, default=None, help="label interpolation (default: nearest)"
    )


def add_plan_parser(sub: Any, **kwargs: Any) -> argparse.ArgumentParser:
    """Add ``smp3d plan`` to the subcommands ``sub`` (``kwargs``: more arguments of its parser)."""
    text = "fingerprint a labelled dataset and write an editable plan.json"
    plan = sub.add_parser("plan", help=text, description=text, **kwargs)
    plan.add_argument("data", nargs="+", metavar="DATA", help="HDF5 files, IMAGE,LABEL pairs or directories")
    plan.add_argument("-o", "--output", required=True, help="the plan file to write (JSON)")
    plan.add_argument(
        "--spatial-dims", type=int, choices=(2, 3), default=3, help="3: volumes (*, H, W, D); 2: images (*, H, W)"
    )
    plan.add_argument("--raw-dataset", default="raw", help="HDF5 dataset with the image")
    plan.add_argument("--label-dataset", default="label", help="HDF5 dataset with the label")
    plan.add_argument("--device", default="auto", help="where the trial steps run: auto, cpu, cuda, cuda:N")
    plan.add_argument("--amp", action="store_true", help="trial steps in bf16 autocast")
    add_data_geometry_arguments(plan)
    add_planning_arguments(plan)
    return plan


def per_axis(values: list[float] | None, spatial_dims: int, flag: str) -> tuple[float, ...] | None:
    """One value or one per axis -> a tuple per axis."""
    if values is None:
        return None
    values = values * spatial_dims if len(values) == 1 else values
    if len(values) != spatial_dims:
        raise CLIError(f"{flag} takes 1 or {spatial_dims} values, got {len(values)}")
    return tuple(values)


def planning_options(args: argparse.Namespace, spatial_dims: int, device: Any) -> dict[str, Any]:
    """``make_plan`` arguments from the planning flags."""
    options: dict[str, Any] = dict(
        network=args.network,
        device=device,
        budget_gb=args.budget_gb,
        budget_seconds_per_step=args.budget_seconds_per_step,
        modality=args.modality,
        target_spacing=per_axis(args.target_spacing, spatial_dims, "--target-spacing"),
        amp=args.amp,
        base_channels=args.base_channels,
    )
    if args.image_resampling:
        options["image_resampling"] = args.image_resampling
    if args.label_resampling:
        options["label_resampling"] = args.label_resampling
    return options


def run_plan(args: argparse.Namespace) -> int:
    from ..training import Dist, resolve_device
    from ..training.fingerprint import read_fingerprint
    from ..training.plan import make_plan, write_plan
    from ..training.volumes import parse_label_map

    spacing = per_axis(args.spacing, args.spatial_dims, "--spacing")
    label_map = parse_label_map(args.label_map)
    device = resolve_device(args.device, Dist())
    fingerprint, _ = read_fingerprint(
        args.data,
        args.spatial_dims,
        spacing=spacing,
        label_map=label_map,
        raw_key=args.raw_dataset,
        label_key=args.label_dataset,
    )
    print(f"fingerprint: {len(fingerprint.shapes)} volumes, {fingerprint.channels} channel(s)", file=sys.stderr)
    plan = make_plan(
        fingerprint, label_map=label_map, spacing=spacing, **planning_options(args, args.spatial_dims, device)
    )
    write_plan(plan, args.output)
    for note in plan.notes:
        print(f"plan: {note}")
    print(f"network: {plan.arch} {plan.encoder} {plan.model_kwargs}")
    print(f"wrote {args.output}")
    return 0
