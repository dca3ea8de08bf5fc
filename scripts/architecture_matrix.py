"""The architecture x encoder-family matrix, and docs/architectures.md generated from it.

    python scripts/architecture_matrix.py          # rewrite docs/architectures.md
    python scripts/architecture_matrix.py --check  # exit 1 if docs/architectures.md is stale

Every architecture is built with the smallest encoder of every family, in 2D and 3D, with
isotropic and anisotropic strides, on the ``meta`` device (no memory, no compute), and run on a
meta input of 64 voxels per axis: a cell passes when the output has the input's spatial size.
A cell may instead be refused at construction with a ValueError; the table records the reason.
Any other failure is a bug and is reported as such.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import os
import sys
import tempfile
from collections.abc import Iterable
from importlib.metadata import distribution, entry_points
from pathlib import Path
from typing import NamedTuple

import torch

import smp3d
from smp3d.models import ARCHITECTURES

DOC = Path(__file__).resolve().parent.parent / "docs" / "architectures.md"
SIZE = 64
CLASSES = 2

# Per-stage strides; an architecture with encoder_depth d takes the first d.
STRIDES = {
    "isotropic": {2: None, 3: None},
    "anisotropic": {
        2: ((2, 1), 2, (2, 1), 2, 2),
        3: ((2, 2, 1), 2, (2, 2, 1), 2, (2, 1, 2)),
    },
}


class Cell(NamedTuple):
    arch: str
    encoder: str
    spatial_dims: int
    strides: str


class Outcome(NamedTuple):
    status: str  # "ok", "refused" (ValueError at construction) or "bug"
    detail: str = ""


def architectures() -> dict[str, type]:
    """One entry per architecture class (create_model's aliases removed), by class name."""
    return {cls.__name__: cls for cls in dict.fromkeys(ARCHITECTURES.values())}


def _families(names: Iterable[str]) -> dict[str, str]:
    """family -> its smallest encoder (2D parameter count on meta)."""

    def count(name: str) -> int:
        with torch.device("meta"):
            return sum(p.numel() for p in smp3d.get_encoder(name, spatial_dims=2).parameters())

    best: dict[str, tuple[int, str]] = {}
    # the tu- bridge's migration aliases (family "timm") are checked with every architecture in
    # tests/test_timm_universal.py; building all of them here would take minutes
    names = [n for n in names if smp3d.get_encoder_spec(n).family != "timm"]
    for name in sorted(names):
        family = smp3d.get_encoder_spec(name).family or name
        n = count(name)
        if family not in best or n < best[family][0]:
            best[family] = (n, name)
    return {family: name for family, (_, name) in sorted(best.items())}


def first_party_families() -> dict[str, str]:
    names: set[str] = set()
    for ep in distribution("smp3d").entry_points:
        if ep.group == "smp3d.encoders":
            names.update(ep.load())
    return _families(names)


def installed_families() -> dict[str, str]:
    """Every family registered by any installed distribution (plugins included)."""
    names: set[str] = set()
    for ep in entry_points(group="smp3d.encoders"):
        names.update(ep.load())
    return _families(names)


def default_depth(cls: type) -> int:
    return inspect.signature(cls.__init__).parameters["encoder_depth"].default


def run_cell(cell: Cell) -> Outcome:
    cls = architectures()[cell.arch]
    pattern = STRIDES[cell.strides][cell.spatial_dims]
    strides = None if pattern is None else pattern[: default_depth(cls)]
    try:
        with torch.device("meta"):
            model = cls(
                encoder_name=cell.encoder,
                in_channels=1,
                classes=CLASSES,
                spatial_dims=cell.spatial_dims,
                strides=strides,
            )
    except ValueError as error:
        return Outcome("refused", str(error))
    except Exception as error:  # noqa: BLE001 - anything else is a bug to report
        return Outcome("bug", f"construction: {type(error).__name__}: {error}")
    size = (SIZE,) * cell.spatial_dims
    model.eval()  # batch statistics of a single sample are undefined after global pooling
    try:
        with torch.no_grad():
            out = model(torch.empty(1, 1, *size, device="meta"))
    except Exception as error:  # noqa: BLE001
        return Outcome("bug", f"forward: {type(error).__name__}: {error}")
    if tuple(out.shape) != (1, CLASSES, *size):
        return Outcome("bug", f"output shape {tuple(out.shape)}, expected {(1, CLASSES, *size)}")
    return Outcome("ok")


def cells(families: dict[str, str]) -> list[Cell]:
    return [
        Cell(arch, encoder, dims, kind)
        for arch in architectures()
        for encoder in families.values()
        for dims in (2, 3)
        for kind in STRIDES
    ]


@functools.cache
def matrix(first_party_only: bool = True) -> dict[Cell, Outcome]:
    families = first_party_families() if first_party_only else installed_families()
    return {cell: run_cell(cell) for cell in cells(families)}


HEADER = """# Architectures x encoders

Generated by `python scripts/architecture_matrix.py` (a test fails when this file is stale; do not
edit it by hand). Each architecture is built with the smallest encoder of every first-party family
with its default arguments (`in_channels=1, classes=2`), in 2D and 3D, with isotropic strides and
with anisotropic ones (2D `{aniso2}`, 3D `{aniso3}`, the first `encoder_depth` items), and run on an
input of {size} voxels per axis; a cell passes when the mask has the input's size. Plugins' encoders
go through the same test (`tests/test_architectures.py` runs it for every installed family).

{summary}

"""


MEDNEXT_NOTES = """## MedNeXt

`smp3d.MedNeXt` is MedNeXt v1 (Roy et al., MICCAI 2023; MIC-DKFZ/MedNeXt): ConvNeXt-style blocks
(depthwise conv, GroupNorm, 1x1 expansion, GELU, 1x1 compression, residual) with MedNeXt down and up
blocks (strided / transposed depthwise convs with 1x1 residual paths). The `mednext_s`, `mednext_b`,
`mednext_m`, `mednext_l` encoders carry their size's expansion ratios and block counts, and the decoder
layout MedNeXt pairs with them; `kernel_size=3` or `5` sets the depthwise kernels everywhere:

```python
import smp3d
import torch

options = dict(encoder_name="mednext_s", in_channels=1, classes=3, deep_supervision=True)
trained_kernel3_model = smp3d.MedNeXt(kernel_size=3, **options)
model = smp3d.MedNeXt(kernel_size=5, **options)
model = smp3d.upkern(model, trained_kernel3_model)  # UpKern: kernels resized by trilinear interpolation
print(model.eval()(torch.randn(1, 1, 32, 32, 32)).shape)  # prints: torch.Size([1, 3, 32, 32, 32])
```

`smp3d.load_mednext_state_dict(model, "model_final_checkpoint.model")` loads MedNeXt (or MONAI)
checkpoints into such a model, strictly.

Whole-network parameters (1 input channel, 3 classes, deep-supervision heads included) equal MedNeXt's code
less its 1-element `dummy_tensor`: S 5,553,839 / 5,983,471 (k3 / k5), B 10,529,231 / 10,958,863,
M 17,551,887 / 18,263,759, L 61,782,191 / 62,995,823. Rounded, these are the paper's 5.6 / 5.9 (printed for
5.98M), 10.5 / 11.0, 17.6 / 18.3, 61.8 / 63.0 M; without the heads M k3 would round to 17.5M, so the table
counts them. With `deep_supervision=True` the model returns, in training mode, the mask and the masks of the
coarser decoder levels (the deepest, the bottleneck, has a head but is not returned), finest first.
The `mednext_*` encoders work with every decoder, and `MedNeXt` with every encoder; inputs must be multiples
of the output stride. Stage 1 has stride 1 (full resolution); a stride there makes the stem a patchify conv.
"""


def _family(name: str) -> str:
    return smp3d.get_encoder_spec(name).family or name


def requirements() -> list[tuple[str, ...]]:
    """Per architecture: the encoder depths it accepts (refusals with their reasons), whether it
    dilates the encoder, and what input sizes it takes. Built with resnet18 on the meta device."""
    rows = []
    for arch, cls in architectures().items():
        parameters = inspect.signature(cls.__init__).parameters
        accepted, refused = [], []
        channels = parameters.get("decoder_channels")
        for depth in range(1, 6):
            extra = {}
            if channels is not None and isinstance(channels.default, tuple):  # one item per decoder block
                extra["decoder_channels"] = channels.default[-depth:]
            try:
                with torch.device("meta"):
                    model = cls(encoder_name="resnet18", encoder_depth=depth, spatial_dims=2, **extra)
            except ValueError as error:
                refused.append(f"{depth}: {error}")
                continue
            accepted.append(depth)
            if depth == parameters["encoder_depth"].default:
                sizes = "multiple of the output stride" if model.requires_divisible_input_shape else "any"
                levels = len(getattr(model.decoder, "level_channels", ()))
                supervision = f"{levels} levels" if "deep_supervision" in parameters and levels > 1 else "-"
        dilation = parameters.get("encoder_output_stride")
        rows.append(
            (
                arch,
                str(parameters["encoder_depth"].default),
                ", ".join(map(str, accepted)),
                "-" if dilation is None else str(dilation.default),
                sizes,
                supervision,
                " ".join(refused),
            )
        )
    return rows


def render(results: dict[Cell, Outcome] | None = None) -> str:
    results = matrix() if results is None else results
    archs = list(dict.fromkeys(c.arch for c in results))
    encoders = list(dict.fromkeys(c.encoder for c in results))
    passed = sum(o.status == "ok" for o in results.values())
    refused = sum(o.status == "refused" for o in results.values())
    bugs = sum(o.status == "bug" for o in results.values())
    summary = f"{len(results)} cells: {passed} pass, {refused} refused at construction (reasons below)"
    summary += f", {bugs} FAILING." if bugs else "."
    lines = [
        HEADER.format(
            aniso2=STRIDES["anisotropic"][2],
            aniso3=STRIDES["anisotropic"][3],
            size=SIZE,
            summary=summary,
        ).rstrip()
        + "\n",
        "| architecture | " + " | ".join(f"{_family(e)} (`{e}`)" for e in encoders) + " |",
        "|---|" + "---|" * len(encoders),
    ]
    notes: dict[str, int] = {}
    for arch in archs:
        row = []
        for encoder in encoders:
            outcomes = [o for c, o in results.items() if c.arch == arch and c.encoder == encoder]
            failing = [o for o in outcomes if o.status != "ok"]
            if not failing:
                row.append("yes")
                continue
            marks = []
            for o in failing:
                key = f"{o.status}: {o.detail}"
                notes.setdefault(key, len(notes) + 1)
                marks.append(f"[{notes[key]}]")
            row.append(f"{len(outcomes) - len(failing)}/{len(outcomes)} " + " ".join(dict.fromkeys(marks)))
        lines.append(f"| {arch} | " + " | ".join(row) + " |")
    if notes:
        lines.append("")
        lines.append("Cells that do not pass (each says why, as the error does at construction):")
        lines.append("")
        for text, number in notes.items():
            lines.append(f"{number}. {text}")
    lines += [
        "",
        "## What each architecture needs",
        "",
        "Encoder depths each architecture accepts (others are refused at construction with the reason",
        "below), the default `encoder_output_stride` of those that trade the encoder's deepest strides for",
        "dilation (per axis; any encoder with the dilation hook, see docs/index.md), and the input sizes",
        'they take at their defaults ("any": sizes need not be multiples of the output stride), and the',
        "resolution levels of the decoder at the default depth for those with `deep_supervision=True`",
        "(training mode returns a mask for each but the deepest; see docs/deep_supervision.md).",
        "",
        "| architecture | default depth | depths | encoder_output_stride | input sizes | deep supervision |",
        "|---|---|---|---|---|---|",
    ]
    reasons = []
    for arch, default, accepted, dilation, sizes, supervision, refused in requirements():
        lines.append(f"| {arch} | {default} | {accepted} | {dilation} | {sizes} | {supervision} |")
        if refused:
            reasons.append(f"- {arch}, encoder_depth {refused}")
    if reasons:
        lines += ["", "Refusals:", "", *reasons]
    lines += ["", MEDNEXT_NOTES.rstrip()]
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC} is stale: run python scripts/architecture_matrix.py", file=sys.stderr)
            return 1
        return 0
    _write_atomic(DOC, text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
