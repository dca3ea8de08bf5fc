"""Pretrained N-D encoder weights on the Hugging Face Hub: naming, download, and config checks.

A pretrained tag (``"imagenet"``) of encoder ``NAME`` lives in the Hub repository
``<org>/<NAME>.<tag>`` holding ``model.safetensors`` and ``config.json`` (written by
``smp3d-convert-weights``). ``<org>`` is ``$SMP3D_HUB_ORG`` (default ``smp3d``); a revision is
pinned by ``$SMP3D_HUB_REVISION`` or by the spec's ``extra["hub_revisions"][tag]``. Downloads go
through huggingface_hub, so its cache, ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE`` apply. Only
safetensors are fetched: nothing from the Hub is ever unpickled.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .spec import EncoderSpec

__all__ = [
    "CONFIG_FILENAME",
    "DEFAULT_HUB_ORG",
    "HUB_ORG_ENV",
    "HUB_REVISION_ENV",
    "PretrainedWeightsUnavailableError",
    "check_weights_config",
    "conversion_command",
    "download_pretrained",
    "hub_file",
    "hub_org",
    "hub_repo_id",
    "hub_repo_name",
    "hub_revision",
    "read_weights_config",
]

HUB_ORG_ENV = "SMP3D_HUB_ORG"
HUB_REVISION_ENV = "SMP3D_HUB_REVISION"
DEFAULT_HUB_ORG = "smp3d"
WEIGHTS_FILENAME = "model.safetensors"
CONFIG_FILENAME = "config.json"

# Characters allowed in a Hub repository name (the part after the organisation).
_REPO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class PretrainedWeightsUnavailableError(OSError):
    """The pretrained weights of a tag could not be obtained (offline and not cached, or not published)."""


def hub_org() -> str:
    """The Hub organisation (or user) that publishes smp3d's N-D weights: ``$SMP3D_HUB_ORG`` or ``smp3d``."""
    return os.environ.get(HUB_ORG_ENV, "").strip() or DEFAULT_HUB_ORG


def hub_repo_name(encoder: str, tag: str) -> str:
    """``<encoder>.<tag>`` made a valid repository name: ``+`` (as in DPN's ``imagenet+5k``) becomes ``-``."""
    name = f"{encoder}.{tag}".replace("+", "-")
    if not _REPO_NAME.match(name) or len(name) > 96 or ".." in name or "--" in name:
        raise ValueError(
            f"Encoder {encoder!r} with tag {tag!r} gives {name!r}, which is not a valid Hub repository name."
        )
    return name


def hub_repo_id(encoder: str, tag: str, org: str | None = None) -> str:
    """The Hub repository of the N-D weights of ``encoder`` for ``tag``: ``<org>/<encoder>.<tag>``."""
    return f"{org or hub_org()}/{hub_repo_name(encoder, tag)}"


def hub_revision(spec: EncoderSpec, tag: str) -> str | None:
    """The pinned revision: ``$SMP3D_HUB_REVISION`` if set, else ``spec.extra["hub_revisions"][tag]``, else ``None``."""
    env = os.environ.get(HUB_REVISION_ENV, "").strip()
    if env:
        return env
    revisions = spec.extra.get("hub_revisions")
    if isinstance(revisions, Mapping):
        revision = revisions.get(tag)
        return str(revision) if revision else None
    return None


def conversion_command(encoder: str, tag: str, output: str | os.PathLike | None = None) -> str:
    """The shell command that makes the weights of ``encoder``/``tag`` locally."""
    output = str(output) if output is not None else hub_repo_name(encoder, tag)
    return f"smp3d-convert-weights {shlex.quote(encoder)} --tag {shlex.quote(tag)} --output {shlex.quote(output)}"


def read_weights_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """Read ``config.json`` (``path`` is the file or its folder); ``None`` if absent, a ValueError if broken."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILENAME
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"Could not read {str(path)!r}: not a valid JSON file ({exc}).") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object, got {type(config).__name__}.")
    return config


def check_weights_config(config: Mapping[str, Any], name: str, spatial_dims: int, where: str) -> None:
    """Refuse weights whose ``config.json`` names another encoder or another ``spatial_dims``."""
    if "_model_class" in config and "encoder" not in config:
        raise ValueError(
            f"{where} holds a whole {config['_model_class']} model, not encoder weights: load it with "
            f"smp3d.from_pretrained(...) instead of encoder_weights=."
        )
    problems = []
    if "encoder" in config and config["encoder"] != name:
        problems.append(f"they are for encoder {config['encoder']!r}, the model's encoder is {name!r}")
    if "spatial_dims" in config and config["spatial_dims"] != spatial_dims:
        problems.append(f"they are {config['spatial_dims']}D weights, the model is {spatial_dims}D")
    if problems:
        raise ValueError(f"Weights {where} do not fit: " + "; ".join(problems) + ". Nothing was loaded.")


def _offline_reason() -> str:
    from huggingface_hub import constants

    offline = constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else constants.HF_HUB_OFFLINE
    return (
        "the Hugging Face Hub is disabled (HF_HUB_OFFLINE=1)"
        if offline
        else "the Hugging Face Hub could not be reached"
    )


def hub_file(repo_id: str, filename: str, revision: str | None, what: str, howto: str) -> Path:
    """Fetch (or find in the cache) one file of a Hub repository.

    Raises :class:`PretrainedWeightsUnavailableError` naming ``what`` and the repository, with
    ``howto`` (what the user can do instead), when it cannot be had.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = repo_id + (f"@{revision}" if revision else "")
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        raise PretrainedWeightsUnavailableError(
            f"{what} ({at}, file {filename}) are not in the local Hugging Face cache and {_offline_reason()}. {howto}"
        ) from exc
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError, EntryNotFoundError) as exc:
        raise PretrainedWeightsUnavailableError(
            f"{what}: {at} has no {filename} on the Hugging Face Hub ({type(exc).__name__}). {howto}"
        ) from exc


def download_pretrained(
    name: str, tag: str, spec: EncoderSpec, check: Callable[[dict[str, Any], str], None] | None = None
) -> tuple[Path, dict[str, Any], str]:
    """Fetch (or find in the cache) ``config.json``, then ``model.safetensors``, of ``name``/``tag``.

    ``check(config, where)`` runs between the two, so a repository that does not fit fails before
    the large download. Returns ``(weights_file, config, repo_id)``. Raises :class:`PretrainedWeightsUnavailableError`
    with the ``smp3d-convert-weights`` command to run when the weights cannot be had.
    """
    repo_id = hub_repo_id(name, tag)
    revision = hub_revision(spec, tag)
    at = f"{repo_id}" + (f"@{revision}" if revision else "")
    output = hub_repo_name(name, tag)
    howto = (
        f"(Set ${HUB_ORG_ENV} to use another organisation.) Make them locally with:\n    "
        f"{conversion_command(name, tag, output)}\nthen pass encoder_weights={output!r}."
    )
    what = f"Pretrained weights {name}.{tag}"
    config_file = hub_file(repo_id, CONFIG_FILENAME, revision, what, howto)
    config = read_weights_config(config_file) or {}
    if check is not None:
        check(config, f"from the Hub repository {at}")
    return hub_file(repo_id, WEIGHTS_FILENAME, revision, what, howto), config, repo_id
