"""smp3d's fast paths measured one by one: one model, each switch added in turn, all timed in one run.

Variants (each adds one thing to the one before it, so each row's gain is that switch's):

- ``plain``: no split CPU convolutions, no fused upsample -> conv, contiguous layout (the plain computation);
- ``+split``: batch-1 CPU convolutions split in two so oneDNN runs them (``smp3d.layers.conv``; CPU only);
- ``+fused``: the Unet decoder's upsample -> concat -> conv on the small map (``smp3d.layers.upsample``);
- ``+channels_last``: ``model.set_channels_last(True)`` (the CUDA default);
- ``+fold_bn`` (inference only): ``smp3d.fold_batchnorm``;
- ``+compile`` (``--compile``): ``torch.compile`` of the last variant.

The timing is ``benchmarks/models.py``'s (the variants take turns, median of ``--iters`` rounds).

    python benchmarks/fast_paths.py --device cpu                  # 1x1x64^3, float32
    python benchmarks/fast_paths.py                               # CUDA: 2x1x128^3, bf16 autocast
    python benchmarks/fast_paths.py --compile --out fast_paths.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Callable, Iterator

import torch

import smp3d
from smp3d.layers import set_fused_upsample, set_split_conv


@contextlib.contextmanager
def split(enabled: bool) -> Iterator[None]:
    previous = set_split_conv(enabled)
    try:
        yield
    finally:
        set_split_conv(previous)


def variants(train: bool, compile_: bool) -> list[dict]:
    rows = [
        dict(name="plain", split=False, fused=False, channels_last=False),
        dict(name="+split", split=True, fused=False, channels_last=False),
        dict(name="+fused", split=True, fused=True, channels_last=False),
        dict(name="+channels_last", split=True, fused=True, channels_last=True),
    ]
    if not train:
        rows.append(dict(rows[-1], name="+fold_bn", fold=True))
    if compile_:
        rows.append(dict(rows[-1], name="+compile", compile=True))
    return rows


def build(encoder: str, variant: dict, shape, device, dtype, train: bool) -> Callable[[], None]:  # noqa: ANN001
    torch.manual_seed(0)
    model = smp3d.Unet(encoder, encoder_weights=None, in_channels=shape[1], classes=2).to(device)
    set_fused_upsample(model, variant["fused"])
    model.set_channels_last(variant["channels_last"])
    x = torch.randn(*shape, device=device)
    if not train:
        model.eval()
        if variant.get("fold"):
            model = smp3d.fold_batchnorm(model, x, inplace=True)
    runner = torch.compile(model) if variant.get("compile") else model
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4)
    autocast = dict(device_type=device.type, dtype=dtype, enabled=dtype is not None)

    def step() -> None:
        with split(variant["split"]), torch.autocast(**autocast):
            loss = runner(x).float().mean()
        with split(variant["split"]):
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def infer() -> None:
        with split(variant["split"]), torch.inference_mode(), torch.autocast(**autocast):
            runner(x)

    return step if train else infer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--encoder", default="resnet34")
    parser.add_argument("--shape", type=int, nargs="+", default=None)
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if gpu:
        torch.backends.cudnn.benchmark = True
    shape = tuple(args.shape or ((2, 1, 128, 128, 128) if gpu else (1, 1, 64, 64, 64)))
    dtype = torch.bfloat16 if gpu else None
    iters = args.iters or (10 if gpu else 7)
    results = []
    print(f"# {device}, torch {torch.__version__}, Unet({args.encoder}), input {shape}, dtype {dtype or 'float32'}")
    for train in (True, False):
        rows = variants(train, args.compile)
        runs = [build(args.encoder, row, shape, device, dtype, train) for row in rows]
        for run in runs:  # warm-up (and compilation)
            run()
        times: list[list[float]] = [[] for _ in runs]
        for _ in range(iters):
            for run, kept in zip(runs, times, strict=True):
                if gpu:
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                run()
                if gpu:
                    torch.cuda.synchronize(device)
                kept.append(time.perf_counter() - start)
        mode = "train" if train else "infer"
        print(f"\n| {mode} variant | ms | vs plain |\n|---|---:|---:|")
        base = statistics.median(times[0])
        for row, kept in zip(rows, times, strict=True):
            ms = statistics.median(kept) * 1e3
            print(f"| {row['name']} | {ms:.1f} | {base * 1e3 / ms:.2f}x |", flush=True)
            results.append(dict(row, mode=mode, ms=round(ms, 2)))
        del runs
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": str(device), "shape": list(shape), "rows": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
