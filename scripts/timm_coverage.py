"""Walk timm's models, convert each to 3D as a ``tu-`` encoder, and write docs/timm_coverage.md.

For every architecture in ``timm.list_models()`` (no weights are downloaded), in a worker process:

1. build it with ``features_only=True`` on the ``meta`` device (models timm cannot give features
   for are counted apart, as "no features_only");
2. build ``smp3d.get_encoder("tu-<name>", spatial_dims=3)`` on ``meta`` (conversion + the
   encoder's own size check on a 256^3 meta volume), and run it on a (1, 3, 128, 128, 128) meta
   volume, checking ``depth + 1`` features of the documented reductions;
3. record pass, or the first line of the error.

Families are timm's model modules (``resnet``, ``efficientnet``, ...). A family is "attention"
when most of (up to) five of its models mix tokens with attention or another non-convolutional mixer (ViT, Swin,
LeViT, MobileViT, MetaFormer, ...; see ``is_token_mixing``), "CNN" otherwise.
The headline counts models and families. Results are cached in a JSON file so that a run can be
resumed; ``--limit-per-family N`` gives a quick sample.

    python scripts/timm_coverage.py                       # full walk, writes docs/timm_coverage.md
    python scripts/timm_coverage.py --limit-per-family 2  # a quick sample
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VOLUME = 256  # meta tensors hold no data: any size is free; unpadded Inception layers need room


def _family(name: str) -> str:
    from timm.models._registry import _model_to_module

    return _model_to_module.get(name, "?")


def check(name: str) -> dict:
    """Convert one timm architecture; runs in a worker process."""
    import torch

    import smp3d
    from smp3d_encoders.timm_universal import _feature_info

    record: dict = {"name": name, "family": _family(name)}
    start = time.perf_counter()
    try:
        _feature_info(name)
        import timm

        with torch.device("meta"):
            timm.create_model(name, features_only=True)
    except Exception as exc:  # noqa: BLE001 - we record whatever timm raises
        record.update(status="no_features", reason=_first_line(exc))
        return record
    try:
        with torch.device("meta"):
            encoder = smp3d.get_encoder(f"tu-{name}", spatial_dims=3).eval()
        x = torch.empty(1, 3, VOLUME, VOLUME, VOLUME, device="meta")
        with torch.no_grad():
            features = encoder(x)
        if len(features) != 6:
            raise RuntimeError(f"{len(features)} features, expected 6")
        record.update(status="pass")
    except Exception as exc:  # noqa: BLE001
        status = "no_pyramid" if "not hierarchical" in str(exc) else "fail"
        record.update(status=status, reason=_first_line(exc))
    record["seconds"] = round(time.perf_counter() - start, 2)
    return record


_MIXER = re.compile(r"Attention|Attn|MLA$|SHSA|SHMA|SSD|Transformer|MetaFormer|Mixer|VitBlock", re.IGNORECASE)
_CHANNEL_GATES = ("SplitAttn", "SelectiveKernelAttn", "EffectiveSEModule", "CbamModule")  # SE-like, not token mixing


def is_token_mixing(name: str) -> bool:
    """True when ``name`` mixes tokens with attention or another non-convolutional mixer: a module class named
    like one (Attention, LiteMLA, MetaFormer, ...) or a query/key/value projection."""
    import timm
    import torch

    try:
        with torch.device("meta"):
            model = timm.create_model(name)
    except Exception:  # noqa: BLE001
        return False
    for module_name, m in model.named_modules():
        cls = type(m).__name__
        if _MIXER.search(cls) and cls not in _CHANNEL_GATES:
            return True
        if module_name.rsplit(".", 1)[-1] in ("qkv", "to_qkv", "q_proj", "kv"):
            return True
    return False


def _first_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    text = re.sub(r"0x[0-9a-f]+", "0x…", text)
    return text[:300]


def _run(names: list[str], cache: Path, workers: int) -> dict[str, dict]:
    results: dict[str, dict] = json.loads(cache.read_text()) if cache.exists() else {}
    todo = [n for n in names if n not in results]
    print(f"{len(names)} models, {len(todo)} to check with {workers} workers", file=sys.stderr)
    # fresh interpreters, recycled often: some timm models leave state behind (registries, caches)
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, maxtasksperchild=25) as pool:
        for done, record in enumerate(pool.imap_unordered(check, todo), start=1):
            results[record["name"]] = record
            if done % 25 == 0 or done == len(todo):
                cache.write_text(json.dumps(results, indent=1, sort_keys=True))
                print(f"  {done}/{len(todo)}", file=sys.stderr)
    return {n: results[n] for n in names}


def _reason_class(reason: str) -> str:
    reason = re.sub(r"'[^']*'", "'…'", reason)
    reason = re.sub(r"\btu-\S+", "tu-…", reason)
    reason = re.sub(r"(?<![A-Za-z_])\d+(?!D\b)", "N", reason)
    return reason[:160]


# Families whose conversion is refused today, and why (shown next to their failures in the report).
REFUSED = {
    "byoanet": "BoTNet's BottleneckAttn converts (per-axis relative logits copied along added axes); HaloNet's "
    "HaloAttn (and the Lambda layers) gather 2D halo blocks with per-axis relative logits for a build-time block "
    "size; their N-D rewrite is not written yet.",
    "csatv2": "the stem is a learnable 2D DCT of 8x8 pixel blocks (LearnableDct2d, 2D frequency tables): an N-D "
    "transform would be a different model that no inflation of the 2D weights reproduces, so it stays 2D-only.",
    "hiera": "Hiera keeps its tokens in an 'unrolled' mask-unit order and a position embedding both fixed at build "
    "time for the input size (Unroll / Reroll); its conversion needs that schedule recomputed per N-D input size, "
    "not written yet (HieraDet, SAM 2's variant, converts).",
    "mvitv2": "MViT v2's pooling attention reshapes tokens to the build-time feature size for its pooling "
    "convolutions and adds decomposed relative-position terms per axis; its N-D rewrite is not written yet.",
    "vision_transformer_hybrid": "a plain ViT on a CNN stem: the stem's features are at several reductions but "
    "every ViT block at one; the ViT part is the single-scale encoder work of smp3d_encoders/timm_vit.py, "
    "which this conversion leaves to it.",
}


def report(results: dict[str, dict], command: str, per_family: int | None = None) -> str:
    import timm
    import torch

    fams: dict[str, list[dict]] = collections.defaultdict(list)
    for r in results.values():
        fams[r["family"]].append(r)
    tried = ("pass", "fail")
    capable = [r for r in results.values() if r["status"] in tried]
    flat = [r for r in results.values() if r["status"] == "no_pyramid"]
    flat_families = sorted({r["family"] for r in flat} - {r["family"] for r in capable})
    passed = [r for r in capable if r["status"] == "pass"]

    def kind(rs: list[dict]) -> str:
        names = [r["name"] for r in rs if r["status"] in tried]
        sample = names[:: max(1, -(-len(names) // 5))]  # up to 5, spread over the family
        return "attention" if sample and 2 * sum(map(is_token_mixing, sample)) >= len(sample) else "CNN"

    kinds = {fam: kind(rs) for fam, rs in fams.items()}

    rows = []
    fam_stats = {"CNN": [0, 0, 0], "attention": [0, 0, 0]}  # families: all, all models pass, some pass
    for fam in sorted(fams):
        rs = [r for r in fams[fam] if r["status"] in tried]
        if not rs:
            continue
        k = kinds[fam]
        ok = sum(r["status"] == "pass" for r in rs)
        fam_stats[k][0] += 1
        fam_stats[k][1] += ok == len(rs)
        fam_stats[k][2] += ok > 0
        reasons = collections.Counter(_reason_class(r["reason"]) for r in rs if r["status"] == "fail")
        why = "; ".join(f"{n}× {text}" for text, n in reasons.most_common(2)) if reasons else ""
        failing = [r["name"] for r in rs if r["status"] == "fail"]
        example = f" (e.g. `{failing[0]}`)" if failing else ""
        status = "pass" if ok == len(rs) else ("partial" if ok else "fail")
        if ok < len(rs) and fam in REFUSED:
            why = f"**Why:** {REFUSED[fam]} Error: {why}"
        rows.append(f"| `{fam}` | {k} | {ok}/{len(rs)} | {status} | {why.replace('|', '/')}{example} |")

    cnn_models = [r for r in capable if kinds[r["family"]] == "CNN"]
    cnn_pass = [r for r in cnn_models if r["status"] == "pass"]
    pct = 100 * len(passed) / max(1, len(capable))
    c = fam_stats["CNN"]
    a = fam_stats["attention"]
    lines = [
        "# timm coverage of `tu-` encoders in 3D",
        "",
        "Generated by `scripts/timm_coverage.py`; do not edit by hand.",
        "",
        f"timm {timm.__version__}, torch {torch.__version__}. Command: `{command}`.",
        "",
        "Each model of `timm.list_models()` is built with `features_only=True` on the `meta` device, converted to 3D "
        f"as `tu-<name>` and run on a (1, 3, {VOLUME}, {VOLUME}, {VOLUME}) meta volume; it passes when the encoder "
        "builds (its own check of every feature's size included) and returns its 6 features.",
        "",
        "## Headline",
        "",
        f"- **{len(passed)} of {len(capable)} features-capable timm models convert to 3D ({pct:.1f}%)**; "
        f"{len(flat)} more are not hierarchical (every feature at one reduction: plain ViTs, MLP-Mixers, ConvMixer) "
        f"and {len(results) - len(capable) - len(flat)} have no `features_only` support in timm; neither can be a "
        "U-Net-style encoder, and they are left out of the percentages.",
        f"- CNN models: {len(cnn_pass)} of {len(cnn_models)} ({100 * len(cnn_pass) / max(1, len(cnn_models)):.1f}%).",
        f"- CNN families: **{c[2]} of {c[0]} ({100 * c[2] / max(1, c[0]):.0f}%) convert** (at least one model), "
        f"{c[1]} of them with every model.",
        f"- Attention and token-mixer families (self-attention, MetaFormer/Mixer blocks, judged on "
        f"{f'up to {per_family} models' if per_family else 'every model'} of the family): {a[2]} of {a[0]} convert, "
        f"{a[1]} with every model.",
        "",
        "## Per family",
        "",
        "| family (timm module) | kind | models passing | status | most common failures |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "## Not hierarchical",
        "",
        "Families whose every model returns features at one reduction (no pyramid for a decoder): "
        + (", ".join(f"`{f}`" for f in flat_families) or "none")
        + ".",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit-per-family", type=int, default=None)
    parser.add_argument("--families", default=None, help="comma-separated timm modules to check (default: all)")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2)))
    parser.add_argument("--cache", type=Path, default=ROOT / ".timm_coverage.json")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "timm_coverage.md")
    args = parser.parse_args(argv)
    import timm

    names = timm.list_models()
    if args.families:
        wanted = set(args.families.split(","))
        names = [n for n in names if _family(n) in wanted]
    if args.limit_per_family:
        per: dict[str, int] = collections.Counter()
        sample = []
        for n in names:
            fam = _family(n)
            if per[fam] < args.limit_per_family:
                per[fam] += 1
                sample.append(n)
        names = sample
    results = _run(names, args.cache, args.workers)
    command = "python scripts/timm_coverage.py" + (
        f" --limit-per-family {args.limit_per_family}" if args.limit_per_family else ""
    )
    if args.families:
        command += f" --families {args.families}"
    if args.output.resolve() != (ROOT / "docs" / "timm_coverage.md").resolve():
        out = args.output.resolve()
        command += f" --output {out.relative_to(ROOT.resolve()) if out.is_relative_to(ROOT.resolve()) else out}"
    text = report(results, command, args.limit_per_family)
    tmp = args.output.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(args.output)
    print(text.split("## Per family")[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
