"""``smp3d demo``: train the planned network on built-in synthetic volumes and segment a held-out one.

The volumes are noisy scenes of blobs: class 1 is bright spheres, class 2 dark cuboids, on a
background with a smooth intensity bias, all under strong voxel noise (a single voxel's
intensity does not tell its class; its neighbourhood does). Everything runs through the same
code as ``smp3d train`` and ``smp3d predict``: the plan (its network for this device, with a 32^3
patch given so that no trial step is spent), the patch sampler, the augmentation, deep
supervision, the loss, the sliding window.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..metrics import SegmentationMetrics
from ..training import (
    Dist,
    RunDirectory,
    TrainConfig,
    TrainingError,
    Volume,
    dice_table,
    fit,
    normalize,
    write_prediction,
)
from ..training.distributed import resolve_device
from ..training.fingerprint import fingerprint_volumes
from ..training.plan import make_plan
from . import show_progress
from .predict import predict_volume, to_labels

CLASS_NAMES = ["background", "sphere", "cuboid"]


def synthetic_volume(shape: tuple[int, ...], rng: np.random.Generator, blobs: int = 10, noise: float = 0.7) -> Volume:
    """One noisy scene of spheres (class 1) and cuboids (class 2) in ``len(shape)`` dimensions."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    label = np.zeros(shape, dtype=np.int64)
    for _ in range(blobs):
        kind = 1 + int(rng.integers(2))
        radius = rng.uniform(4.0, min(shape) / 5)
        centre = np.array([rng.uniform(radius, s - radius) for s in shape], dtype=np.float32)
        offset = grid - centre.reshape(-1, *([1] * len(shape)))
        if kind == 1:
            inside = (offset**2).sum(0) <= radius**2
        else:
            half = radius * rng.uniform(0.6, 1.0, size=len(shape))
            inside = np.all(np.abs(offset) <= half.reshape(-1, *([1] * len(shape))), axis=0)
        label[inside] = kind
    intensity = np.array([0.0, 1.5, -1.5], dtype=np.float32)[label]
    bias = np.zeros(shape, dtype=np.float32)
    for axis, size in enumerate(shape):  # a smooth field the network must learn to ignore
        phase = rng.uniform(0, 2 * np.pi)
        bias += 0.3 * np.sin(grid[axis] / size * np.pi + phase)
    image = intensity + bias + rng.normal(0.0, noise, size=shape).astype(np.float32)
    return Volume(name="synthetic", image=image[None].astype(np.float32), label=label)


def run_demo(args: Any) -> int:
    if args.out and not args.overwrite and RunDirectory(Path(args.out)).holds_run():
        raise TrainingError(f"--out {args.out} already holds a training run; replace it with --overwrite")
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    shape = (args.size,) * 3
    train = [synthetic_volume(shape, rng) for _ in range(args.train_volumes)]
    val = [synthetic_volume(shape, rng)]
    test = synthetic_volume((args.size + 32, args.size + 16, args.size), rng, blobs=16)
    for v in train + val + [test]:
        v.image = normalize(v.image, "zscore")
    plan = make_plan(
        fingerprint_volumes(train), device=resolve_device(args.device, Dist()), patch=(32, 32, 32), modality="none"
    )
    config = TrainConfig(
        arch=plan.arch,
        encoder=plan.encoder,
        model_kwargs=plan.model_kwargs,
        in_channels=1,
        classes=3,
        spatial_dims=3,
        mode="multiclass",
        loss="ce+dice",
        patch=(32, 32, 32),
        batch_size=4,
        epochs=args.epochs,
        iters=args.iters,
        optimizer="adamw",
        lr=3e-3,
        weight_decay=1e-4,
        min_lr=1e-4,
        checkpoint_dir=str(args.out) if args.out else None,
        device=args.device,
        amp=args.amp,
        seed=args.seed,
        progress=show_progress(args),
    )
    print(
        f"smp3d demo: {len(train)} training volumes {shape}, 1 validation volume, held-out volume "
        f"{test.spatial_shape}; planned {config.arch}({config.encoder}, {len(config.model_kwargs['strides'])} stages), "
        f"patches {config.patch}, batch {config.batch_size}, "
        f"{config.epochs} epochs x {config.iters} iterations",
        flush=True,
    )
    torch.manual_seed(args.seed)
    result = fit(
        config,
        train,
        val,
        overwrite=args.overwrite,
        class_names=CLASS_NAMES,
        log=lambda line: print(line, flush=True),
    )
    model = result.model
    if result.best_state is not None:  # segment with the best validated weights
        model.load_state_dict(result.best_state)
    model.eval()
    device = next(model.parameters()).device
    probabilities = predict_volume(
        model,
        test,
        patch=config.patch,
        overlap=0.5,
        batch_size=8,
        blend="gaussian",
        mode="multiclass",
        device=device,
        amp=config.amp,
        progress=show_progress(args),
    )
    predicted = torch.from_numpy(to_labels(probabilities, "multiclass").astype(np.int64))
    truth = torch.from_numpy(test.label)  # type: ignore[arg-type]
    metrics = SegmentationMetrics("multiclass", num_classes=3)
    metrics.update(predicted[None], truth[None])
    scores = metrics.compute()
    dice, mean = scores["dice"], float(scores["mean_dice_foreground"])
    print(f"held-out volume {test.spatial_shape}, sliding window 32^3 patches, overlap 0.5, gaussian blend:")
    print(dice_table(CLASS_NAMES, [float(d) for d in dice]))
    if args.out:
        out = Path(args.out) / "heldout_prediction.nii.gz"
        write_prediction(out, predicted.numpy().astype(np.uint8), test)
        print(f"wrote {out}")
    print(f"time={time.perf_counter() - started:.1f}s device={device}")
    print(f"mean_dice_foreground={mean:.4f}")
    return 0
