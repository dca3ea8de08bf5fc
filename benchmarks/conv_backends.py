"""One batch-1 CPU convolution, PyTorch's own backend choice against smp3d's split (smp3d.layers.conv).

For each shape: forward (inference) and forward + backward (training) times, the median of
``--iters`` runs, and whether smp3d splits it. This is the table behind ``splits_for_onednn``'s rule.

    python benchmarks/conv_backends.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from smp3d.layers.conv import _split_conv, splits_for_onednn

# (in, out, size, kernel, stride): ResNet-34 U-Net shapes at 1x1x64^3, and the fused decoder's phase convs.
SHAPES = [
    (64, 64, 16, 3, 1),
    (128, 128, 8, 3, 1),
    (256, 256, 4, 3, 1),
    (512, 512, 2, 3, 1),
    (64, 128, 16, 3, 2),
    (128, 256, 8, 3, 2),
    (64, 256, 16, 2, 1),
    (32, 32, 32, 3, 1),
]


HEAD = (
    "| in | out | size | kernel | stride | split? "
    "| infer native ms | infer split ms | train native ms | train split ms |"
)


def median_ms(fn, iters: int) -> float:
    fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def time_shape(cin: int, cout: int, size: int, kernel: int, stride: int, iters: int) -> str:
    """One table row: PyTorch's choice against the split, inference and training."""
    torch.manual_seed(0)
    x = torch.randn(1, cin, size, size, size, requires_grad=True)
    w = torch.randn(cout, cin, kernel, kernel, kernel, requires_grad=True)
    s3, p3, d3 = (stride,) * 3, (kernel // 2,) * 3, (1, 1, 1)
    grad = torch.randn_like(F.conv3d(x, w, None, s3, p3))
    runs = {"native": lambda: F.conv3d(x, w, None, s3, p3), "split": lambda: _split_conv(x, w, None, s3, p3, d3)}
    with torch.no_grad():
        infer = [median_ms(run, iters) for run in runs.values()]
    train = [median_ms(lambda run=run: run().backward(grad), iters) for run in runs.values()]
    chosen = "yes" if splits_for_onednn(x, w, s3, p3, d3, 1) else "no"
    cells = [cin, cout, f"{size}³", kernel, stride, chosen, *(f"{t:.2f}" for t in infer + train)]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=7)
    args = parser.parse_args(argv)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(HEAD)
    print("|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    for shape in SHAPES:
        print(time_shape(*shape, args.iters), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
