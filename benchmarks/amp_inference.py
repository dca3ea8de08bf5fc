"""bf16 autocast against float32 for inference: speed and agreement, on the CPU or a GPU.

    OMP_NUM_THREADS=1 python benchmarks/amp_inference.py --device cpu --threads 1
    python benchmarks/amp_inference.py --device cuda --size 128

Runs Unet(resnet34) (random weights, eval mode, 3 classes) on a (1, 1, S, S, S) volume: the median
time of ``--iters`` forwards in float32 and under bf16 autocast, the largest difference of the softmax
probabilities, and the fraction of voxels whose argmax class agrees.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import smp3d


def timed(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype | None, iters: int) -> tuple[float, torch.Tensor]:
    times = []
    with torch.inference_mode():
        for _ in range(iters + 1):
            start = time.perf_counter()
            with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
                out = model(x).float().softmax(1)
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:]), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = smp3d.Unet("resnet34", in_channels=1, classes=3).eval().to(args.device)
    x = torch.randn(1, 1, args.size, args.size, args.size, device=args.device)
    fp32, p32 = timed(model, x, None, args.iters)
    bf16, p16 = timed(model, x, torch.bfloat16, args.iters)
    agree = (p32.argmax(1) == p16.argmax(1)).float().mean().item()
    print(
        f"Unet(resnet34) {tuple(x.shape)} on {args.device} ({torch.get_num_threads()} threads): fp32 {fp32:.3f} s, "
        f"bf16 {bf16:.3f} s (x{fp32 / bf16:.2f}); max |p32 - p16| {(p32 - p16).abs().max().item():.4f}, "
        f"argmax agreement {agree:.4%}"
    )


if __name__ == "__main__":
    main()
