"""Check what users install: build the sdist and the wheel, `twine check` them, install the wheel
(not editable) into a fresh virtual environment and run the quick start and the entry-point listing
from there, then type-check the public API with mypy.

    python .ci/package_check.py [--keep DIR] [--skip-mypy]

The wheel is built from the sdist (``python -m build``'s default), so a file the sdist forgets is
missing from the wheel too. The fresh environment reuses the running environment's installed
packages (torch, timm, ...) through a ``.pth`` file listing its site-packages folders, so no
dependency is downloaded again (only ``build`` fetches the build backend, setuptools, into its
isolated build environment, as for any sdist); those folders come after the fresh environment's own, and the
check fails unless ``smp3d`` is imported from the installed wheel. It also fails when the wheel
lacks a module of the source tree, ``py.typed``, an entry point of ``pyproject.toml`` or a console
script, when an encoder plugin fails to load, or when the quick start fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the TOML reader pip carries
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("smp3d", "smp3d_encoders", "weights_tools")
REQUIRED_DATA = ("smp3d/py.typed",)
PLUGIN = "smp3d-example-plugin"


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(str(c) for c in command), flush=True)
    return subprocess.run(command, check=True, **kwargs)


def source_modules(root: Path = ROOT) -> set[str]:
    """Dotted names of every module of :data:`PACKAGES` in the source tree."""
    names = set()
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            parts = path.relative_to(root).with_suffix("").parts
            names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def declared_entry_points(root: Path = ROOT) -> dict[str, dict[str, str]]:
    """group -> {name: value} of ``pyproject.toml`` (console scripts under ``console_scripts``)."""
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    groups = {group: dict(points) for group, points in project.get("entry-points", {}).items()}
    groups["console_scripts"] = dict(project.get("scripts", {}))
    return groups


def check_wheel(wheel: Path, root: Path = ROOT) -> list[str]:
    """What the wheel file lacks: modules of the source tree, package data, entry points (empty if nothing)."""
    problems = []
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_text = next((archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")), "")
    in_wheel = set()
    for name in names:
        if name.endswith(".py") and name.split("/")[0] in PACKAGES:
            parts = name[:-3].split("/")
            in_wheel.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    missing = sorted(source_modules(root) - in_wheel)
    if missing:
        problems.append(f"{wheel.name} lacks {len(missing)} module(s) of the source tree: {', '.join(missing[:20])}")
    problems += [f"{wheel.name} lacks {path}" for path in REQUIRED_DATA if path not in names]
    found: dict[str, dict[str, str]] = {}
    group = None
    for line in entry_text.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            group = line[1:-1]
        elif "=" in line and group is not None:
            key, value = (part.strip() for part in line.split("=", 1))
            found.setdefault(group, {})[key] = value
    for group, points in declared_entry_points(root).items():
        for key, value in points.items():
            if found.get(group, {}).get(key) != value:
                problems.append(f"{wheel.name} lacks the entry point [{group}] {key} = {value}")
    return problems


# Run by the fresh environment's python: every module imports from the installed wheel, its entry points are
# installed, and the encoder families load.
SMOKE = r"""
import importlib, importlib.metadata as md, json, pkgutil, sys, warnings
from pathlib import Path
expected = json.loads(Path(sys.argv[1]).read_text())
import smp3d
site = Path(sys.argv[2]).resolve()
where = Path(smp3d.__file__).resolve()
assert site in where.parents, f"smp3d imported from {where}, not from the installed wheel in {site}"
found = set()
for package in ("smp3d", "smp3d_encoders", "weights_tools"):
    module = importlib.import_module(package)
    found.add(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        found.add(info.name)
missing = sorted(set(expected["modules"]) - found)
assert not missing, f"modules missing from the installed wheel: {missing}"
dist = md.distribution("smp3d")  # the first on sys.path: the wheel's, before the reused folders' metadata
assert Path(dist.locate_file("smp3d/__init__.py")).resolve() == where, "smp3d's metadata is not the wheel's"
installed = {(ep.group, ep.name, ep.value) for ep in dist.entry_points}
for group, points in expected["entry_points"].items():
    for name, value in points.items():
        assert (group, name, value) in installed, f"entry point [{group}] {name} = {value} not installed"
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    names = smp3d.list_encoders()
# A plugin that fails to load warns: with the wheel and the example plugin installed, none may.
failed = [str(w.message) for w in caught]
assert not failed, failed
plugin = md.distribution("smp3d-example-plugin")
assert Path(plugin.locate_file("")).resolve() == site, "the example plugin is not the one installed here"
for ep in plugin.entry_points:
    ep.load()
families = sorted(ep.name for ep in md.entry_points(group="smp3d.encoders") if ep.dist.name == "smp3d")
print(f"installed smp3d {smp3d.__version__} from {where.parent}")
print(f"entry points: {len(families)} encoder families ({', '.join(families)}); list_encoders(): {len(names)} names")
print(f"example plugin {plugin.version} loaded from the fresh environment")
for family in ("resnet18", "efficientnet-b0", "mit_b0", "plain"):
    assert family in names, f"{family} missing from list_encoders()"
"""


def overlay_paths() -> list[str]:
    """The running environment's site-packages folders (those of a venv that overlays another too)."""
    return [p for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages")) and os.path.isdir(p)]


def check_install(wheel: Path, work: Path) -> None:
    env = work / "venv"
    run([sys.executable, "-m", "venv", str(env)])
    python = env / "bin" / "python"
    site = Path(
        subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
        .decode()
        .strip()
    )
    (site / "zz-reuse-installed-packages.pth").write_text("\n".join(overlay_paths()) + "\n")
    # Dependencies are found in the reused folders, so nothing is downloaded; smp3d itself goes into `site`.
    # pip may report dynamic-network-architectures' timm<1.0.23 pin found there: the README says why that
    # oracle is installed with --no-deps; it is not a dependency of the wheel.
    run([str(python), "-m", "pip", "install", "-q", "--no-input", str(wheel)])
    # The example plugin too (not editable), as a third-party package installs beside the wheel: its editable
    # install in the reused folders is metadata without its module there, and would warn on every registry load.
    run([str(python), "-m", "pip", "install", "-q", "--no-input", "--no-deps", str(ROOT / "examples" / PLUGIN)])
    expected = {"modules": sorted(source_modules()), "entry_points": declared_entry_points()}
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    outside = work / "elsewhere"  # run away from the source tree, so that it cannot be imported by accident
    outside.mkdir()
    (work / "expected.json").write_text(json.dumps(expected))
    (work / "smoke.py").write_text(SMOKE)
    run([str(python), str(work / "smoke.py"), str(work / "expected.json"), str(site)], cwd=outside, env=clean)
    quickstart = outside / "quickstart.py"
    quickstart.write_bytes((ROOT / "examples" / "quickstart.py").read_bytes())
    run([str(python), str(quickstart), "--encoder", "resnet18", "--size", "32", "32", "16"], cwd=outside, env=clean)
    for script in declared_entry_points()["console_scripts"]:
        run([str(env / "bin" / script), "--help"], cwd=outside, env=clean, stdout=subprocess.DEVNULL)
    run([str(env / "bin" / "smp3d"), "--version"], cwd=outside, env=clean)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=None, help="build and install in this folder and keep it")
    parser.add_argument("--skip-mypy", action="store_true", help="only the packaging checks")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="smp3d-package-check-") as temp:
        work = args.keep or Path(temp)
        work.mkdir(parents=True, exist_ok=True)
        dist = work / "dist"
        run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)])
        wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
        if len(wheels) != 1 or len(sdists) != 1:
            raise SystemExit(f"expected one wheel and one sdist in {dist}, got {[p.name for p in dist.iterdir()]}")
        run([sys.executable, "-m", "twine", "check", "--strict", str(wheels[0]), str(sdists[0])])
        problems = check_wheel(wheels[0])
        if problems:
            raise SystemExit("package check failed:\n  " + "\n  ".join(problems))
        check_install(wheels[0], work)
    if not args.skip_mypy:
        run([sys.executable, "-m", "mypy"], cwd=ROOT)  # files and settings: [tool.mypy] in pyproject.toml
    print(
        "package check passed: sdist and wheel build, twine check, installed wheel runs"
        + ("" if args.skip_mypy else ", mypy")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
