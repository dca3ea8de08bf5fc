"""``smp3d train --config run.yaml``: the options of a run kept in a YAML file.

Every option of ``smp3d train`` is a key, spelled as the option without its dashes, with ``_`` or
``-`` between words (``train_path``, ``batch-size``); a key the command does not know is refused
with the closest names. The file's values go through the same parsing as the command line (so
they get the same checks), and options given on the command line override them. The effective
options of a run are written to ``RUN_DIR/config.yaml`` (atomically), which ``--config`` reads back.
``resume`` and ``overwrite`` are accepted in a file but never written: they say how to start a
run, not what it is.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
from pathlib import Path
from typing import Any

from ..training.errors import TrainingError

__all__ = ["CONFIG_FILE", "config_tokens", "effective_config", "read_config", "write_config"]

#: The name of the effective configuration in a run directory.
CONFIG_FILE = "config.yaml"

# Options that are part of the command but not of the run they describe.
_NOT_SAVED = ("config", "resume", "overwrite")


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Key (the option's ``dest``) -> action, for every option a file may set."""
    return {
        action.dest: action
        for action in parser._actions
        if action.option_strings and action.dest not in ("help", "config")
    }


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping in the YAML file ``path`` (empty for an empty file).

    Raises:
        TrainingError: the file is missing, is not YAML, or does not hold a mapping of option names.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise TrainingError(f"--config {path}: cannot read it ({err.strerror or err})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TrainingError(f"--config {path}: not valid YAML ({first})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TrainingError(
            f"--config {path}: expected a mapping of option names to values (e.g. 'epochs: 50'), "
            f"got a {type(data).__name__}"
        )
    return data


def _scalar(key: str, value: Any, path: Path) -> str:
    if isinstance(value, (list, tuple, dict)):
        raise TrainingError(f"--config {path}: {key} takes one value, got {value!r}")
    return str(value)


def config_tokens(path: str | os.PathLike, parser: argparse.ArgumentParser) -> list[str]:
    """The file's options as command-line words for ``parser`` (the ``smp3d train`` parser), to be
    parsed before the words the user typed (which therefore override them).

    Raises:
        TrainingError: an unknown key (with the closest known ones) or a value of the wrong kind.
    """
    path = Path(path)
    options = _options(parser)
    tokens: list[str] = []
    for raw_key, value in read_config(path).items():
        key = str(raw_key).replace("-", "_")
        action = options.get(key)
        if action is None:
            close = difflib.get_close_matches(key, list(options), n=3, cutoff=0.7)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise TrainingError(
                f"--config {path}: unknown key {raw_key!r}{hint} (the keys are the options of smp3d train without "
                f"their dashes: {', '.join(sorted(options))})"
            )
        flag = action.option_strings[0]  # --progress of --progress/--no-progress
        if value is None:
            continue  # the option's default
        if isinstance(action, argparse.BooleanOptionalAction):
            if not isinstance(value, bool):
                raise TrainingError(f"--config {path}: {key} takes true, false or null, got {value!r}")
            tokens.append(flag if value else "--no-" + flag[2:])
        elif action.nargs == 0:  # store_true
            if not isinstance(value, bool):
                raise TrainingError(f"--config {path}: {key} takes true or false, got {value!r}")
            if value:
                tokens.append(flag)
        elif action.nargs == "?":  # --resume [DIR]
            if value is True:
                tokens.append(flag)
            elif value is not False:
                tokens.append(f"{flag}={_scalar(key, value, path)}")
        elif action.nargs in ("+", "*"):
            values = list(value) if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(v, (list, tuple, dict)) for v in values):
                raise TrainingError(f"--config {path}: {key} takes a list of plain values, got {value!r}")
            if values:
                tokens += [flag, *map(str, values)]
        elif isinstance(value, dict):
            tokens.append(f"{flag}={json.dumps(value)}")
        else:
            tokens.append(f"{flag}={_scalar(key, value, path)}")
    return tokens


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def effective_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Every option of the run as parsed (file and command line merged), in the order of ``--help``,
    without ``config``, ``resume`` and ``overwrite``."""
    return {key: _plain(getattr(args, key)) for key in _options(parser) if key not in _NOT_SAVED}


def write_config(path: str | os.PathLike, config: dict[str, Any]) -> Path:
    """Write ``config`` as YAML to ``path`` atomically (a temporary file flushed to the disk, then
    renamed over ``path``); return ``path``."""
    import yaml

    from ..training.checkpoints import fsync_directory, write_file

    path = Path(path)
    header = "# smp3d train: the effective options of this run; run it again with: smp3d train --config THIS_FILE\n"
    data = (header + yaml.safe_dump(config, sort_keys=False, default_flow_style=None)).encode("utf-8")
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # left over by a crash: removed by the next run
    temp.unlink(missing_ok=True)
    try:
        write_file(temp, data)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return path
