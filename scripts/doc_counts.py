"""Counts and lists in the prose of README.md and docs/*.md, generated from the registry.

    python scripts/doc_counts.py          # rewrite every marked span that is stale
    python scripts/doc_counts.py --check  # exit 1 and name the stale spans
    python scripts/doc_counts.py --list   # the known keys and their current values

A marked span is ``<!-- count:KEY -->VALUE<!-- /count -->``: the script replaces VALUE with the
current value of KEY, so the prose around it is written by hand and the number never is. The values
describe what smp3d itself installs (its own entry points), not plugins installed next to it.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
import tempfile
from importlib.metadata import distribution
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SPAN = re.compile(r"<!-- count:([a-z_]+) -->(.*?)<!-- /count -->", re.S)
ENCODER_GROUP = "smp3d.encoders"
TIMM_ALIASES_ENTRY_POINT = "timm"  # segmentation_models_pytorch_3d's names, built through the tu- bridge


def first_party_names() -> dict[str, list[str]]:
    """``{entry-point name: encoder names}`` of the smp3d distribution's own ``smp3d.encoders`` entry points."""
    out: dict[str, list[str]] = {}
    for ep in distribution("smp3d").entry_points:
        if ep.group == ENCODER_GROUP:
            loaded = ep.load()
            out[ep.name] = sorted(loaded() if callable(loaded) else loaded)
    return out


def values() -> dict[str, str]:
    """The current value of every key, as it is written into the prose."""
    import smp3d
    from smp3d.models import ARCHITECTURES

    by_entry_point = first_party_names()
    native = sorted(n for ep, names in by_entry_point.items() if ep != TIMM_ALIASES_ENTRY_POINT for n in names)
    aliases = by_entry_point.get(TIMM_ALIASES_ENTRY_POINT, [])
    families = {smp3d.get_encoder_spec(name).family for name in native}
    classes = list(dict.fromkeys(ARCHITECTURES.values()))
    return {
        "encoders": str(len(native) + len(aliases)),
        "native_encoders": str(len(native)),
        "timm_aliases": str(len(aliases)),
        "families": str(len(families)),
        "architectures": str(len(classes)),
        "architecture_list": ", ".join(f"`{cls.__name__}`" for cls in classes),
        "architecture_table": architecture_table(ARCHITECTURES),
    }


_CITATION = re.compile(r"\(([A-Z][^,()]*?),[^()]*?\b((?:19|20)\d\d)\b")


def citation(cls: type) -> str:
    """ "Author et al., year" from the first parenthesis of the class docstring's first paragraph."""
    paragraph = " ".join((inspect.getdoc(cls) or "").split("\n\n")[0].split())
    match = _CITATION.search(paragraph)
    return f"{match.group(1)}, {match.group(2)}" if match else "-"


def architecture_table(architectures: dict[str, type]) -> str:
    """The table of architectures: class, every ``create_model`` name, and the paper its docstring cites."""
    names: dict[type, list[str]] = {}
    for name, cls in architectures.items():
        names.setdefault(cls, []).append(name)
    lines = ["| class | `create_model` names | paper |", "| --- | --- | --- |"]
    lines += [
        f"| `{cls.__name__}` | {', '.join(f'`{n}`' for n in spelled)} | {citation(cls)} |"
        for cls, spelled in names.items()
    ]
    return "\n\n" + "\n".join(lines) + "\n\n"


def render(text: str, current: dict[str, str], where: str = "text") -> str:
    """``text`` with every marked span set to its current value; an unknown key is an error."""

    def replace(match: re.Match) -> str:
        key = match.group(1)
        if key not in current:
            raise KeyError(f"{where}: unknown count key {key!r}; known: {', '.join(sorted(current))}")
        return f"<!-- count:{key} -->{current[key]}<!-- /count -->"

    return SPAN.sub(replace, text)


def stale(pages: list[Path] = PAGES) -> dict[Path, str]:
    """``{page: updated text}`` for the pages whose marked spans are out of date."""
    current = values()
    out = {}
    for page in pages:
        text = page.read_text()
        updated = render(text, current, str(page.relative_to(ROOT)))
        if updated != text:
            out[page] = updated
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if a marked span is stale; write nothing")
    parser.add_argument("--list", action="store_true", help="print the keys and their values")
    args = parser.parse_args(argv)
    if args.list:
        for key, value in values().items():
            print(f"{key}: {value}")
        return 0
    outdated = stale()
    for page, text in outdated.items():
        name = page.relative_to(ROOT)
        if args.check:
            print(f"{name}: stale counts; run python scripts/doc_counts.py", file=sys.stderr)
            continue
        with tempfile.NamedTemporaryFile("w", dir=page.parent, delete=False, suffix=".tmp") as f:
            f.write(text)
        os.chmod(f.name, page.stat().st_mode & 0o777)
        os.replace(f.name, page)
        print(f"updated {name}")
    return 1 if args.check and outdated else 0


if __name__ == "__main__":
    raise SystemExit(main())
