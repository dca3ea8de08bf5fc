"""Sliding-window inference, smp3d vs MONAI, on the same model, volume and settings.

    python benchmarks/sliding_window.py                 # GPU defaults when CUDA is present, else a small CPU run
    python benchmarks/sliding_window.py --device cpu --out cpu.json

Prints one row per overlap (median seconds of each library, peak GPU memory, MONAI/ours ratio, max abs
difference of the two outputs) and writes the rows as JSON to --out when given. Timing: median of
--iters runs after --warmup runs, synchronising the GPU after each run.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import torch

import smp3d
from smp3d.inference import sliding_window_inference

GPU_DEFAULTS = {"volume": (512, 512, 256), "patch": (128, 128, 128), "dtype": "bfloat16", "iters": 3, "warmup": 1}
CPU_DEFAULTS = {"volume": (64, 64, 48), "patch": (32, 32, 32), "dtype": "none", "iters": 3, "warmup": 1}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--volume", type=int, nargs="+", help="spatial size (default: GPU 512 512 256, CPU 64 64 48)")
    parser.add_argument("--patch", type=int, nargs="+", help="window size (default: GPU 128^3, CPU 32^3)")
    parser.add_argument("--overlaps", type=float, nargs="+", default=[0.5, 0.25])
    parser.add_argument("--blend", default="gaussian", choices=["gaussian", "constant"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "none"], help="autocast dtype (GPU default bf16)")
    parser.add_argument("--encoder", default="resnet18", help="encoder of the smp3d.Unet that is run")
    parser.add_argument(
        "--model",
        default="unet",
        choices=["unet", "conv"],
        help="'conv': one tiny conv layer, to expose the "
        "inferers' own overhead (gathering, blending, accumulation) instead of the network's time",
    )
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--iters", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--out", help="write the result rows to this JSON file")
    args = parser.parse_args()
    defaults = GPU_DEFAULTS if args.device.startswith("cuda") else CPU_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_median(fn, device: torch.device, iters: int, warmup: int) -> tuple[float, torch.Tensor]:
    for _ in range(warmup):
        result = fn()
    synchronize(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2], result


def measure(name, fn, device, args) -> dict:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    seconds, result = time_median(fn, device, args.iters, args.warmup)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"name": name, "s": round(seconds, 4), "peak_gib": None if peak is None else round(peak, 2)}, result


def main() -> None:
    from monai.inferers import sliding_window_inference as monai_sliding_window_inference

    args = parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    autocast = None if args.dtype == "none" else getattr(torch, args.dtype)
    spatial_dims = len(args.volume)
    if args.model == "unet":
        model = smp3d.Unet(args.encoder, in_channels=1, classes=args.classes, spatial_dims=spatial_dims)
        model_name = f"Unet({args.encoder})"
    else:
        convolution = {2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[spatial_dims]
        model = convolution(1, args.classes, 3, padding=1)
        model_name = "Conv(3x3x3)"
    model = model.to(device).eval()
    torch.manual_seed(0)
    volume = torch.randn(1, 1, *args.volume, device=device)
    patch = tuple(args.patch)

    print(
        f"device={device} volume={tuple(args.volume)} patch={patch} blend={args.blend} batch={args.batch_size} "
        f"autocast={args.dtype} model={model_name} iters={args.iters} warmup={args.warmup}"
    )
    columns = ("overlap", "smp3d s", "MONAI s", "MONAI/ours", "smp3d GiB", "MONAI GiB", "max|diff|")
    print(" ".join(f"{name:>{width}}" for name, width in zip(columns, (7, 9, 9, 10, 9, 9, 10), strict=True)))
    rows = []
    for overlap in args.overlaps:

        def ours(overlap=overlap):
            return sliding_window_inference(
                model, volume, patch, overlap, args.blend, args.batch_size, autocast=autocast
            )

        def monai(overlap=overlap):
            with torch.inference_mode(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                return monai_sliding_window_inference(
                    volume, patch, args.batch_size, model, overlap=overlap, mode=args.blend
                )

        ours_row, ours_out = measure("smp3d", ours, device, args)
        monai_row, monai_out = measure("monai", monai, device, args)
        max_diff = float((ours_out.float() - monai_out.float()).abs().max())
        del ours_out, monai_out
        row = {
            "overlap": overlap,
            "volume": list(args.volume),
            "patch": list(patch),
            "blend": args.blend,
            "batch_size": args.batch_size,
            "autocast": args.dtype,
            "device": str(device),
            "model": model_name,
            "smp3d_s": ours_row["s"],
            "monai_s": monai_row["s"],
            "monai_over_smp3d": round(monai_row["s"] / ours_row["s"], 3),
            "smp3d_peak_gib": ours_row["peak_gib"],
            "monai_peak_gib": monai_row["peak_gib"],
            "max_abs_diff": max_diff,
        }
        rows.append(row)
        gib = [("-" if v is None else f"{v:.2f}") for v in (row["smp3d_peak_gib"], row["monai_peak_gib"])]
        print(
            f"{overlap:>7} {row['smp3d_s']:>9.3f} {row['monai_s']:>9.3f} {row['monai_over_smp3d']:>10.2f} "
            f"{gib[0]:>9} {gib[1]:>9} {max_diff:>10.2e}",
            flush=True,
        )
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
