"""Bytes a training run writes per epoch, and what its run directory holds, before and after
checkpoints became one committed unit (docs/reliability.md, "Run directories").

    python benchmarks/run_directory.py                       # Unet(resnet18) 3D, AdamW
    python benchmarks/run_directory.py --encoder resnet34 --epochs 3

Both layouts get the same model and AdamW state (one optimizer step on zero gradients fills it).
"Before" is what ``smp3d train`` wrote until this change: ``save_pretrained`` into ``best/`` and
``last/`` plus ``last/training_state.pt`` every epoch (when validation improved or without
validation). "After" is :meth:`RunDirectory.commit`, with ``best/`` hard-linked to the epoch
that improved. Sizes count each file once (hard links share their bytes).
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

import torch

import smp3d
from smp3d.training.checkpoints import Progress, checkpoint_files, model_card_files
from smp3d.training.config import TrainConfig
from smp3d.training.rundir import open_run_directory


def disk_bytes(folder: Path) -> int:
    seen, total = set(), 0
    for path in folder.rglob("*"):
        if path.is_file():
            stat = path.stat()
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_size
    return total


def before(model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: Path, epoch: int) -> int:
    """The old writes of one epoch; returns the bytes written."""
    model.save_pretrained(folder / "best")
    model.save_pretrained(folder / "last")
    state = {"optimizer": optimizer.state_dict(), "scheduler": None, "epoch": epoch, "iteration": 0}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    (folder / "last" / "training_state.pt").write_bytes(buffer.getbuffer())
    weights = (folder / "last" / "model.safetensors").stat().st_size
    return 2 * weights + len(buffer.getbuffer())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="unet")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--spatial-dims", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    model = smp3d.create_model(
        args.arch, encoder_name=args.encoder, in_channels=1, classes=3, spatial_dims=args.spatial_dims
    )
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    config = TrainConfig(arch=args.arch, encoder=args.encoder, spatial_dims=args.spatial_dims, classes=3)
    print(f"{args.arch}({args.encoder}) {args.spatial_dims}D: {params / 1e6:.1f}M parameters, AdamW")
    with tempfile.TemporaryDirectory(dir=os.getcwd()) as temp:
        old, new = Path(temp) / "before", Path(temp) / "after"
        old.mkdir()
        started = time.perf_counter()
        written_old = [before(model, optimizer, old, epoch) for epoch in range(1, args.epochs + 1)]
        seconds_old = (time.perf_counter() - started) / args.epochs
        run = open_run_directory(new, resume=False, overwrite=False, log=print, warn=print)
        cards = model_card_files(model)
        written_new, progress, started = [], Progress(), time.perf_counter()
        for epoch in range(1, args.epochs + 1):
            progress.epoch = epoch
            best = {"epoch": epoch, "iteration": 0, "val_mean_dice_foreground": 0.5}  # validation improved every epoch
            files = checkpoint_files(
                model, optimizer, None, config, progress, card_files=cards, metrics=b"epoch\r\n", best=best
            )
            run.commit(files, epoch)
            written_new.append(files.nbytes)
        seconds_new = (time.perf_counter() - started) / args.epochs
        run.close()
        print("| layout | MB written per epoch | MB in the run directory | s per epoch |")
        print("|---|---:|---:|---:|")
        print(f"| before | {written_old[-1] / 1e6:.1f} | {disk_bytes(old) / 1e6:.1f} | {seconds_old:.2f} |")
        print(f"| after | {written_new[-1] / 1e6:.1f} | {disk_bytes(new) / 1e6:.1f} | {seconds_new:.2f} |")


if __name__ == "__main__":
    main()
