"""Model cards (``README.md``) for converted 3D weight folders and inflated whole models."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["encoder_card", "model_card"]

_MODE_TEXT = {
    "i3d": "I3D inflation: each 2D kernel `(O, I, kh, kw)` is repeated `kd` times along a new trailing depth "
    "axis and divided by `kd`, so a volume that is constant along depth gives the 2D response",
    "center": "centre inflation: each 2D kernel is placed in the middle depth slice of a new trailing depth axis, "
    "the other slices being zero, so every depth slice is processed exactly like the 2D image",
}


def _front_matter(license_: str | None, tags: list[str]) -> str:
    lines = ["---", "library_name: smp3d"]
    if license_:
        lines.append(f"license: {license_.lower() if license_.lower() in _HUB_LICENSES else 'other'}")
        if license_.lower() not in _HUB_LICENSES:
            lines.append(f"license_name: {license_}")
    lines.append("tags:")
    lines.extend(f"- {t}" for t in tags)
    lines.append("---")
    return "\n".join(lines)


_HUB_LICENSES = {"apache-2.0", "mit", "bsd-3-clause", "bsd-2-clause", "cc-by-4.0", "cc-by-nc-4.0", "gpl-3.0"}


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else "n/a"


def _error_lines(error: Mapping[str, float] | None, verified: Mapping[str, float] | None) -> list[str]:
    if not error:
        return ["- Not measured."]
    lines = [
        f"- largest absolute difference: **{_fmt(error.get('max_abs'))}**",
        f"- largest difference relative to the 2D feature magnitude: **{_fmt(error.get('max_rel'))}**",
    ]
    if verified:
        lines.append(
            f"- re-measured after writing, on the weights reloaded from `model.safetensors`: "
            f"{_fmt(verified.get('max_abs'))} (absolute), {_fmt(verified.get('max_rel'))} (relative)"
        )
    return lines


def _check_text(check: Mapping[str, Any] | None) -> str:
    if not check:
        return ""
    image = "x".join(str(v) for v in check.get("image", []))
    return (
        f"The check feeds the 2D encoder a seeded random image ({image}, seed {check.get('seed')}) and the 3D "
        f"encoder the same image repeated along {check.get('depth')} depth slices, built with stride 1 along depth "
        f"and padded circularly along depth only (height and width keep their zero padding). It compares every "
        f"feature map at every depth slice with the 2D one; in exact arithmetic they are equal, so the numbers "
        f"below are float32 rounding."
    )


def encoder_card(config: Mapping[str, Any], folder: str = "<folder>") -> str:
    """The README of a converted encoder folder, built from its ``config.json`` content."""
    encoder, tag, mode = config["encoder"], config["tag"], config["mode"]
    source = config.get("source") or {}
    license_ = config.get("license")
    revision = source.get("revision") or "none: a local file"
    if source.get("revision"):  # a Hub repository, pinned
        source_args = f" --source {source.get('id')} --revision {source['revision']}"
    else:  # a local file: the user must have it
        source_args = f" --source {source.get('filename')}"
    parts = [
        _front_matter(license_, ["smp3d", "3d", "segmentation", "encoder", "inflated-weights", encoder]),
        f"# {encoder}.{tag} — 3D weights for smp3d",
        "",
        f"Pretrained weights of the `{encoder}` encoder for **3D** (volumetric) inputs `(B, C, H, W, D)`, "
        f"obtained by inflating its 2D `{tag}` weights. They load into any smp3d segmentation model with "
        f'`encoder_name="{encoder}"` and `spatial_dims=3` (the default).',
        "",
        "## How it was made",
        "",
        f"- 2D source: `{source.get('id')}` (file `{source.get('filename')}`, revision {revision})",
        f"- source SHA-256: `{source.get('sha256')}`",
        f"- inflation mode `{mode}`: {_MODE_TEXT.get(mode, mode)}.",
        f"- converted with `smp3d-convert-weights` from smp3d {config.get('smp3d_version')} "
        f"on {config.get('created')}.",
        "",
        "Reproduce:",
        "",
        "```bash",
        f"smp3d-convert-weights {encoder} --tag {tag}{source_args} --mode {mode} --output {encoder}.{tag}",
        "```",
        "",
        "## Equivalence with the 2D encoder",
        "",
        _check_text(config.get("equivalence_check")),
        "",
        *_error_lines(config.get("equivalence_error"), config.get("verified_error")),
        "",
        "## How to load",
        "",
        "```python",
        "import smp3d",
        "",
        "# from this folder (or a downloaded copy of this repository)",
        f'model = smp3d.Unet("{encoder}", encoder_weights="{folder}", in_channels=1)',
        "",
        f"# by tag: fetched from the Hub repo <org>/{encoder}.{tag}, <org> being $SMP3D_HUB_ORG (default smp3d),",
        "# with huggingface_hub (cache, revision and HF_HUB_OFFLINE honoured)",
        f'model = smp3d.Unet("{encoder}", encoder_weights="{tag}", in_channels=1)',
        "```",
        "",
        f"The weights are stored for {config.get('in_channels', 3)} input channels; another `in_channels` adapts the "
        "first convolution (1 channel: the sum over the original channels; otherwise the channels repeated "
        "cyclically and scaled). Only `model.safetensors` is read: no pickle is involved.",
        "",
        "## Licence",
        "",
        f"These weights are derived from the 2D weights above and keep their licence: **{license_ or 'unknown'}**. "
        "Check the source's terms before use.",
        "",
        "## Files",
        "",
        "- `model.safetensors`: the 3D encoder state dict (same keys as the 2D encoder, kernels with one more "
        "trailing axis);",
        "- `config.json`: encoder, tag, mode, source id/revision/SHA-256, licence, measured errors;",
        "- `README.md`: this card.",
        "",
    ]
    return "\n".join(parts)


def model_card(
    architecture: str, arguments: Mapping[str, Any], provenance: Mapping[str, Any], folder: str = "<folder>"
) -> str:
    """The README of a whole segmentation model inflated from 2D to 3D."""
    mode = provenance.get("mode", "i3d")
    source = provenance.get("source") or {}
    encoder = arguments.get("encoder_name", "?")
    shown = json.dumps(dict(arguments), indent=2, default=str)
    parts = [
        _front_matter(None, ["smp3d", "3d", "segmentation", "inflated-weights", architecture.lower()]),
        f"# {architecture}({encoder}) — 3D model inflated from a trained 2D model",
        "",
        f"A smp3d `{architecture}` for 3D inputs `(B, C, H, W, D)` whose weights are the weights of a trained 2D "
        f"model (encoder, decoder and heads), inflated with mode `{mode}`: {_MODE_TEXT.get(mode, mode)}.",
        "",
        "## How it was made",
        "",
        f"- 2D source: `{source.get('id')}` (SHA-256 of `{source.get('filename')}`: `{source.get('sha256')}`)",
        f"- converted with `smp3d-convert-weights --model` from smp3d {provenance.get('smp3d_version')} on "
        f"{provenance.get('created')}.",
        "",
        "## Equivalence with the 2D model's encoder",
        "",
        _check_text(provenance.get("equivalence_check")),
        "",
        *_error_lines(provenance.get("encoder_equivalence_error"), provenance.get("verified_error")),
        "",
        "## How to load",
        "",
        "```python",
        "import smp3d",
        "",
        f'model = smp3d.{architecture}.from_pretrained("{folder}")',
        "```",
        "",
        "or build the architecture with the arguments below and load `model.safetensors` strictly:",
        "",
        "```python",
        f"arguments = {shown}",
        "```",
        "",
        "## Licence",
        "",
        "The licence of the 2D model and of its training data applies.",
        "",
    ]
    return "\n".join(parts)
