"""benchmarks/results/*.json (the figures the site plots) agree with the tables of docs/benchmarks.md."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
DOC = ROOT / "docs" / "benchmarks.md"


def _number(value: float) -> re.Pattern:
    """``value`` as a table writes it: 7.8 matches ``7.8`` or ``7.80``, 1036 matches ``1036``."""
    text = f"{value:g}"
    return re.compile(rf"(?<![\d.]){re.escape(text)}{'0*' if '.' in text else ''}(?![\d])")


def test_there_are_results():
    assert RESULTS, "benchmarks/results/ holds no result files"


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.name)
def test_result_file_has_provenance_and_is_in_the_doc(path):
    data = json.loads(path.read_text())
    provenance = data.get("provenance", {})
    assert {"date", "source"} <= set(provenance), f"{path.name}: provenance needs a date and a source"
    assert f"benchmarks/{path.stem}.png" in DOC.read_text(), f"docs/benchmarks.md does not show {path.stem}.png"
    key = data.get("y", "ms")
    doc = DOC.read_text()
    missing = [row[key] for row in data["rows"] if "error" not in row and not _number(row[key]).search(doc)]
    assert not missing, f"{path.name}: figures not in docs/benchmarks.md's tables: {missing}"


def test_number_pattern():
    assert _number(7.8).search("| 7.80 |") and not _number(7.8).search("| 17.80 |")
    assert _number(1036).search("| 1036 |") and not _number(1036).search("| 10360 |")
