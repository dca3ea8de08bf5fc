"""Counts and lists in the prose of README.md and docs/*.md come from the registry (scripts/doc_counts.py)."""

from __future__ import annotations

import pytest
import repo_scripts

import smp3d
from smp3d.models import ARCHITECTURES

counts = repo_scripts.load("scripts/doc_counts.py")


def test_marked_counts_are_up_to_date():
    stale = counts.stale()
    assert not stale, (
        f"stale counts in {sorted(str(p.relative_to(counts.ROOT)) for p in stale)}: run python scripts/doc_counts.py"
    )


def test_readme_and_guide_use_the_generated_counts():
    readme = (counts.ROOT / "README.md").read_text()
    guide = (counts.ROOT / "docs" / "index.md").read_text()
    for key in ("encoders", "native_encoders", "families", "timm_aliases", "architectures", "architecture_list"):
        assert f"<!-- count:{key} -->" in readme, key
    assert "<!-- count:architecture_table -->" in guide


def test_values_follow_the_registry():
    values = counts.values()
    first_party = counts.first_party_names()
    assert int(values["encoders"]) == sum(len(names) for names in first_party.values())
    assert int(values["encoders"]) <= len(smp3d.list_encoders())  # plugins may add more, never fewer
    assert int(values["native_encoders"]) + int(values["timm_aliases"]) == int(values["encoders"])
    classes = set(ARCHITECTURES.values())
    assert int(values["architectures"]) == len(classes)
    for cls in classes:
        assert f"`{cls.__name__}`" in values["architecture_list"]
    for name in ARCHITECTURES:
        assert f"`{name}`" in values["architecture_table"], name
    assert "| `Unet` | `unet` | Ronneberger et al., 2015 |" in values["architecture_table"]


def test_render_rewrites_spans_and_refuses_unknown_keys():
    text = "We have <!-- count:encoders -->3<!-- /count --> encoders and <!-- count:families -->1<!-- /count -->."
    assert counts.render(text, {"encoders": "7", "families": "2"}) == (
        "We have <!-- count:encoders -->7<!-- /count --> encoders and <!-- count:families -->2<!-- /count -->."
    )
    with pytest.raises(KeyError, match="unknown count key 'encoderz'"):
        counts.render("<!-- count:encoderz -->1<!-- /count -->", {"encoders": "7"}, "page.md")
