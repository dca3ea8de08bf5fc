from __future__ import annotations

import os

# No test may touch the network: huggingface_hub reads this when it is first imported.
os.environ["HF_HUB_OFFLINE"] = "1"

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import huggingface_hub.constants as _hf_constants
import pytest
import torch

from smp3d.encoders import registry as registry_module

# ... but a pytest plugin may have imported huggingface_hub before this file ran (then the variable above
# came too late and a missing file cost a 23 s HTTP back-off in CI): set the flag it read as well.
_hf_constants.HF_HUB_OFFLINE = True

# Under pytest-xdist each of the machine's cores runs a worker: one thread each, so that OpenMP pools do not
# oversubscribe the cores (which slows small ops many times over).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[registry_module.EncoderRegistry]:
    """A new, empty-cache registry for the test; the process-wide one is restored afterwards."""
    registry = registry_module.EncoderRegistry()
    monkeypatch.setattr(registry_module, "_REGISTRY", registry)
    yield registry


MakeDistribution = Callable[..., Path]


@pytest.fixture
def make_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeDistribution]:
    """Create an installed distribution on ``sys.path``: modules plus a ``.dist-info`` folder
    with ``entry_points.txt``, exactly what pip leaves in site-packages.

    ``make_distribution("toy-plugin", {"toy_plugin": "source"}, {"smp3d.encoders": {"toy": "toy_plugin:ENCODERS"}})``
    """
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    created: list[str] = []

    def make(name: str, modules: dict[str, str], entry_points: dict[str, dict[str, str]]) -> Path:
        for module, source in modules.items():
            (site / f"{module}.py").write_text(textwrap.dedent(source))
            created.append(module)
        info = site / f"{name.replace('-', '_')}-0.1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
        lines = []
        for group, items in entry_points.items():
            lines.append(f"[{group}]")
            lines += [f"{key} = {value}" for key, value in items.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        return site

    yield make
    for module in created:
        sys.modules.pop(module, None)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
