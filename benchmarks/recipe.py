"""The training recipe against a MONAI script, at equal wall time, on two real tasks.

Variants, each given ``--minutes`` of training on one CPU thread (or the device given):

(a) ``recipe``: ``smp3d train`` with its plan and nothing else: :func:`smp3d.training.plan.make_plan`
    on the training volumes' fingerprint chooses the network (on a CPU ``light``: nnU-Net's residual
    encoder with one block per stage and a strided first stage), the patch and the batch by trial
    steps against ``--recipe-budget`` seconds per step (default: the planner's), then
    :class:`smp3d.training.TrainConfig`'s defaults train it (nnU-Net's augmentation, deep
    supervision, AdamW with cosine decay following the time budget). ``--recipe-optimizer sgd``
    swaps in nnU-Net's SGD (:data:`smp3d.training.schedule.NNUNET_OPTIMISATION`).
(b) ``defaults``: yesterday's ``smp3d train`` defaults: Unet(resnet18), AdamW 1e-3 with cosine
    decay, random flips, the fixed patch, no deep supervision (the same time budget).
(c) ``monai``: the script a MONAI user writes: ``monai.networks.nets.UNet`` (channels 16-256,
    strides 2, two residual units: 4.8M parameters in 3D), DiceCE loss, Adam 1e-3, MONAI's
    ``RandCropByPosNegLabeld`` (1:1 positive/negative crops) and ``RandFlipd``, and MONAI's
    ``sliding_window_inference`` at test time.

Tasks: ``brain``: Colin27 T1 with the AAL atlas grouped into 7 structures
(``examples/brain_regions/prepare.py``; ``apt-get install mricron-data``); train on the left
hemisphere (and its mirror image), test on the right. ``nuclei``: the DSB-2018 nuclei image and
mask shipped in the ``stardist`` wheel (``pip download --no-deps stardist``; unzip; the folder with
``img2d.tif`` is ``--stardist-data``), 2D foreground vs background; train on the left half, test
on the right. Test Dice per class is computed on the held-out part with the sliding window.

    OMP_NUM_THREADS=1 python benchmarks/recipe.py --minutes 20 --tasks brain nuclei
    OMP_NUM_THREADS=1 python benchmarks/recipe.py --minutes 2 --tasks nuclei --variants recipe monai

Writes ``benchmarks/runs/recipe_<tasks>_<minutes>min.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VARIANTS = ("recipe", "defaults", "monai")


# -- data -------------------------------------------------------------------------------------------
def brain_task(data_dir: Path) -> dict:
    """Colin27/AAL-7: train = the left hemisphere and its mirror, test = the right hemisphere."""
    from smp3d.training import load_volumes

    out = Path(tempfile.mkdtemp(prefix="recipe_brain_"))
    subprocess.run(
        [sys.executable, str(ROOT / "examples/brain_regions/prepare.py"), "--data-dir", str(data_dir)]
        + ["--out", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    pair = lambda name: f"{out}/{name}_image.nii.gz,{out}/{name}_label.nii.gz"  # noqa: E731
    train = load_volumes([pair("train"), pair("train_mirror")], 3, normalization="none")
    test = load_volumes([pair("test")], 3, normalization="none")
    names = json.loads((out / "classes.json").read_text())
    return {
        "name": "brain",
        "spatial_dims": 3,
        "classes": len(names),
        "class_names": names,
        "train": train,
        "test": test,
        "patch": (64, 64, 64),
        "batch": 2,
        "flip": (0,),  # left-right only: anatomy is not symmetric along the other axes
    }


def nuclei_task(data_dir: Path) -> dict:
    """DSB-2018 nuclei (stardist's img2d/mask2d): train = left half, test = right half."""
    import tifffile

    from smp3d.training import Volume

    image = tifffile.imread(data_dir / "img2d.tif").astype(np.float32)
    mask = (tifffile.imread(data_dir / "mask2d.tif") > 0).astype(np.uint8)
    image = (image - image.mean()) / image.std()
    half = image.shape[1] // 2

    def volume(name: str, region: slice) -> Volume:
        return Volume(name, np.ascontiguousarray(image[None, :, region]), np.ascontiguousarray(mask[:, region]))

    return {
        "name": "nuclei",
        "spatial_dims": 2,
        "classes": 2,
        "class_names": ["background", "nucleus"],
        "train": [volume("left", slice(0, half))],
        "test": [volume("right", slice(half, None))],
        "patch": (128, 128),
        "batch": 8,
        "flip": True,
    }


# -- the three variants ------------------------------------------------------------------------------
def smp3d_config(task: dict, variant: str, minutes: float, args: argparse.Namespace):
    from smp3d.training import TrainConfig
    from smp3d.training.schedule import NNUNET_OPTIMISATION

    common = dict(
        in_channels=1,
        classes=task["classes"],
        spatial_dims=task["spatial_dims"],
        patch=task["patch"],
        batch_size=task["batch"],
        iters=args.iters,
        flip=task["flip"],
        normalize="none",
        time_budget=minutes,
        device=args.device,
        progress=False,
        plots=False,
        seed=args.seed,
    )
    if variant == "defaults":
        return TrainConfig(arch="unet", encoder="resnet18", deep_supervision=False, augment="flips", **common)
    from smp3d.training import Dist, resolve_device
    from smp3d.training.fingerprint import fingerprint_volumes
    from smp3d.training.plan import make_plan

    plan = make_plan(
        fingerprint_volumes(task["train"]),
        device=resolve_device(args.device, Dist()),
        budget_seconds_per_step=args.recipe_budget,
        network=args.recipe_network,
    )
    fields = plan.config_fields()
    fields["normalize"] = "none"  # the task's volumes are normalised already
    common.update(patch=fields.pop("patch"), batch_size=fields.pop("batch_size"))
    config = TrainConfig(**{**fields, **{k: v for k, v in common.items() if k not in fields}})
    if args.recipe_optimizer == "sgd":
        config = replace(config, **NNUNET_OPTIMISATION)
    if args.recipe_lr:
        config = replace(config, lr=args.recipe_lr)
    return config


def run_smp3d(task: dict, variant: str, minutes: float, args: argparse.Namespace) -> dict:
    from smp3d.training import fit

    config = smp3d_config(task, variant, minutes, args)
    result = fit(config, task["train"], [], log=lambda line: None)
    model = result.model.eval()
    params = sum(p.numel() for p in model.parameters())
    return {
        "steps": result.iterations,
        "train_seconds": result.seconds,
        "params": params,
        "model": model,
        "patch": tuple(config.patch),
        "describe": f"{config.arch}({config.encoder}, {config.model_kwargs}) {config.optimizer} lr {config.lr} "
        f"{config.scheduler}, augment {config.augment}, "
        f"deep supervision {getattr(model, 'deep_supervision', False)}, patch {config.patch} x{config.batch_size}",
    }


def run_monai(task: dict, minutes: float, args: argparse.Namespace) -> dict:
    """What a MONAI user writes: UNet, DiceCE, random pos/neg crops with flips, Adam."""
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet
    from monai.transforms import Compose, RandCropByPosNegLabeld, RandFlipd

    device = torch.device("cpu" if args.device == "auto" and not torch.cuda.is_available() else args.device)
    if device.type == "auto":
        device = torch.device("cuda")
    torch.manual_seed(args.seed)
    dims = task["spatial_dims"]
    model = UNet(
        spatial_dims=dims,
        in_channels=1,
        out_channels=task["classes"],
        channels=(16, 32, 64, 128, 256),
        strides=(2, 2, 2, 2),
        num_res_units=2,
    ).to(device)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    flip_axes = range(dims) if task["flip"] is True else task["flip"]
    transform = Compose(
        [
            RandCropByPosNegLabeld(
                keys=["image", "label"],
                label_key="label",
                spatial_size=task["patch"],
                pos=1,
                neg=1,
                num_samples=task["batch"],
            ),
            *[RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=a) for a in flip_axes],
        ]
    )
    transform.set_random_state(seed=args.seed)
    samples = [{"image": v.image, "label": v.label[None].astype(np.float32)} for v in task["train"]]
    rng = np.random.default_rng(args.seed)
    steps, started = 0, time.perf_counter()
    model.train()
    while time.perf_counter() - started < minutes * 60:
        crops = transform(samples[int(rng.integers(len(samples)))])
        image = torch.stack([torch.as_tensor(c["image"]) for c in crops]).float().to(device)
        label = torch.stack([torch.as_tensor(c["label"]) for c in crops]).float().to(device)
        optimizer.zero_grad()
        loss = loss_fn(model(image), label)
        loss.backward()
        optimizer.step()
        steps += 1
    seconds = time.perf_counter() - started
    params = sum(p.numel() for p in model.parameters())
    return {
        "steps": steps,
        "train_seconds": seconds,
        "params": params,
        "model": model.eval(),
        "describe": f"monai UNet 16-256 x2 res units, DiceCE, Adam 1e-3, patch {task['patch']} x{task['batch']}",
        "monai": True,
    }


# -- scoring -----------------------------------------------------------------------------------------
@torch.no_grad()
def test_dice(model: torch.nn.Module, task: dict, device: str, monai: bool = False) -> list[float]:
    """Per-class Dice of the argmax on the test volumes (all voxels pooled), sliding window at overlap 0.5."""
    classes = task["classes"]
    overlap = np.zeros(classes)
    sizes = np.zeros(classes)
    dev = next(model.parameters()).device
    for volume in task["test"]:
        image = torch.from_numpy(volume.image)[None].to(dev)
        if monai:
            from monai.inferers import sliding_window_inference

            logits = sliding_window_inference(image, task["patch"], 4, model, overlap=0.5, mode="gaussian")
        else:
            from smp3d.inference import sliding_window_inference

            logits = sliding_window_inference(model, image, task["patch"], overlap=0.5, batch_size=4)
        prediction = logits.argmax(1)[0].cpu().numpy()
        label = volume.label
        for c in range(classes):
            p, t = prediction == c, label == c
            overlap[c] += 2 * np.logical_and(p, t).sum()
            sizes[c] += p.sum() + t.sum()
    return [float(o / s) if s else math.nan for o, s in zip(overlap, sizes, strict=True)]


def markdown(rows: list[dict]) -> str:
    lines = [
        "| task | variant | mean fg Dice | per-class Dice | steps | train s | params | setup |",
        "|---|---|---:|---|---:|---:|---:|---|",
    ]
    for r in rows:
        per = " ".join(f"{d:.3f}" for d in r["dice"])
        lines.append(
            f"| {r['task']} | {r['variant']} | {r['mean_foreground_dice']:.3f} | {per} | {r['steps']} | "
            f"{r['train_seconds']:.0f} | {r['params'] / 1e6:.2f}M | {r['describe']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0, help="training time of each variant")
    parser.add_argument("--tasks", nargs="+", choices=("brain", "nuclei"), default=["brain", "nuclei"])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--brain-data", type=Path, default=Path("/usr/share/mricron/templates"))
    parser.add_argument("--stardist-data", type=Path, default=Path("/tmp/sd/stardist/data/images"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: variants side by side are fair)")
    parser.add_argument("--iters", type=int, default=50, help="smp3d: iterations per epoch (the budget ends the run)")
    parser.add_argument(
        "--recipe-budget", type=float, default=None, help="(a): seconds per step to plan for (default: the planner's)"
    )
    parser.add_argument("--recipe-network", default=None, help="(a): the planned network (default: the planner's)")
    parser.add_argument(
        "--recipe-optimizer",
        choices=("default", "sgd"),
        default="default",
        help="(a): smp3d train's default optimiser (AdamW), or nnU-Net's SGD (momentum 0.99 needs many steps)",
    )
    parser.add_argument("--recipe-lr", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.tasks:
        task = brain_task(args.brain_data) if name == "brain" else nuclei_task(args.stardist_data)
        for variant in args.variants:
            print(f"[{name}] {variant}: training {args.minutes:g} min ...", flush=True)
            torch.manual_seed(args.seed)
            if variant == "monai":
                result = run_monai(task, args.minutes, args)
            else:
                result = run_smp3d(task, variant, args.minutes, args)
            patch = result.get("patch", task["patch"])  # each model predicts with the patch it trained on
            dice = test_dice(result["model"], {**task, "patch": patch}, args.device, monai=result.get("monai", False))
            foreground = [d for d in dice[1:] if not math.isnan(d)]
            row = {
                "task": name,
                "variant": variant,
                "dice": dice,
                "class_names": task["class_names"],
                "mean_foreground_dice": float(np.mean(foreground)) if foreground else math.nan,
                "steps": result["steps"],
                "train_seconds": result["train_seconds"],
                "params": result["params"],
                "describe": result["describe"],
            }
            rows.append(row)
            print(markdown([row]).splitlines()[-1], flush=True)
    table = markdown(rows)
    print(table)
    out = args.out or HERE / "runs" / f"recipe_{'_'.join(args.tasks)}_{args.minutes:g}min.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "minutes": args.minutes,
        "threads": args.threads,
        "device": args.device,
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(sys.argv),
    }
    temp = out.with_suffix(".json.tmp")
    temp.write_text(json.dumps({"meta": meta, "rows": rows, "table": table}, indent=1) + "\n")
    os.replace(temp, out)
    print(f"-> {out}")


if __name__ == "__main__":
    main()
