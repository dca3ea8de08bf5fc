"""Training-step and inference speed of whole models: smp3d vs segmentation_models_pytorch_3d, in one run.

(MONAI has no U-Net with these encoders; it is compared on sliding-window inference, ``sliding_window.py``.)

The method is the anchors' (``shared/bench/anchors_gpu.py``): the same architecture built by each library,
the same input, an AdamW step (forward, ``mean()`` loss in float32, backward, step) or an inference forward,
the median of ``--iters`` timed runs after ``--warmup`` runs, CUDA synchronised after each. Each library runs
alone, and they take turns in ``--rounds`` rounds so that drift of a shared machine weighs on all alike.
FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode``; smp3d's also with its fused decoder path
switched off, where equal FLOPs prove the architectures match (TFLOP/s use that count). Peak CUDA memory
is measured per library. Each row is printed as JSON; ``--out FILE`` writes them all, ``--markdown`` prints
a table with the ratio ``theirs / ours`` (above 1: smp3d is faster).

    python benchmarks/models.py --device cpu                  # 1x1x64^3, float32: the CPU targets
    python benchmarks/models.py                                # CUDA: 2x1x128^3, bf16, channels_last_3d
    python benchmarks/models.py --compile --markdown --out gpu.json
    python benchmarks/models.py --device cpu --nnunet --markdown   # nnU-Net's networks vs smp3d.from_nnunet
    python benchmarks/models.py --device cpu --monai --markdown    # MONAI's SwinUNETR/UNETR vs smp3d.from_monai

``--nnunet`` compares nnU-Net's own networks (``dynamic_network_architectures`` ``ResidualEncoderUNet`` and
``PlainConvUNet`` at the usual 3d_fullres topology: 6 stages, widths 32..320, kernel 3, strides 1, 2, 2, 2, 2,
2; ResEnc blocks 1, 3, 4, 6, 6, 6 with one conv per decoder block, plain with two) with the smp3d model
``smp3d.from_nnunet`` builds from them, carrying their weights. Deep supervision is off on both sides.

``--monai`` compares MONAI's ``SwinUNETR`` (feature_size 24 and 48) and ``UNETR`` (ViT-B/16, feature_size 16,
``img_size`` = the input size) with the smp3d models ``SwinUNETR.from_monai`` / ``UNETR.from_monai`` build from
them, carrying their weights (equal outputs, equal FLOPs). On CPU the peak memory is the peak resident set
size during one step (``VmHWM`` of ``/proc/self/status``, reset through ``/proc/self/clear_refs`` before the
step) minus the resident size before it: ``peak_rss_mib``.

segmentation_models_pytorch_3d pins an old timm: install it next to ours with
``pip install --no-deps segmentation-models-pytorch-3d==1.0.2 timm-3d==1.0.1 pretrainedmodels==0.7.4
efficientnet-pytorch==0.7.1 six munch``. A library that is not installed is skipped with a note.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

ENCODERS = ("resnet34", "efficientnet-b0")
NNUNET_NETWORKS = ("ResidualEncoderUNet", "PlainConvUNet")


def nnunet_network(name: str, in_channels: int = 1, classes: int = 2) -> nn.Module:
    """nnU-Net's 3d_fullres network of class ``name``, as its planners write it for a 3D dataset."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

    common = dict(
        input_channels=in_channels,
        n_stages=6,
        features_per_stage=(32, 64, 128, 256, 320, 320),
        conv_op=nn.Conv3d,
        kernel_sizes=3,
        strides=(1, 2, 2, 2, 2, 2),
        num_classes=classes,
        conv_bias=True,
        norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=False,
    )
    if name == "ResidualEncoderUNet":
        return ResidualEncoderUNet(n_blocks_per_stage=(1, 3, 4, 6, 6, 6), n_conv_per_stage_decoder=1, **common)
    return PlainConvUNet(n_conv_per_stage=2, n_conv_per_stage_decoder=2, **common)


MONAI_MODELS = ("SwinUNETR(feature_size=24)", "SwinUNETR(feature_size=48)", "UNETR(ViT-B/16)")


def monai_network(name: str, spatial: tuple[int, ...], in_channels: int = 1, classes: int = 2) -> nn.Module:
    """MONAI's network ``name`` (one of :data:`MONAI_MODELS`) for inputs of size ``spatial``."""
    from monai.networks.nets import UNETR, SwinUNETR

    if name.startswith("SwinUNETR"):
        feature_size = int(name.split("=")[1].rstrip(")"))
        return SwinUNETR(
            in_channels=in_channels, out_channels=classes, feature_size=feature_size, spatial_dims=len(spatial)
        )
    return UNETR(in_channels=in_channels, out_channels=classes, img_size=spatial, spatial_dims=len(spatial))


def monai_builders(name: str, spatial: tuple[int, ...]) -> dict[str, Callable[[], nn.Module]]:
    """smp3d's model (built by ``from_monai`` from MONAI's, same weights) and MONAI's network."""
    import smp3d

    try:
        import monai  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - an optional comparison library
        print(f"# monai unavailable: {type(exc).__name__}: {exc}")
        return {}
    smp3d_class = smp3d.SwinUNETR if name.startswith("SwinUNETR") else smp3d.UNETR
    return {
        "smp3d": lambda: smp3d_class.from_monai(monai_network(name, spatial)),
        "monai": lambda: monai_network(name, spatial),
    }


def _rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_peak_mib(fn: Callable[[], None]) -> float | None:
    """Peak resident memory of one call of ``fn`` beyond the resident memory before it, in MiB (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size
    except OSError:
        return None
    before = _rss_kib("VmRSS")
    fn()
    peak = _rss_kib("VmHWM")
    return None if before is None or peak is None else round((peak - before) / 1024, 1)


def nnunet_builders(name: str) -> dict[str, Callable[[], nn.Module]]:
    """smp3d's model (built by ``from_nnunet`` from nnU-Net's, same weights) and nnU-Net's network."""
    import smp3d

    try:
        import dynamic_network_architectures  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - an optional comparison library
        print(f"# dynamic_network_architectures unavailable: {type(exc).__name__}: {exc}")
        return {}
    return {"smp3d": lambda: smp3d.from_nnunet(nnunet_network(name)), "nnunet": lambda: nnunet_network(name)}


def builders(encoder: str) -> dict[str, Callable[[], nn.Module]]:
    import smp3d

    found: dict[str, Callable[[], nn.Module]] = {
        "smp3d": lambda: smp3d.Unet(encoder, encoder_weights=None, in_channels=1, classes=2)
    }
    try:
        import segmentation_models_pytorch_3d as smp_3d

        found["smp-3d"] = lambda: smp_3d.Unet(encoder_name=encoder, encoder_weights=None, in_channels=1, classes=2)
    except Exception as exc:  # noqa: BLE001 - an optional comparison library
        print(f"# segmentation_models_pytorch_3d unavailable: {type(exc).__name__}: {exc}")
    return found


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@dataclass
class Case:
    """One library's model, input and step, ready to time."""

    library: str
    record: dict
    model: nn.Module
    fn: Callable[[], None]
    times: list[float] = field(default_factory=list)


def prepare_case(
    library: str,
    make: Callable[[], nn.Module],
    shape: tuple[int, ...],
    device: torch.device,
    dtype: torch.dtype | None,
    channels_last: bool,
    train: bool,
    compile_: bool,
    warmup: int,
) -> Case:
    """Build the model, input and optimizer, warm up, and (CUDA) measure this case's peak memory: the
    most allocated during one step beyond what was allocated before it was built (other cases' models)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    record = dict(
        library=library,
        shape=list(shape),
        dtype=str(dtype).replace("torch.", "") if dtype else "float32",
        channels_last=channels_last,
        mode="train" if train else "infer",
        compiled=compile_,
    )
    torch.manual_seed(0)
    model = make().to(device)
    if hasattr(model, "set_channels_last"):
        model.set_channels_last(channels_last)  # smp3d: exactly the layout this row is labelled with
    x = torch.randn(*shape, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    if not train:
        model.eval()
    runner = torch.compile(model) if compile_ else model
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4)
    autocast = dict(device_type=device.type, dtype=dtype, enabled=dtype is not None)

    def step() -> None:
        with torch.autocast(**autocast):
            out = runner(x)
            loss = (out[0] if isinstance(out, (tuple, list)) else out).float().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def infer() -> None:
        with torch.inference_mode(), torch.autocast(**autocast):
            runner(x)

    fn = step if train else infer
    for _ in range(max(warmup, 1 if device.type == "cuda" else 0)):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        record["peak_gib"] = round((torch.cuda.max_memory_allocated(device) - before) / 2**30, 2)
    elif device.type == "cpu":
        gc.collect()
        record["peak_rss_mib"] = cpu_peak_mib(fn)
    return Case(library, record, model, fn)


def time_case(case: Case, device: torch.device, runs: int) -> None:
    for _ in range(runs):
        _sync(device)
        start = time.perf_counter()
        case.fn()
        _sync(device)
        case.times.append(time.perf_counter() - start)


def measure(preparers: dict[str, Callable[[], Case]], device: torch.device, iters: int, rounds: int) -> list[dict]:
    """Time ``iters`` runs of each library in ``rounds`` turns, only one library's model alive at a time.

    Each round builds each library's case afresh (with its warm-up), times its share of the runs and
    frees it before the next library, so every library runs alone, as the anchors' method has it, while
    drift of a shared machine (clock, neighbours, temperature) is spread over all libraries alike.
    Keeping both models alive and alternating them slowed both, smp-3d more, so that is not done.
    """
    rounds = max(1, min(rounds, iters))
    times: dict[str, list[float]] = {name: [] for name in preparers}
    records: dict[str, dict] = {}
    for r in range(rounds):
        share = iters // rounds + (1 if r < iters % rounds else 0)
        for name, prepare in preparers.items():
            try:
                case = prepare()
                time_case(case, device, share)
                times[name] += case.times
                if r == rounds - 1:
                    case.times = times[name]
                    records[name] = finish_case(case)
            except Exception as exc:  # noqa: BLE001 - report and go on with the other libraries
                records[name] = dict(library=name, error=f"{type(exc).__name__}: {exc}"[:300])
            case = None
            gc.collect()
    return [records[name] for name in preparers]


def finish_case(case: Case) -> dict:
    """The case's record: median time, FLOPs (and smp3d's without its fused path), TFLOP/s, parameters."""
    seconds = statistics.median(case.times)
    flops = plain_flops = count_flops(case.fn)
    if case.library == "smp3d" and not case.record["compiled"]:
        # smp3d's fused decoder path executes fewer FLOPs; the plain computation must count the same
        # as the other library's (the proof that the architectures match), and TFLOP/s use it.
        from smp3d.layers import set_fused_upsample

        if set_fused_upsample(case.model, False):
            plain_flops = count_flops(case.fn)
            set_fused_upsample(case.model, True)
    case.record.update(
        flops=flops,
        ms=round(seconds * 1e3, 2),
        gflop=round(flops / 1e9, 1),
        gflop_plain=round(plain_flops / 1e9, 1),
        tflops=round(plain_flops / seconds / 1e12, 2),
        params_m=round(sum(p.numel() for p in case.model.parameters()) / 1e6, 2),
    )
    return case.record


def run_case(library, make, shape, device, dtype, channels_last, train, compile_, iters, warmup) -> dict:  # noqa: ANN001
    """One library alone, in one round."""
    prepare = lambda: prepare_case(library, make, shape, device, dtype, channels_last, train, compile_, warmup)  # noqa: E731
    return measure({library: prepare}, device, iters, rounds=1)[0]


def markdown(rows: list[dict]) -> str:
    """One line per case: ours, the peer's (smp-3d or nnU-Net) and the ratio peer / ours."""
    keyed: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        key = (r["model"], r["mode"], r["dtype"], r["channels_last"], r["compiled"])
        keyed.setdefault(key, {})[r["library"]] = r
    head = (
        "| model | mode | dtype | channels_last | compiled | smp3d ms | peer ms | peer / smp3d "
        "| GFLOP executed (smp3d, peer) | smp3d GFLOP without fusion | peak memory (smp3d, peer) |"
    )
    lines = [head, "|---|---|---|---|---|---:|---:|---:|---|---:|---|"]
    for (model, mode, dtype, cl, compiled), libs in keyed.items():
        ours = libs.get("smp3d")
        theirs = next((row for library, row in libs.items() if library != "smp3d"), None)
        ratio = f"{theirs['ms'] / ours['ms']:.2f}" if ours and theirs else "-"
        flops = ", ".join(str(lib["gflop"]) for lib in (ours, theirs) if lib)
        lines.append(
            f"| {model} | {mode} | {dtype} | {cl} | {compiled} | {ours['ms'] if ours else '-'} | "
            f"{theirs['ms'] if theirs else '-'} | {ratio} | {flops} | {ours.get('gflop_plain', '-') if ours else '-'} "
            f"| {_memory(ours)}, {_memory(theirs)} |"
        )
    return "\n".join(lines)


def _memory(row: dict | None) -> str:
    if not row:
        return "-"
    if row.get("peak_gib") is not None:
        return f"{row['peak_gib']} GiB"
    return f"{row['peak_rss_mib']} MiB RSS" if row.get("peak_rss_mib") is not None else "-"


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark script here shares."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", type=int, nargs="+", default=None, help="input shape (default by device)")
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3, help="turns the cases take (eager cases)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    parser.add_argument("--out", default=None)


def device_and_shape(args: argparse.Namespace) -> tuple[torch.device, tuple[int, ...]]:
    """The device (cuDNN autotuning on for CUDA) and the input shape: the anchors' 2x1x128^3 on CUDA,
    1x1x64^3 on CPU, unless ``--shape`` says otherwise."""
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    shape = tuple(args.shape or ((2, 1, 128, 128, 128) if device.type == "cuda" else (1, 1, 64, 64, 64)))
    return device, shape


def write_rows(path: str, device: torch.device, shape: tuple[int, ...], rows: list[dict]) -> None:
    with open(path, "w") as f:
        json.dump({"device": str(device), "torch": torch.__version__, "shape": list(shape), "rows": rows}, f, indent=1)


def _failed(library: str, encoder: str, exc: Exception) -> dict:
    record = dict(library=library, model=f"Unet({encoder})", error=f"{type(exc).__name__}: {exc}"[:300])
    print(json.dumps(record), flush=True)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS))
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--nnunet", action="store_true", help="nnU-Net's networks vs smp3d instead of the Unets")
    parser.add_argument("--monai", action="store_true", help="MONAI's SwinUNETR/UNETR vs smp3d instead of the Unets")
    parser.add_argument("--models", nargs="+", default=None, help=f"with --monai: a subset of {MONAI_MODELS}")
    args = parser.parse_args(argv)
    device, shape = device_and_shape(args)
    gpu = device.type == "cuda"
    iters = args.iters or (10 if gpu else 5)
    warmup = args.warmup or (3 if gpu else 1)
    # GPU: the anchors' configurations; CPU: float32 eager only (the CPU target).
    configs = [(torch.bfloat16, True), (torch.bfloat16, False), (None, False)] if gpu else [(None, False)]
    rows: list[dict] = []
    models = [(f"{n}(nnU-Net 3d_fullres)", nnunet_builders(n)) for n in NNUNET_NETWORKS] if args.nnunet else []
    if args.monai:
        models = [(n, monai_builders(n, shape[2:])) for n in args.models or MONAI_MODELS]
    models = models or [(f"Unet({encoder})", builders(encoder)) for encoder in args.encoders]
    for model_name, libraries in models:
        for dtype, channels_last in configs:
            for train in (True, False):
                for compile_ in (False, True) if args.compile else (False,):
                    preparers = {
                        library: functools.partial(
                            prepare_case, library, make, shape, device, dtype, channels_last, train, compile_, warmup
                        )
                        for library, make in libraries.items()
                    }
                    # Compiled cases compile once per build: one round.
                    for record in measure(preparers, device, iters, rounds=1 if compile_ else args.rounds):
                        record["model"] = model_name
                        rows.append(record)
                        print(json.dumps(record), flush=True)
    if args.markdown:
        print(markdown([r for r in rows if "ms" in r]))
    if args.out:
        write_rows(args.out, device, shape, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
