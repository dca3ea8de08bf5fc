"""Generate docs/encoders.md: every first-party encoder, from the registry.

    python scripts/encoder_table.py          # rewrite docs/encoders.md
    python scripts/encoder_table.py --check  # exit 1 if docs/encoders.md is stale

Parameter counts come from building each encoder on the ``meta`` device (no memory, no
compute) at depth 5 with 3 input channels.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from importlib.metadata import distribution
from pathlib import Path

import torch

import smp3d
from smp3d.encoders import cumulative_reductions

DOC = Path(__file__).resolve().parent.parent / "docs" / "encoders.md"

HEADER = """# Encoders

Every first-party encoder, generated from the registry by `python scripts/encoder_table.py`
(a test fails when this file is stale; do not edit it by hand). Parameter counts are for the
encoder alone at depth 5 with 3 input channels; a 3D kernel is the 2D kernel with a trailing
depth axis, so 3D counts are larger. Reductions are the defaults (isotropic); any encoder takes
per-axis `strides`. Pretrained tags name the 2D sources that weight conversion inflates.

"""


def first_party_encoders() -> list[str]:
    names: set[str] = set()
    for ep in distribution("smp3d").entry_points:
        if ep.group == "smp3d.encoders":
            names.update(ep.load())
    return sorted(names)


def _parameters(name: str, spatial_dims: int) -> int:
    with torch.device("meta"):
        encoder = smp3d.get_encoder(name, spatial_dims=spatial_dims)
    return sum(p.numel() for p in encoder.parameters())


def _millions(count: int) -> str:
    return f"{count / 1e6:.1f}M"


ALIASES_HEADER = """

## Migration names

segmentation_models_pytorch_3d's `timm-*` encoders and `mobilenet_v2`, `xception`, `inceptionv4`,
`inceptionresnetv2` are aliases of timm models, built through the `tu-` bridge (so `timm-regnetx_002`
is `tu-regnetx_002`; see docs/index.md, "timm encoders"). `imagenet` loads timm's pretrained tag shown,
inflated at load time; "-" means timm publishes no Hub weights for that model.

"""


def render_aliases(names: list[str]) -> str:
    lines = ["| Name | timm model | `imagenet` = timm tag |", "|---|---|---|"]
    for name in names:
        spec = smp3d.get_encoder_spec(name)
        source = spec.weights.get("imagenet")
        tag = source.repo_id.partition(".")[2] if source else "-"
        lines.append(f"| `{name}` | `{spec.extra['timm_name']}` | {tag} |")
    return ALIASES_HEADER + "\n".join(lines) + "\n"


def render() -> str:
    rows = []
    aliases = []
    for name in first_party_encoders():
        spec = smp3d.get_encoder_spec(name)
        if "timm_name" in spec.extra:  # built by the tu- bridge: listed apart, without building 140 timm models
            aliases.append(name)
            continue
        reductions = cumulative_reductions([(s,) for s in spec.strides[: spec.max_depth]], 1)
        rows.append(
            (
                spec.family or "",
                f"`{name}`",
                _millions(_parameters(name, 2)),
                _millions(_parameters(name, 3)),
                ", ".join(map(str, spec.out_channels or ())),
                ", ".join(str(r[0]) for r in reductions[1:]),
                ", ".join(sorted(spec.weights)) or "-",
            )
        )
    rows.sort()
    head = ("Family", "Name", "Params 2D", "Params 3D", "out_channels", "Reductions", "Pretrained tags")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return HEADER + "\n".join(lines) + "\n" + render_aliases(aliases)


def write_atomically(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(text)
    os.replace(tmp.name, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the file is up to date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = DOC.read_text() if DOC.exists() else ""
        if current != text:
            print(f"{DOC} is stale: run python scripts/encoder_table.py", file=sys.stderr)
            return 1
        print(f"{DOC} is up to date")
        return 0
    write_atomically(DOC, text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
