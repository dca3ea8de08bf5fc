"""Turning 2D checkpoints into 3D weight folders: encoders by name, or whole segmentation models.

The pipeline of one conversion is: read the 2D source (a Hub repo or a local file) -> load it
strictly into the 2D encoder -> inflate onto the 3D encoder -> measure the equivalence error on a
depth-repeated random image -> serialise -> reload the written file and measure again -> publish
the folder (``model.safetensors``, ``config.json``, ``README.md``) by atomic renames.

Nothing is unpickled: safetensors files are read with safetensors, ``.pth``/``.pt``/``.bin``
files with ``torch.load(weights_only=True)``, and only safetensors are fetched from the Hub.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

import smp3d
from smp3d.encoders.weights import load_state_dict_strict, read_safetensors

from .card import encoder_card, model_card

__all__ = [
    "CONFIG_FILENAME",
    "CARD_FILENAME",
    "INFLATION_FILENAME",
    "MODES",
    "WEIGHTS_FILENAME",
    "ConversionError",
    "ConversionResult",
    "check_path_component",
    "SourceWeights",
    "convert_encoder",
    "convert_model",
    "push_folder",
    "read_checkpoint",
    "resolve_source",
    "write_folder_atomic",
]

WEIGHTS_FILENAME = "model.safetensors"
CONFIG_FILENAME = "config.json"
CARD_FILENAME = "README.md"
INFLATION_FILENAME = "inflation.json"  # provenance of an inflated whole model
MODES = ("i3d", "center")
CHECK_SIZE = 64  # height and width of the random image used by the equivalence check
CHECK_SEED = 0
CHECK_DEPTH = 8  # depth slices of the check volume

_PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
_KEY_PREFIXES = ("module.", "model.", "encoder.")

Progress = Callable[[str], None]


class ConversionError(RuntimeError):
    """A conversion could not be completed; nothing was written."""


@dataclasses.dataclass(frozen=True)
class SourceWeights:
    """A 2D state dict and where it came from."""

    state_dict: dict[str, torch.Tensor]
    id: str
    revision: str | None
    filename: str
    sha256: str
    license: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "revision": self.revision,
            "filename": self.filename,
            "sha256": self.sha256,
            "license": self.license,
        }


@dataclasses.dataclass(frozen=True)
class ConversionResult:
    """What a conversion wrote and measured."""

    output: Path
    config: dict[str, Any]
    equivalence_error: dict[str, float] | None
    verified_error: dict[str, float] | None
    seconds: float


# -- reading sources -----------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a checkpoint object, possibly nested under a wrapper key."""
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
            if inner is not None:
                obj = inner
                continue
            # A checkpoint mixing tensors with bookkeeping (epoch, optimizer ...): keep the tensors.
            tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
            if tensors:
                return tensors
        break
    raise ConversionError(
        f"{str(path)!r} holds no state dict (a mapping of names to tensors, possibly under one of "
        f"{', '.join(repr(k) for k in _WRAPPER_KEYS)}); found {type(obj).__name__}."
    )


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a 2D checkpoint: ``.safetensors`` with safetensors, ``.pth/.pt/.bin/.ckpt`` with
    ``torch.load(weights_only=True)`` (so a pickle that would run code is refused, not run)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"No such checkpoint file: {str(path)!r}.")
    if path.suffix == ".safetensors":
        try:
            return read_safetensors(path)
        except ValueError as exc:
            raise ConversionError(str(exc)) from exc
    if path.suffix in _PICKLE_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError for forbidden globals, others for damaged files
            raise ConversionError(
                f"Refusing to read {str(path)!r}: torch.load(weights_only=True) rejected it, so it is damaged or "
                f"contains objects other than tensors (such a pickle could run code; it was not executed). "
                f"Details: {type(exc).__name__}: {exc}"
            ) from exc
        return _unwrap(obj, path)
    raise ConversionError(
        f"Unsupported checkpoint type {path.suffix!r} for {str(path)!r}: use .safetensors or one of "
        f"{', '.join(_PICKLE_SUFFIXES)}."
    )


def _hub_file(repo_id: str, filename: str, revision: str | None) -> Path:
    from huggingface_hub import hf_hub_download

    if not filename.endswith(".safetensors"):
        raise ConversionError(f"Only .safetensors files are read from the Hub, not {filename!r} of {repo_id!r}.")
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, revision=revision))
    except Exception as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
        hint = (
            " HF_HUB_OFFLINE is set and the file is not in the local cache;"
            if offline or "offline" in str(exc).lower() or "cache" in str(exc).lower()
            else ""
        )
        raise ConversionError(
            f"Could not fetch {filename!r} from the Hub repo {repo_id!r} (revision {revision or 'default'}).{hint} "
            f"Pass a local 2D checkpoint with --source FILE instead. Details: {type(exc).__name__}: {exc}"
        ) from exc


def resolve_source(
    encoder: str, tag: str = "imagenet", source: str | None = None, revision: str | None = None
) -> SourceWeights:
    """Locate and read the 2D weights of ``encoder``.

    ``source`` is a local file or a Hub repo id; by default it is the encoder spec's
    ``weights[tag]``: smp's release ``smp-hub/<encoder>.<tag>`` at a pinned revision, or, for ``tu-``
    encoders, the Hub repository timm names for that tag.
    """
    spec = smp3d.get_encoder_spec(encoder)
    known = spec.weights.get(tag)
    license_ = (known.license if known else None) or spec.license
    if source is not None and Path(source).expanduser().exists():
        path = Path(source).expanduser()
        if path.is_dir():
            path = path / WEIGHTS_FILENAME
        return SourceWeights(read_checkpoint(path), str(path.resolve()), None, path.name, _sha256(path), license_)
    if source is not None:
        if source.endswith(_PICKLE_SUFFIXES + (".safetensors",)) or source.startswith((".", "/", "~")):
            raise FileNotFoundError(f"--source {source!r}: no such file.")
        repo_id, filename = source, WEIGHTS_FILENAME
        if known is not None and known.repo_id == repo_id:
            filename, revision = known.filename, revision or known.revision
    elif known is not None:
        repo_id, filename, revision = known.repo_id, known.filename, revision or known.revision
    else:
        tags = ", ".join(sorted(spec.weights)) or "none"
        raise ConversionError(
            f"Encoder {encoder!r} has no pretrained source for tag {tag!r} (known tags: {tags}); "
            f"pass --source HUB_REPO_OR_FILE."
        )
    path = _hub_file(repo_id, filename, revision)
    return SourceWeights(read_checkpoint(path), repo_id, revision, filename, _sha256(path), license_)


def _align_keys(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a wrapper prefix (``module.``, ``model.``, ``encoder.``) or add ``model.`` when that makes the
    key sets equal; otherwise return ``state`` unchanged and let strict loading report the difference."""
    state = dict(state)
    if set(state) == set(expected):
        return state
    for prefix in _KEY_PREFIXES:
        stripped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if stripped and set(stripped) == set(expected):
            return stripped
        added = {prefix + k: v for k, v in state.items()}
        if set(added) == set(expected):
            return added
    return state


def _source_keys(encoder: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The 2D source on the encoder's keys: the encoder's own ``source_state_dict`` hook when it has one
    (``tu-`` encoders map timm's whole-model checkpoints, dropping the classifier), else :func:`_align_keys`."""
    hook = getattr(encoder, "source_state_dict", None)
    return hook(state) if callable(hook) else _align_keys(state, encoder.state_dict())


# -- equivalence ---------------------------------------------------------------------------------


def _check_image(in_channels: int, seed: int = CHECK_SEED, size: int = CHECK_SIZE) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, in_channels, size, size, generator=generator)


def _depth_one(strides: Any, depth: int) -> tuple[tuple[int, ...], ...]:
    """Per-stage 3D strides keeping H and W's reduction and stride 1 along depth (for the check)."""
    from weights_tools.verify import depth_stride_one

    if strides is None:
        return depth_stride_one(depth)
    stages = []
    for s in strides:
        if isinstance(s, int):
            stages.append((s, s, 1))
        else:
            s = tuple(int(v) for v in s)
            stages.append((*s[:2], 1) if len(s) >= 2 else (s[0], s[0], 1))
    return tuple(stages)


def _equivalence(
    encoder_2d: nn.Module, build_check: Callable[[], nn.Module], state_3d: Mapping[str, torch.Tensor], seed: int
) -> dict[str, float]:
    """Max abs / max relative feature difference between ``encoder_2d`` and a 3D encoder holding
    ``state_3d``, built by ``build_check`` with stride 1 along depth (the same parameters as the
    published encoder: strides change no weight shape), on a depth-repeated seeded random image with
    circular depth padding (H and W keep zero padding)."""
    from weights_tools.verify import inflation_report

    check = build_check()
    load_state_dict_strict(check, state_3d, what="for the equivalence check")
    image = _check_image(int(encoder_2d.out_channels[0]), seed)
    report = inflation_report(encoder_2d, check, image=image, depth=CHECK_DEPTH)
    return {"max_abs": float(report.max_abs), "max_rel": float(report.max_rel)}


def _inflate(source: Mapping[str, torch.Tensor], target: nn.Module, mode: str) -> dict[str, torch.Tensor]:
    from smp3d.encoders.inflate import inflate_state_dict

    try:
        return inflate_state_dict(source, target, mode=mode)
    except (ValueError, KeyError) as exc:
        raise ConversionError(f"Inflation failed; nothing was written. {exc}") from exc


def _contiguous(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def _same_tensors(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


# -- writing ---------------------------------------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _staged(output: Path, names: list[str]) -> Iterator[dict[str, Path]]:
    """Temporary paths in ``output`` for ``names``; on a clean exit each is renamed onto its final
    name, on an error every temporary file is removed (so a failure leaves no partial file)."""
    output.mkdir(parents=True, exist_ok=True)
    temps: dict[str, Path] = {}
    try:
        for name in names:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=output)
            os.close(fd)
            temps[name] = Path(tmp)
        yield temps
        mode = 0o666 & ~_umask()  # mkstemp creates 0600; give the final files the usual mode
        for name, tmp in temps.items():
            os.chmod(tmp, mode)
            os.replace(tmp, output / name)
    finally:
        for tmp in temps.values():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def write_folder_atomic(output: str | os.PathLike, files: Mapping[str, bytes | str]) -> None:
    """Write ``files`` (name -> content) into ``output``, each through a temporary file and a rename."""
    names = list(files)
    with _staged(Path(output), names) as temps:
        for name, content in files.items():
            data = content.encode("utf-8") if isinstance(content, str) else content
            temps[name].write_bytes(data)


def _save_verified(
    output: Path,
    state: dict[str, torch.Tensor],
    metadata: dict[str, str],
    texts: Callable[[dict[str, float] | None], dict[str, str]],
    verify: Callable[[dict[str, torch.Tensor]], dict[str, float]],
) -> dict[str, float]:
    """Stage ``model.safetensors``, reload it from disk, run ``verify`` on the reloaded tensors, then
    stage the text files (which may quote the verified error) and publish everything at once."""
    from safetensors.torch import save_file

    extra = texts(None)
    with _staged(output, [WEIGHTS_FILENAME, *extra]) as temps:
        save_file(state, str(temps[WEIGHTS_FILENAME]), metadata=metadata)
        reloaded = read_safetensors(temps[WEIGHTS_FILENAME])
        if not _same_tensors(reloaded, state):
            raise ConversionError("The written safetensors file does not reload to the inflated weights.")
        verified = verify(reloaded)
        for name, content in texts(verified).items():
            temps[name].write_text(content, encoding="utf-8")
    return verified


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def _json(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, indent=2, sort_keys=False) + "\n"


def _progress(enabled: bool, total: int, desc: str) -> tuple[Callable[[str], None], Callable[[], None]]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, disable=not enabled, leave=False)

    def step(label: str) -> None:
        bar.set_postfix_str(label, refresh=False)
        bar.update(1)

    return step, bar.close


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    return mode


# -- encoders --------------------------------------------------------------------------------------


def _same_error(a: Mapping[str, float] | None, b: Mapping[str, float] | None) -> bool:
    if a is None or b is None:
        return a is b
    return all(abs(a[k] - b[k]) <= 1e-6 * max(1.0, abs(a[k])) for k in a)


_PATH_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def check_path_component(value: Any, what: str) -> str:
    """``value`` if it is safe as one file-name component (letters, digits, ``_``, ``.``, ``-``; not
    starting with ``.`` nor holding ``..``), else a ConversionError naming ``what``."""
    if not isinstance(value, str) or not _PATH_COMPONENT.match(value) or ".." in value or len(value) > 200:
        raise ConversionError(
            f"Invalid {what} {value!r}: it names files and Hub repositories, so it may hold only letters, digits, "
            f"'_', '.' and '-' (starting with a letter or digit, no '..', at most 200 characters)."
        )
    return value


def _default_output(name: str) -> Path:
    """``./name``, refused when it resolves outside the working directory (e.g. through a symlink)."""
    cwd = Path.cwd().resolve()
    out = cwd / name
    if out.resolve().parent != cwd:
        raise ConversionError(
            f"The default output folder {str(out)!r} resolves to {str(out.resolve())!r}, outside the working "
            f"directory {str(cwd)!r}; pass --output to choose the folder explicitly."
        )
    return Path(name)


def convert_encoder(
    encoder: str,
    *,
    tag: str = "imagenet",
    source: str | None = None,
    revision: str | None = None,
    output: str | os.PathLike | None = None,
    mode: str = "i3d",
    seed: int = CHECK_SEED,
    progress: bool = True,
) -> ConversionResult:
    """Convert the 2D weights of ``encoder`` into a 3D weight folder (see the module docstring)."""
    _check_mode(mode)
    check_path_component(encoder, "encoder name")
    check_path_component(tag, "tag")
    start = time.perf_counter()
    out = Path(output).expanduser() if output is not None else _default_output(f"{encoder}.{tag}")
    step, close = _progress(progress, 5, f"{encoder}.{tag}")
    try:
        src = resolve_source(encoder, tag, source, revision)
        step("read source")
        encoder_2d = smp3d.get_encoder(encoder, spatial_dims=2)
        try:
            state_2d = _source_keys(encoder_2d, src.state_dict)
            load_state_dict_strict(encoder_2d, state_2d, what=f"from {src.id!r} for the 2D encoder {encoder!r}")
        except ValueError as exc:
            raise ConversionError(str(exc)) from exc
        step("loaded 2D")
        encoder_3d = smp3d.get_encoder(encoder, spatial_dims=3)
        state_3d = _contiguous(_inflate(encoder_2d.state_dict(), encoder_3d, mode))
        try:
            load_state_dict_strict(encoder_3d, state_3d, what=f"inflated for the 3D encoder {encoder!r}")
        except ValueError as exc:
            raise ConversionError(str(exc)) from exc
        step("inflated")

        def build_check() -> nn.Module:
            return smp3d.get_encoder(
                encoder, spatial_dims=3, strides=_depth_one(None, len(encoder_3d.out_channels) - 1)
            )

        error = _equivalence(encoder_2d, build_check, state_3d, seed)
        step("equivalence check")

        config: dict[str, Any] = {
            "format": "smp3d-encoder-weights",
            "encoder": encoder,
            "tag": tag,
            "spatial_dims": 3,
            "in_channels": int(encoder_3d.out_channels[0]),
            "mode": mode,
            "smp3d_version": smp3d.__version__,
            "source": src.describe(),
            "license": src.license,
            "equivalence_error": error,
            "equivalence_check": _check_description(encoder_2d, seed),
            "created": _now(),
        }

        def texts(verified: dict[str, float] | None) -> dict[str, str]:
            full = {**config, "verified_error": verified}
            return {CONFIG_FILENAME: _json(full), CARD_FILENAME: encoder_card(full, folder=str(out))}

        def verify(reloaded: dict[str, torch.Tensor]) -> dict[str, float]:
            fresh = smp3d.get_encoder(encoder, spatial_dims=3)
            load_state_dict_strict(fresh, reloaded, what=f"reloaded from {str(out)!r}")
            verified = _equivalence(encoder_2d, build_check, fresh.state_dict(), seed)
            if not _same_error(error, verified):
                raise ConversionError(f"Verification mismatch: {error} before writing, {verified} after reloading.")
            return verified

        metadata = {"format": "pt", "encoder": encoder, "tag": tag, "mode": mode, "spatial_dims": "3"}
        verified = _save_verified(out, state_3d, metadata, texts, verify)
        step("written and verified")
    finally:
        close()
    return ConversionResult(out, {**config, "verified_error": verified}, error, verified, time.perf_counter() - start)


def _check_description(encoder_2d: nn.Module, seed: int) -> dict[str, Any]:
    return {
        "metric": "largest absolute (max_abs) and relative-to-2D-magnitude (max_rel) difference over all "
        "features, at every depth slice",
        "image": [1, int(encoder_2d.out_channels[0]), CHECK_SIZE, CHECK_SIZE],
        "depth": CHECK_DEPTH,
        "seed": seed,
        "padding": "circular along depth (H and W: the network's own zero padding); stride 1 along depth",
    }


# -- whole models ------------------------------------------------------------------------------------


def _read_model_folder(src: Path) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Architecture name, constructor arguments and the raw config of a saved 2D model folder.

    Accepts smp3d's and smp 0.6.0's ``save_pretrained`` layouts: ``config.json`` naming the class
    (``_model_class``, or ``architecture`` with ``arguments``) plus ``model.safetensors``.
    """
    config_path = src / CONFIG_FILENAME
    if not config_path.is_file():
        raise ConversionError(f"{str(src)!r} has no {CONFIG_FILENAME}; expected a folder written by save_pretrained.")
    raw = json.loads(config_path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ConversionError(f"{str(config_path)!r} does not hold a JSON object.")
    if "architecture" in raw and isinstance(raw.get("arguments"), dict):
        arch, arguments = raw["architecture"], dict(raw["arguments"])
    elif "_model_class" in raw:
        arch = raw["_model_class"]
        arguments = {k: v for k, v in raw.items() if not k.startswith("_")}
    else:
        raise ConversionError(
            f"{str(config_path)!r} names no architecture (expected '_model_class', or 'architecture' and 'arguments')."
        )
    if not isinstance(arch, str):
        raise ConversionError(f"{str(config_path)!r}: the architecture must be a string, got {arch!r}.")
    return arch, arguments, raw


def convert_model(
    src: str | os.PathLike,
    *,
    output: str | os.PathLike | None = None,
    mode: str = "i3d",
    seed: int = CHECK_SEED,
    progress: bool = True,
) -> ConversionResult:
    """Inflate a trained 2D segmentation model folder (smp3d or smp 0.6.0 ``save_pretrained``) into a
    3D model folder with the same architecture and arguments and ``spatial_dims=3``.

    The equivalence check covers the encoder (built with stride 1 along depth); the decoder and heads
    are inflated by the same rule.
    """
    _check_mode(mode)
    start = time.perf_counter()
    src_path = Path(src).expanduser()
    if output is not None:
        out = Path(output).expanduser()
    else:
        out = _default_output(check_path_component(f"{src_path.resolve().name}-3d", "default output folder name"))
    step, close = _progress(progress, 5, f"model {src_path.name}")
    try:
        arch, arguments, raw = _read_model_folder(src_path)
        weights_path = src_path / WEIGHTS_FILENAME
        if not weights_path.is_file():
            raise ConversionError(f"{str(src_path)!r} has no {WEIGHTS_FILENAME}.")
        state = read_checkpoint(weights_path)
        step("read source")
        arguments = {**arguments, "encoder_weights": None}
        arguments_2d = {**arguments, "spatial_dims": 2}
        arguments_3d = {**arguments, "spatial_dims": 3}
        try:
            model_2d = smp3d.create_model(arch, **arguments_2d)
            model_3d = smp3d.create_model(arch, **arguments_3d)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConversionError(f"Cannot build {arch} from {str(src_path)!r}: {exc}") from exc
        try:
            load_state_dict_strict(model_2d, state, what=f"from {str(weights_path)!r} for the 2D {arch}")
        except ValueError as exc:
            raise ConversionError(str(exc)) from exc
        step("loaded 2D")
        state_3d = _contiguous(_inflate(model_2d.state_dict(), model_3d, mode))
        try:
            load_state_dict_strict(model_3d, state_3d, what=f"inflated for the 3D {arch}")
        except ValueError as exc:
            raise ConversionError(str(exc)) from exc
        step("inflated")

        depth = len(model_3d.encoder.out_channels) - 1

        def check_error(state_3d_model: Mapping[str, torch.Tensor]) -> dict[str, float]:
            encoder_state = {k[len("encoder.") :]: v for k, v in state_3d_model.items() if k.startswith("encoder.")}

            def build_check() -> nn.Module:
                strides = _depth_one(arguments.get("strides"), depth)
                return smp3d.create_model(arch, **{**arguments_3d, "strides": strides}).encoder

            return _equivalence(model_2d.encoder, build_check, encoder_state, seed)

        error = check_error(state_3d)
        step("equivalence check")

        if "architecture" in raw and "arguments" in raw:
            out_config: dict[str, Any] = {**raw, "arguments": {**raw["arguments"], **arguments_3d}}
        else:
            out_config = {**raw, **arguments_3d}
        provenance: dict[str, Any] = {
            "smp3d_version": smp3d.__version__,
            "source": {"id": str(src_path.resolve()), "filename": WEIGHTS_FILENAME, "sha256": _sha256(weights_path)},
            "mode": mode,
            "encoder_equivalence_error": error,
            "equivalence_check": _check_description(model_2d.encoder, seed),
            "created": _now(),
        }

        def texts(verified: dict[str, float] | None) -> dict[str, str]:
            info = {**provenance, "verified_error": verified}
            # Provenance goes to its own file: config.json stays the constructor's arguments, so that
            # from_pretrained (which may pass unknown keys on to the encoder builder) reads it unchanged.
            return {
                CONFIG_FILENAME: _json(out_config),
                INFLATION_FILENAME: _json(info),
                CARD_FILENAME: model_card(arch, arguments_3d, info, folder=str(out)),
            }

        def verify(reloaded: dict[str, torch.Tensor]) -> dict[str, float]:
            fresh = smp3d.create_model(arch, **arguments_3d)
            load_state_dict_strict(fresh, reloaded, what=f"reloaded from {str(out)!r}")
            verified = check_error(fresh.state_dict())
            if not _same_error(error, verified):
                raise ConversionError(f"Verification mismatch: {error} before writing, {verified} after reloading.")
            return verified

        metadata = {"format": "pt", "architecture": arch, "mode": mode, "spatial_dims": "3"}
        verified = _save_verified(out, state_3d, metadata, texts, verify)
        step("written and verified")
    finally:
        close()
    config = json.loads((out / CONFIG_FILENAME).read_text(encoding="utf-8"))
    return ConversionResult(out, config, error, verified, time.perf_counter() - start)


# -- publishing ----------------------------------------------------------------------------------------


def push_folder(output: str | os.PathLike, repo_id: str, private: bool = False) -> str:
    """Create (if needed) the Hub repo ``repo_id`` and upload the converted folder; returns the commit URL."""
    from huggingface_hub import HfApi

    folder = Path(output)
    missing = [n for n in (WEIGHTS_FILENAME, CONFIG_FILENAME, CARD_FILENAME) if not (folder / n).is_file()]
    if missing:
        raise ConversionError(f"Refusing to push {str(folder)!r}: it lacks {', '.join(missing)}.")
    api = HfApi()
    api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        allow_patterns=[WEIGHTS_FILENAME, CONFIG_FILENAME, CARD_FILENAME],
        commit_message=f"Upload 3D weights converted by smp3d {smp3d.__version__}",
    )
    return str(getattr(info, "commit_url", info))
