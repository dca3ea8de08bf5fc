"""MkDocs hook (``hooks:`` in mkdocs.yml): the parts of the site that are generated at build time.

- **API reference.** One page per public name of ``smp3d.__all__`` (``api/smp3d.Unet.md``, ...) and
  one page per public module (``smp3d.losses``, ``smp3d.metrics``, ``smp3d.inference``,
  ``smp3d.training``, ``weights_tools``, ...), each a mkdocstrings ``:::`` directive, plus an
  overview. A name added to ``__all__`` gets its page without editing anything here.
- **Benchmark plots.** ``scripts/benchmark_plots.py`` draws PNGs from ``benchmarks/results/*.json``;
  they are added to the site as ``benchmarks/<name>.png`` (nothing binary is committed).
- **Pages missing from the nav.** Any ``docs/*.md`` not named in mkdocs.yml's ``nav`` is appended
  under "More", so a new page is never unreachable (strict mode would not flag it).
- **Note markers** such as ``[2] [3]`` in table rows (docs/architectures.md) are escaped, so Markdown
  does not read them as reference links.
- **Links out of ``docs/``** (``../examples/...``), which work on GitHub but not in the site, become
  links to ``repo_url`` when mkdocs.yml sets one, or the repository path in code otherwise.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import posixpath
import re
import sys
import types
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent

#: Modules documented as a whole (their ``__all__``), besides the modules listed in ``smp3d.__all__``.
MODULES = ("smp3d.losses", "smp3d.metrics", "smp3d.inference", "smp3d.training", "weights_tools")
API_NAV_TITLE = "API reference"
EXTRA_NAV_TITLE = "More"


def _public_names(module: types.ModuleType) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        raise RuntimeError(f"{module.__name__} has no __all__; the API reference is generated from it")
    return list(names)


def _summary(obj: Any) -> str:
    """The first line of ``obj``'s docstring (empty for data such as ``__version__``)."""
    if isinstance(obj, str | int | float | tuple | dict | frozenset):
        return ""
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def api_pages() -> dict[str, tuple[str, str, str]]:
    """``{src path: (section, title, markdown)}`` for every API page, in nav order."""
    import smp3d
    from smp3d import SegmentationModel

    architectures: list[tuple[str, str]] = []
    functions: list[tuple[str, str]] = []
    modules: list[str] = []
    data: list[str] = []
    for name in _public_names(smp3d):
        obj = getattr(smp3d, name)
        if isinstance(obj, types.ModuleType):
            modules.append(obj.__name__)
        elif inspect.isclass(obj) and issubclass(obj, SegmentationModel) and obj is not SegmentationModel:
            architectures.append((name, _summary(obj)))
        elif inspect.isclass(obj) or callable(obj):
            functions.append((name, _summary(obj)))
        else:
            data.append(name)
    modules += [m for m in MODULES if m not in modules]
    architectures.sort(key=lambda item: item[0].lower())
    functions.sort(key=lambda item: item[0].lower())

    pages: dict[str, tuple[str, str, str]] = {}
    for name, _ in architectures + functions:
        section = "Architectures" if (name, _) in architectures else "smp3d"
        # The object's own heading (h1) is the page title.
        pages[f"api/smp3d.{name}.md"] = (section, name, f"::: smp3d.{name}\n    options:\n      heading_level: 1\n")
    module_rows = []
    for module_name in modules:
        module = importlib.import_module(module_name)
        members = ", ".join(f'"{n}"' for n in _public_names(module))
        summary = _summary(module)
        module_rows.append((module_name, summary))
        pages[f"api/{module_name}.md"] = (
            "Modules",
            module_name,
            f"# {module_name}\n\n::: {module_name}\n    options:\n      show_root_heading: false\n"
            f"      members: [{members}]\n",
        )

    lines = [
        "# API reference",
        "",
        "Generated from the docstrings at build time (`scripts/mkdocs_hooks.py`): one page per name in",
        "`smp3d.__all__` and one per public module, listing that module's `__all__`.",
        "",
    ]
    for title, rows, prefix in (
        ("Architectures", architectures, "smp3d."),
        ("Functions and classes in `smp3d`", functions, "smp3d."),
        ("Modules", module_rows, ""),
    ):
        lines += [f"## {title}", "", "| name | summary |", "| --- | --- |"]
        lines += [f"| [`{prefix}{n}`]({prefix}{n}.md) | {s.replace('|', '/')} |" for n, s in rows]
        lines.append("")
    for name in data:
        lines.append(f"`smp3d.{name}` is `{getattr(smp3d, name)!r}` in this build.")
    pages["api/index.md"] = ("", "Overview", "\n".join(lines) + "\n")
    return pages


def _benchmark_plots() -> types.ModuleType:
    """scripts/benchmark_plots.py, loaded by path (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("benchmark_plots", ROOT / "scripts" / "benchmark_plots.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("benchmark_plots", module)
    spec.loader.exec_module(module)
    return module


def _nav_paths(nav: Any) -> set[str]:
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, dict):
        return set().union(*(_nav_paths(v) for v in nav.values()))
    if isinstance(nav, list):
        return set().union(*(_nav_paths(v) for v in nav)) if nav else set()
    return set()


def _api_nav(pages: dict[str, tuple[str, str, str]]) -> list[Any]:
    nav: list[Any] = [{"Overview": "api/index.md"}]
    sections: dict[str, list[dict[str, str]]] = {}
    for path, (section, title, _) in pages.items():
        if section:
            sections.setdefault(section, []).append({title: path})
    nav += [{section: entries} for section, entries in sections.items()]
    return nav


def on_files(files: Files, config: Any) -> Files:
    """Add the generated API pages and plots; complete the nav (the nav is built after this event)."""
    pages = api_pages()
    for path, (_, _, markdown) in pages.items():
        files.append(File.generated(config, path, content=markdown))

    for name, png in _benchmark_plots().render_all(ROOT / "benchmarks" / "results").items():
        files.append(File.generated(config, f"benchmarks/{name}.png", content=png))

    nav = config["nav"]
    for i, entry in enumerate(nav):
        if isinstance(entry, dict) and API_NAV_TITLE in entry:
            nav[i] = {API_NAV_TITLE: _api_nav(pages)}
            break
    else:
        nav.append({API_NAV_TITLE: _api_nav(pages)})

    listed = _nav_paths(nav)
    missing = sorted(
        f.src_uri for f in files.documentation_pages() if f.src_uri not in listed and not f.src_uri.startswith("api/")
    )
    if missing:
        nav.append({EXTRA_NAV_TITLE: missing})
    return files


# "[2] [3]" note markers in generated table cells would read as a Markdown reference link.
_NOTE_MARKER = re.compile(r"(?<=\s)\[(\d+)\](?=\s)")
_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s#]+)(#[^)\s]*)?\)")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Rewrite links that leave ``docs/`` (fine on GitHub, dead in the site)."""
    page_dir = posixpath.dirname(page.file.src_uri)
    repo_url = (config.get("repo_url") or "").rstrip("/")

    def rewrite(match: re.Match) -> str:
        text, target, anchor = match.group(1), match.group(2), match.group(3) or ""
        if "://" in target or target.startswith(("mailto:", "/")):
            return match.group(0)
        resolved = posixpath.normpath(posixpath.join("docs", page_dir, target))
        if resolved.startswith("docs/"):
            return match.group(0)
        if repo_url:
            return f"[{text}]({repo_url}/blob/main/{resolved}{anchor})"
        plain = text.strip("`")
        return f"`{resolved}`" if plain == resolved else f"{text} (`{resolved}` in the repository)"

    markdown = _LINK.sub(rewrite, markdown)
    return "\n".join(
        _NOTE_MARKER.sub(r"\\[\1\\]", line) if line.startswith("|") else line for line in markdown.split("\n")
    )
