"""Batched augmentation: smp3d.augment against batchgeneratorsv2 (nnU-Net's own transforms).

Both run nnU-Net's default transform set for a 3D isotropic patch (rotation up to 30 degrees per
axis, scaling 0.7-1.4, Gaussian noise, Gaussian blur, brightness, contrast, simulated low
resolution, inverted gamma, gamma, mirroring) on the same batch, in one process, taking turns:

- ``nnunet``: nnU-Net's probabilities (what a training step costs on average);
- ``all-on``: every transform on every sample (p = 1, every channel), the worst case.

batchgeneratorsv2 works on one sample at a time (as nnU-Net's data-loader workers do); smp3d takes
the batch at once. smp3d resamples labels by nearest neighbour by default; nnU-Net resamples them
as one-hot linear, which smp3d also offers (``label_mode="linear"``): both are timed. Each library
gets a fresh copy of the batch each step (the copy is timed for both). Every step reseeds both
libraries' generators with the step number, so both see a comparable series of random draws.

    pip install -e .[bench]          # batchgeneratorsv2
    OMP_NUM_THREADS=1 python benchmarks/augment.py                       # CPU, one thread each
    python benchmarks/augment.py --device cuda --iters 50                # smp3d on the GPU as well

Prints one line per case and the ratio batchgeneratorsv2 / smp3d (above 1: smp3d is faster) and
writes the numbers as JSON (``--out``, default ``benchmarks/runs/augment_<device>.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from smp3d.augment import Augment, preset

ROTATION_DEGREES = 30.0


def smp3d_pipeline(size: int, all_on: bool, label_mode: str) -> Augment:
    augment = preset("nnunet", 3, (size,) * 3, label_mode=label_mode, classes=3, seed=0)
    if all_on:
        augment.spatial.p_rotation = augment.spatial.p_scaling = 1.0
        for transform in augment.intensity:
            transform.p = 1.0
            if hasattr(transform, "p_per_channel"):
                transform.p_per_channel = 1.0
    return augment


def batchgenerators_pipeline(size: int, all_on: bool):
    """nnU-Net's ``get_training_transforms`` for a 3D isotropic patch, without deep supervision."""
    from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
    from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
    from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
    from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
    from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
    from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
    from batchgeneratorsv2.transforms.utils.random import RandomTransform
    from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTransform

    def p(value: float) -> float:
        return 1.0 if all_on else value

    angle = ROTATION_DEGREES / 180 * math.pi
    return ComposeTransforms(
        [
            SpatialTransform(
                (size,) * 3,
                patch_center_dist_from_border=0,
                random_crop=False,
                p_elastic_deform=0,
                p_rotation=p(0.2),
                rotation=(-angle, angle),
                p_scaling=p(0.2),
                scaling=(0.7, 1.4),
                p_synchronize_scaling_across_axes=1,
                bg_style_seg_sampling=False,
                border_mode_seg="constant",
                padding_value_seg=-1,
            ),
            RandomTransform(
                GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_channel=1, synchronize_channels=True),
                apply_probability=p(0.1),
            ),
            RandomTransform(
                GaussianBlurTransform(
                    blur_sigma=(0.5, 1.0),
                    synchronize_channels=False,
                    synchronize_axes=False,
                    p_per_channel=p(0.5),
                    benchmark=True,
                ),
                apply_probability=p(0.2),
            ),
            RandomTransform(
                MultiplicativeBrightnessTransform(
                    multiplier_range=BGContrast((0.75, 1.25)), synchronize_channels=False, p_per_channel=1
                ),
                apply_probability=p(0.15),
            ),
            RandomTransform(
                ContrastTransform(
                    contrast_range=BGContrast((0.75, 1.25)),
                    preserve_range=True,
                    synchronize_channels=False,
                    p_per_channel=1,
                ),
                apply_probability=p(0.15),
            ),
            RandomTransform(
                SimulateLowResolutionTransform(
                    scale=(0.5, 1),
                    synchronize_channels=False,
                    synchronize_axes=True,
                    ignore_axes=None,
                    allowed_channels=None,
                    p_per_channel=p(0.5),
                ),
                apply_probability=p(0.25),
            ),
            RandomTransform(
                GammaTransform(
                    gamma=BGContrast((0.7, 1.5)),
                    p_invert_image=1,
                    synchronize_channels=False,
                    p_per_channel=1,
                    p_retain_stats=1,
                ),
                apply_probability=p(0.1),
            ),
            RandomTransform(
                GammaTransform(
                    gamma=BGContrast((0.7, 1.5)),
                    p_invert_image=0,
                    synchronize_channels=False,
                    p_per_channel=1,
                    p_retain_stats=1,
                ),
                apply_probability=p(0.3),
            ),
            MirrorTransform(allowed_axes=(0, 1, 2)),
            RemoveLabelTransform(-1, 0),
        ]
    )


def make_batch(batch: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth random image (B, 1, S, S, S) and a 3-class label (B, S, S, S) thresholded from it."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, 1, *(max(2, size // 16),) * 3, generator=g)
    image = torch.nn.functional.interpolate(coarse, size=(size,) * 3, mode="trilinear", align_corners=False)
    image = (image - image.mean()) / image.std()
    label = (image[:, 0] > 0.3).long() + (image[:, 0] > 1.0).long()
    return image.contiguous(), label.contiguous()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_smp3d(augment: Augment, image: torch.Tensor, label: torch.Tensor, step: int) -> float:
    augment.manual_seed(step)
    _sync(image.device)
    started = time.perf_counter()
    x, y = image.clone(), label.clone()
    augment(x, y)
    _sync(image.device)
    return time.perf_counter() - started


def time_batchgenerators(pipeline, image: torch.Tensor, label: torch.Tensor, step: int) -> float:
    torch.manual_seed(step)
    np.random.seed(step)
    started = time.perf_counter()
    for b in range(image.shape[0]):
        pipeline(image=image[b].clone(), segmentation=label[b][None].clone().to(torch.int16))
    return time.perf_counter() - started


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def summary(times: list[float]) -> dict[str, float]:
    return {"mean_s": statistics.fmean(times), "median_s": statistics.median(times), "runs": len(times)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="patch edge (voxels)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=20, help="timed steps per case (after one warm-up)")
    parser.add_argument("--cases", nargs="+", default=["nnunet", "all-on"], choices=["nnunet", "all-on"])
    parser.add_argument("--device", default="cpu", help="smp3d's device (batchgeneratorsv2 always runs on the CPU)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (both libraries)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/runs/...)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    image, label = make_batch(args.batch, args.size)
    on_device = image.to(device), label.to(device)
    rows = []
    for case in args.cases:
        all_on = case == "all-on"
        ours = {mode: smp3d_pipeline(args.size, all_on, mode) for mode in ("nearest", "linear")}
        theirs = batchgenerators_pipeline(args.size, all_on)
        times: dict[str, list[float]] = {"smp3d": [], "smp3d_linear_labels": [], "batchgeneratorsv2": []}
        for step in range(args.iters + 1):  # step 0 warms up
            measured = {
                "smp3d": time_smp3d(ours["nearest"], *on_device, step),
                "smp3d_linear_labels": time_smp3d(ours["linear"], *on_device, step),
                "batchgeneratorsv2": time_batchgenerators(theirs, image, label, step),
            }
            if step:
                for key, value in measured.items():
                    times[key].append(value)
        row = {"case": case, **{key: summary(value) for key, value in times.items()}}
        bg = row["batchgeneratorsv2"]["mean_s"]
        row["ratio_bg2_over_smp3d"] = bg / row["smp3d"]["mean_s"]
        row["ratio_bg2_over_smp3d_linear_labels"] = bg / row["smp3d_linear_labels"]["mean_s"]
        rows.append(row)
        linear = row["smp3d_linear_labels"]["mean_s"]
        print(
            f"{case:7s} batch {args.batch}x1x{args.size}^3  smp3d ({device.type}) "
            f"{row['smp3d']['mean_s'] * 1000:8.1f} ms  (linear labels {linear * 1000:8.1f} ms)"
            f"  batchgeneratorsv2 (cpu) {bg * 1000:8.1f} ms  ratio bg2/smp3d {row['ratio_bg2_over_smp3d']:.2f}"
            f" (linear labels {row['ratio_bg2_over_smp3d_linear_labels']:.2f})",
            flush=True,
        )
    from importlib.metadata import version

    record = {
        "benchmark": "augment",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "threads": args.threads,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "batch": [args.batch, 1, args.size, args.size, args.size],
        "iters": args.iters,
        "torch": torch.__version__,
        "batchgeneratorsv2": version("batchgeneratorsv2"),
        "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "rows": rows,
    }
    out = args.out or Path(__file__).parent / "runs" / f"augment_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=out.parent, suffix=".tmp", delete=False) as handle:
        json.dump(record, handle, indent=2)
    os.replace(handle.name, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
