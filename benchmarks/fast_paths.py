"""smp3d's fast paths measured one by one: one model, each switch added in turn, all timed in one run.

Variants (each adds one thing to the one before it, so each row's gain is that switch's):

- ``plain``: no split CPU convolutions, no fused upsample -> conv, contiguous layout (the plain computation);
- ``+split``: batch-1 CPU convolutions split in two so oneDNN runs them (``smp3d.layers.conv``; CPU only);
- ``+fused``: the Unet decoder's upsample -> concat -> conv on the small map (``smp3d.layers.upsample``);
- ``+channels_last``: ``model.set_channels_last(True)`` (the CUDA default);
- ``+fold_bn`` (inference only): ``smp3d.fold_batchnorm``;
- ``+compile`` (``--compile``): ``torch.compile`` of the last variant.

The timing is ``benchmarks/models.py``'s: each variant runs alone, the variants take turns in ``--rounds``
rounds, and each figure is the median of ``--iters`` runs.

    python benchmarks/fast_paths.py --device cpu                  # 1x1x64^3, float32
    python benchmarks/fast_paths.py                               # CUDA: 2x1x128^3, bf16 autocast
    python benchmarks/fast_paths.py --compile --out fast_paths.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

import smp3d
from smp3d.layers import set_fused_upsample, set_split_conv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import Case, add_common_arguments, device_and_shape, measure, write_rows  # noqa: E402 - the sibling script, for its timing method


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


def build(encoder: str, variant: dict, shape, device, dtype, train: bool) -> Case:  # noqa: ANN001
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

    fn = step if train else infer
    fn()  # warm-up (and compilation)
    record = dict(library=variant["name"], mode="train" if train else "infer", compiled=bool(variant.get("compile")))
    if device.type == "cuda":  # only this variant's model is alive (see models.measure)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        record["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return Case(variant["name"], record, model, fn)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--encoder", default="resnet34")
    args = parser.parse_args(argv)
    device, shape = device_and_shape(args)
    gpu = device.type == "cuda"
    dtype = torch.bfloat16 if gpu else None
    iters = args.iters or (10 if gpu else 7)
    results = []
    print(f"# {device}, torch {torch.__version__}, Unet({args.encoder}), input {shape}, dtype {dtype or 'float32'}")
    for train in (True, False):
        rows = variants(train, args.compile)
        preparers = {
            row["name"]: functools.partial(build, args.encoder, row, shape, device, dtype, train) for row in rows
        }
        records = measure(preparers, device, iters, rounds=1 if args.compile else args.rounds)
        mode = "train" if train else "infer"
        print(f"\n| {mode} variant | ms | vs plain | peak GiB |\n|---|---:|---:|---:|")
        for record in records:
            speedup = f"{records[0]['ms'] / record['ms']:.2f}x" if "ms" in record else record.get("error")
            peak = record.get("peak_gib", "-")
            print(f"| {record['library']} | {record.get('ms', '-')} | {speedup} | {peak} |", flush=True)
            results.append(record)
    if args.out:
        write_rows(args.out, device, shape, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
