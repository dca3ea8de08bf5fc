"""The wheel checks of .ci/package_check.py fail on a wheel that forgets a module, py.typed or an entry point."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def package_check():
    spec = importlib.util.spec_from_file_location("package_check", ROOT / ".ci" / "package_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wheel(path: Path, modules: set[str], entry_points: dict[str, dict[str, str]], typed: bool = True) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name in modules:
            parts = name.split(".")
            is_package = (ROOT.joinpath(*parts) / "__init__.py").exists()
            archive.writestr("/".join(parts) + ("/__init__.py" if is_package else ".py"), "")
        if typed:
            archive.writestr("smp3d/py.typed", "")
        text = "".join(
            f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in points.items())
            for group, points in entry_points.items()
        )
        archive.writestr("smp3d-0.1.0.dist-info/entry_points.txt", text)
    return path


def test_a_complete_wheel_passes_and_what_it_forgets_is_named(package_check, tmp_path) -> None:
    modules = package_check.source_modules()
    points = package_check.declared_entry_points()
    assert {"smp3d", "smp3d.cli.config_file", "smp3d_encoders.resnet", "weights_tools.cli"} <= modules
    assert points["console_scripts"]["smp3d"] == "smp3d.cli:main" and "resnet" in points["smp3d.encoders"]
    assert package_check.check_wheel(_wheel(tmp_path / "ok.whl", modules, points)) == []

    fewer = {group: dict(p) for group, p in points.items()}
    del fewer["smp3d.encoders"]["resnet"]
    partial = modules - {m for m in modules if m.startswith("smp3d.metrics")}
    problems = package_check.check_wheel(_wheel(tmp_path / "bad.whl", partial, fewer, typed=False))
    assert len(problems) == 3, problems
    assert "smp3d.metrics, smp3d.metrics.accumulator" in problems[0]
    assert problems[1] == "bad.whl lacks smp3d/py.typed"
    assert problems[2] == "bad.whl lacks the entry point [smp3d.encoders] resnet = smp3d_encoders.resnet:ENCODERS"
