"""Bar charts (PNG) from benchmark result files, for the documentation site.

    python scripts/benchmark_plots.py                      # benchmarks/results/*.json -> site_plots/*.png
    python scripts/benchmark_plots.py a.json --out plots/  # any file written by a benchmark's --out

A result file is what ``benchmarks/models.py --out`` and ``benchmarks/fast_paths.py --out`` write:
``{"device", "torch", "shape", "rows": [{"library", "model", "mode", "ms", ...}]}``, optionally with
``"title"``, ``"y"`` (the row key to plot, ``"ms"`` by default), ``"ylabel"``, ``"target"`` (a
horizontal line) and ``"provenance"`` (where the figures come from; shown under the chart). Each
``(model, mode)`` pair is a group of bars, one bar per ``library``. Rows with an ``"error"`` are
skipped. The mkdocs hook (``scripts/mkdocs_hooks.py``) calls :func:`render_all` at build time, so a
file dropped into ``benchmarks/results/`` appears in the site as ``benchmarks/<file stem>.png``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the non-interactive backend

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
MODE_NAMES = {"train": "training step", "infer": "inference"}


def load(path: Path) -> dict:
    """Read one result file and check the fields the chart needs, naming the file and the bad row."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise ValueError(f"{path}: expected an object with a 'rows' list, got {type(data).__name__}")
    key = data.get("y", "ms")
    for i, row in enumerate(data["rows"]):
        if "error" in row:
            continue
        missing = [k for k in ("library", "mode", key) if k not in row]
        if missing:
            raise ValueError(f"{path}: row {i} lacks {missing} (has {sorted(row)})")
    return data


def figure(data: dict, name: str) -> plt.Figure:
    """Grouped bars: one group per (model, mode), one bar per library, in file order."""
    key = data.get("y", "ms")
    rows = [r for r in data["rows"] if "error" not in r]
    groups: list[tuple[str, str]] = []
    libraries: list[str] = []
    values: dict[tuple[str, str, str], float] = {}
    for row in rows:
        group = (row.get("model", ""), row["mode"])
        if group not in groups:
            groups.append(group)
        if row["library"] not in libraries:
            libraries.append(row["library"])
        values[(*group, row["library"])] = float(row[key])

    crowded = len(groups) > 6
    bars_total = len(groups) * len(libraries)
    fig, ax = plt.subplots(figsize=(min(16.0, max(7.0, 0.35 * bars_total + 2)), 5.0 if crowded else 4.2), dpi=100)
    width = 0.8 / len(libraries)
    for j, library in enumerate(libraries):
        xs = [i + (j - (len(libraries) - 1) / 2) * width for i, g in enumerate(groups) if (*g, library) in values]
        ys = [values[(*g, library)] for g in groups if (*g, library) in values]
        bars = ax.bar(xs, ys, width, label=library)
        ax.bar_label(bars, fmt="%g", fontsize=6 if crowded else 7, padding=1)
    single_model = len({g[0] for g in groups}) == 1
    labels = [
        MODE_NAMES.get(mode, mode) if single_model else f"{model}\n{MODE_NAMES.get(mode, mode)}"
        for model, mode in groups
    ]
    if crowded:
        ax.set_xticks(range(len(groups)), [label.replace("\n", ", ") for label in labels], fontsize=8)
        ax.tick_params(axis="x", labelrotation=35)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
    else:
        ax.set_xticks(range(len(groups)), labels, fontsize=8)
    ax.set_ylabel(data.get("ylabel", key))
    if "target" in data:
        ax.axhline(float(data["target"]), color="black", linestyle="--", linewidth=1, label=f"target {data['target']}")
    ax.set_title(textwrap.fill(data.get("title", name), 80), fontsize=10)
    ax.legend(fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    provenance = data.get("provenance", {})
    note = " · ".join(str(provenance[k]) for k in ("date", "command") if k in provenance)
    if note:
        fig.text(0.01, 0.01, note, fontsize=6, color="0.4")
    fig.tight_layout(rect=(0, 0.04 if note else 0, 1, 1))
    return fig


def render(path: Path) -> bytes:
    """The PNG of one result file. Metadata is fixed so the same file always gives the same bytes."""
    data = load(path)
    fig = figure(data, path.stem)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def render_all(folder: Path = RESULTS) -> dict[str, bytes]:
    """``{file stem: PNG}`` for every ``*.json`` in ``folder``, sorted by name."""
    return {path.stem: render(path) for path in sorted(Path(folder).glob("*.json"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path, help=f"result files (default: {RESULTS}/*.json)")
    parser.add_argument("--out", type=Path, default=Path("site_plots"), help="folder for the PNGs")
    args = parser.parse_args(argv)
    files = args.files or sorted(RESULTS.glob("*.json"))
    if not files:
        print(f"benchmark_plots: no result files in {RESULTS}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for path in files:
        target = args.out / f"{path.stem}.png"
        tmp = target.with_suffix(".png.tmp")
        tmp.write_bytes(render(path))
        os.replace(tmp, target)
        print(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
