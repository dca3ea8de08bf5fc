"""Build a 3D Unet and segment a random volume: the smallest end-to-end use of smp3d.

python examples/quickstart.py [--encoder resnet34] [--size 64 64 32] [--strides anisotropic]
"""

from __future__ import annotations

import argparse
import time

import torch

import smp3d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="resnet34", help="any name from smp3d.list_encoders()")
    parser.add_argument("--size", type=int, nargs=3, default=(96, 96, 48), metavar=("H", "W", "D"))
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument(
        "--strides",
        choices=("isotropic", "anisotropic"),
        default="anisotropic",
        help="anisotropic: no downsampling along depth in the first two stages (thick slices)",
    )
    args = parser.parse_args()

    strides = ((2, 2, 1), (2, 2, 1), 2, 2, 2) if args.strides == "anisotropic" else None
    model = smp3d.Unet(encoder_name=args.encoder, in_channels=1, classes=args.classes, strides=strides).eval()
    parameters = sum(p.numel() for p in model.parameters())
    print(f"smp3d {smp3d.__version__}: Unet({args.encoder}), {parameters / 1e6:.1f} M parameters")
    print(f"encoder reductions per stage (H, W, D): {model.encoder.reductions[1:]}")

    volume = torch.randn(1, 1, *args.size)  # (B, C, H, W, D)
    start = time.perf_counter()
    with torch.inference_mode():
        logits = model(volume)
    seconds = time.perf_counter() - start
    labels = logits.argmax(1)
    counts = torch.bincount(labels.flatten(), minlength=args.classes).tolist()
    print(f"input {tuple(volume.shape)} -> logits {tuple(logits.shape)} in {seconds:.2f} s on the CPU")
    print(f"voxels per class: {counts}")


if __name__ == "__main__":
    main()
