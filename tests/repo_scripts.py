"""Import the repository's scripts (``scripts/``, ``benchmarks/``), which are not packages, as modules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def load(relative_path: str) -> ModuleType:
    """The module at ``ROOT / relative_path``, executed afresh (e.g. ``load("scripts/encoder_table.py")``)."""
    path = ROOT / relative_path
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))  # a script may import its siblings, as when run directly
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look their module up there
    spec.loader.exec_module(module)
    return module
