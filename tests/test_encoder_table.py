"""docs/encoders.md is generated from the registry and must not go stale."""

from __future__ import annotations

import repo_scripts


def _load():
    return repo_scripts.load("scripts/encoder_table.py")


def test_encoder_table_is_up_to_date():
    table = _load()
    assert table.DOC.read_text() == table.render(), "docs/encoders.md is stale: run python scripts/encoder_table.py"


def test_table_lists_every_first_party_encoder_with_counts():
    table = _load()
    text = table.render()
    for name in table.first_party_encoders():
        assert f"| `{name}` |" in text
    assert (
        "| resnet | `resnet18` | 11.2M | 33.2M | 3, 64, 64, 128, 256, 512 | 2, 4, 8, 16, 32 | imagenet, ssl, swsl |"
        in text
    )
