"""Whole-model save/load/publish for segmentation models, on huggingface_hub's ``ModelHubMixin``.

A saved model is a folder (or Hub repository) with ``model.safetensors`` (the state dict),
``config.json`` (``_model_class``, ``_smp3d_version`` and every constructor argument, in the
flat layout that segmentation_models_pytorch 0.6 also uses) and ``README.md`` (a model card).
Only safetensors are read: nothing is unpickled. Every file is written to a temporary file in
the same folder and renamed into place.

Constructor arguments are captured by :func:`record_init_arguments` (wired into every
subclass of ``SegmentationModel`` by ``__init_subclass__``), so architectures need no code of
their own. Tuples are stored as JSON lists and read back as tuples.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn as nn
from huggingface_hub import ModelCard, ModelCardData, ModelHubMixin

__all__ = [
    "CONFIG_FILENAME",
    "WEIGHTS_FILENAME",
    "SegmentationHubMixin",
    "atomic_write",
    "decode_config_value",
    "encode_config_value",
    "from_pretrained",
    "record_init_arguments",
]

WEIGHTS_FILENAME = "model.safetensors"
CONFIG_FILENAME = "config.json"
CARD_FILENAME = "README.md"

T = TypeVar("T", bound="SegmentationHubMixin")

#: Every architecture class by name (filled by ``__init_subclass__``), for ``from_pretrained``.
_ARCHITECTURES: dict[str, list[type]] = {}

MODEL_CARD = """---
{card_data}
---

# {model_name}

A {spatial_dims}D **{architecture}** segmentation model with a **{encoder}** encoder, saved with
smp3d {version}. Inputs are `(B, {in_channels}, {layout})`; the output has {classes}
channel(s) at the input's size{aux}.

## Load it

```python
import smp3d

model = smp3d.from_pretrained("{location}")  # or smp3d.{architecture}.from_pretrained(...)
```

Loading builds the architecture from `config.json` and reads `model.safetensors` strictly (every
key and shape must match); nothing is unpickled.

## Constructor arguments

```json
{arguments}
```
{extra}"""


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(temp_path)`` on a temporary file beside ``path``, then rename it onto ``path``."""
    path = Path(path)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(temp)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda temp: Path(temp).write_text(text, encoding="utf-8"))


def encode_config_value(value: Any, key: str) -> Any:
    """``value`` as JSON data (tuples become lists); anything else raises a ValueError naming ``key``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [encode_config_value(v, key) for v in value]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: encode_config_value(v, key) for k, v in value.items()}
    raise ValueError(
        f"The constructor argument {key}={value!r} cannot be stored in config.json (only None, bool, int, float, "
        f"str, and lists/tuples/dicts of them can). Pass it by name (e.g. activation='sigmoid'), or save the "
        f"state dict with safetensors yourself."
    )


def decode_config_value(value: Any) -> Any:
    """The inverse of :func:`encode_config_value`: JSON lists become tuples, recursively."""
    if isinstance(value, list):
        return tuple(decode_config_value(v) for v in value)
    if isinstance(value, dict):
        return {k: decode_config_value(v) for k, v in value.items()}
    return value


def record_init_arguments(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap an ``__init__`` so that the outermost call stores its bound arguments (defaults
    applied, ``**kwargs`` flattened) in ``self._init_arguments``."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        outermost = not self.__dict__.get("_recording_init_arguments", False)
        if outermost:
            object.__setattr__(self, "_recording_init_arguments", True)
        try:
            init(self, *args, **kwargs)
        finally:
            if outermost:
                self.__dict__.pop("_recording_init_arguments", None)
        if outermost:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            arguments: dict[str, Any] = {}
            for name, param in list(signature.parameters.items())[1:]:
                if param.kind is inspect.Parameter.VAR_KEYWORD:
                    arguments.update(bound.arguments.get(name, {}))
                elif param.kind is inspect.Parameter.VAR_POSITIONAL:
                    if bound.arguments.get(name):
                        raise TypeError(f"{type(self).__name__} cannot record positional *{name} arguments.")
                else:
                    arguments[name] = bound.arguments[name]
            object.__setattr__(self, "_init_arguments", arguments)

    wrapper._records_init_arguments = True  # type: ignore[attr-defined]
    return wrapper


def _version() -> str:
    from .. import __version__

    return __version__


def _is_smp3d_config(config: Mapping[str, Any]) -> bool:
    return "_smp3d_version" in config


def _resolve_class(config: Mapping[str, Any], requested: type, where: str) -> type:
    name = config.get("_model_class")
    base = _base_class()
    if requested is not base:
        if name is not None and name != requested.__name__:
            raise ValueError(f"{where} holds a {name} model, not a {requested.__name__}; use smp3d.from_pretrained.")
        return requested
    if not isinstance(name, str):
        raise ValueError(f"{where}: config.json has no '_model_class'; load it with the architecture's class.")
    candidates = [cls for cls in _ARCHITECTURES.get(name, []) if cls is not base]
    if not candidates:
        known = ", ".join(sorted(n for n, classes in _ARCHITECTURES.items() if any(c is not base for c in classes)))
        if name == base.__name__:
            raise ValueError(
                f"{where}: config.json names {name!r} as '_model_class', the base class of the architectures, "
                f"which cannot be built by itself. Set '_model_class' to the architecture that was saved ({known})."
            )
        raise ValueError(f"{where} holds a {name!r} model, which is not a known architecture ({known}).")
    module = config.get("_model_module")
    for cls in candidates:
        if cls.__module__ == module:
            return cls
    return candidates[0]


def _base_class() -> type:
    from .model import SegmentationModel

    return SegmentationModel


class SegmentationHubMixin(
    ModelHubMixin,
    library_name="smp3d",
    tags=["smp3d", "image-segmentation", "pytorch"],
    pipeline_tag="image-segmentation",
    model_card_template=MODEL_CARD,
):
    """``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` for ``nn.Module`` segmentation models."""

    _init_arguments: dict[str, Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # Skip ModelHubMixin's own argument capture: ours (record_init_arguments) keeps every
        # argument, encodes tuples, and refuses what JSON cannot hold when saving.
        return object.__new__(cls)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_records_init_arguments", False):
            cls.__init__ = record_init_arguments(init)  # type: ignore[method-assign]
        super().__init_subclass__(**kwargs)
        _ARCHITECTURES.setdefault(cls.__name__, []).append(cls)

    # -- the configuration -------------------------------------------------------------------
    def hub_config(self) -> dict[str, Any]:
        """What ``config.json`` holds: ``_model_class``, ``_model_module``, ``_smp3d_version`` and
        every constructor argument (JSON data; tuples as lists)."""
        arguments = self.__dict__.get("_init_arguments")
        if arguments is None:
            raise ValueError(f"{type(self).__name__} did not record its constructor arguments.")
        encoded = {key: encode_config_value(value, key) for key, value in arguments.items()}
        return {
            "_model_class": type(self).__name__,
            "_model_module": type(self).__module__,
            "_smp3d_version": _version(),
            **encoded,
        }

    # -- saving --------------------------------------------------------------------------------
    def save_pretrained(  # type: ignore[override]
        self,
        save_directory: str | Path,
        *,
        config: dict[str, Any] | None = None,
        repo_id: str | None = None,
        push_to_hub: bool = False,
        model_card_kwargs: dict[str, Any] | None = None,
        **push_to_hub_kwargs: Any,
    ) -> str | None:
        """Write ``model.safetensors``, ``config.json`` and ``README.md`` (an existing card is kept)
        into ``save_directory``, each atomically; with ``push_to_hub=True`` also upload them."""
        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        config = dict(config) if config is not None else self.hub_config()
        model_card_kwargs = dict(model_card_kwargs or {})
        self._save_pretrained(save_directory)
        _write_text(save_directory / CONFIG_FILENAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
        card_path = save_directory / CARD_FILENAME
        if not card_path.exists():
            card = self.generate_model_card(config=config, **model_card_kwargs)
            _write_text(card_path, str(card))
        if push_to_hub:
            kwargs = dict(push_to_hub_kwargs)
            kwargs["config"] = config
            return self.push_to_hub(
                repo_id=repo_id or save_directory.name, model_card_kwargs=model_card_kwargs, **kwargs
            )
        return None

    def push_to_hub(  # type: ignore[override]
        self, repo_id: str, *, model_card_kwargs: dict[str, Any] | None = None, **kwargs: Any
    ) -> str:
        """Save into a temporary folder and upload it as one commit (``HfApi.create_repo`` then
        ``HfApi.upload_folder``); ``kwargs`` are those of ``ModelHubMixin.push_to_hub``
        (``private``, ``commit_message``, ``branch``, ``token``, ...)."""
        card = {"location": repo_id, **(model_card_kwargs or {})}
        return super().push_to_hub(repo_id, model_card_kwargs=card, **kwargs)

    def _save_pretrained(self, save_directory: Path) -> None:
        from safetensors.torch import save_file

        state: dict[str, torch.Tensor] = {}
        seen: set[tuple[int, int]] = set()
        for key, tensor in self.state_dict().items():  # type: ignore[attr-defined]
            tensor = tensor.detach().cpu().contiguous()
            ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
            if tensor.numel() and ident in seen:  # safetensors refuses shared storage: store a copy
                tensor = tensor.clone()
            seen.add(ident)
            state[key] = tensor
        atomic_write(save_directory / WEIGHTS_FILENAME, lambda temp: save_file(state, temp, metadata={"format": "pt"}))

    def generate_model_card(self, *args: Any, config: Mapping[str, Any] | None = None, **kwargs: Any) -> ModelCard:
        """A model card: architecture, encoder, dimensions, how to load, constructor arguments.

        Optional ``kwargs``: ``location`` (folder or repo id shown in the loading snippet),
        ``metrics`` (JSON data), ``dataset`` (text). Rendered without jinja2.
        """
        config = dict(config) if config is not None else self.hub_config()
        arguments = {k: v for k, v in config.items() if not k.startswith("_")}
        spatial_dims = int(arguments.get("spatial_dims", 3 if _is_smp3d_config(config) else 2))
        architecture = str(config.get("_model_class", type(self).__name__))
        encoder = str(arguments.get("encoder_name", "?"))
        aux = arguments.get("aux_params")
        extra = ""
        if kwargs.get("metrics") is not None:
            extra += f"\n## Metrics\n\n```json\n{json.dumps(kwargs['metrics'], indent=2)}\n```\n"
        if kwargs.get("dataset"):
            extra += f"\n## Dataset\n\n{kwargs['dataset']}\n"
        info = self._hub_mixin_info
        card_data = ModelCardData(**info.model_card_data.to_dict())
        text = info.model_card_template.format(
            card_data=card_data.to_yaml(),
            model_name=f"{architecture} ({encoder}, {spatial_dims}D)",
            architecture=architecture,
            encoder=encoder,
            spatial_dims=spatial_dims,
            layout="H, W, D" if spatial_dims == 3 else "H, W",
            in_channels=arguments.get("in_channels", "?"),
            classes=arguments.get("classes", "?"),
            aux=f", plus {aux.get('classes')} class logits from an auxiliary head" if isinstance(aux, Mapping) else "",
            version=config.get("_smp3d_version", _version()),
            location=kwargs.get("location", "<this folder or Hub repository>"),
            arguments=json.dumps(arguments, indent=2, sort_keys=True),
            extra=extra,
        )
        return ModelCard(text)

    # -- loading --------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls: type[T],
        pretrained_model_name_or_path: str | Path,
        *,
        force_download: bool = False,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
        map_location: str | torch.device = "cpu",
        strict: bool = True,
        **model_kwargs: Any,
    ) -> T:
        """Build the model described by ``config.json`` and load ``model.safetensors`` strictly.

        With ``strict=False`` (e.g. after changing ``classes``) the tensors that fit load and a
        warning lists every key that did not (missing, unexpected, other shape or dtype), as
        segmentation_models_pytorch 0.5+ does; the default refuses any mismatch and loads nothing.

        ``pretrained_model_name_or_path`` is a local folder (nothing is downloaded) or a Hub
        repository id (huggingface_hub's cache, ``revision`` and ``HF_HUB_OFFLINE`` apply).
        Called on ``SegmentationModel`` (or ``smp3d.from_pretrained``) the class is read from the
        config; on an architecture it must match. ``model_kwargs`` override constructor arguments.
        A config without ``_smp3d_version`` (segmentation_models_pytorch 0.6) means a 2D model.
        The model is returned in eval mode.
        """
        config_file, weights_file, where = _locate(
            pretrained_model_name_or_path,
            force_download=force_download,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            revision=revision,
        )
        try:
            config = json.loads(Path(config_file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"Could not read {where}/config.json: not valid JSON ({exc}).") from exc
        if not isinstance(config, dict):
            raise ValueError(f"{where}/config.json must hold a JSON object.")
        target = _resolve_class(config, cls, where)
        arguments = {k: decode_config_value(v) for k, v in config.items() if not k.startswith("_")}
        if not _is_smp3d_config(config):
            arguments.setdefault("spatial_dims", 2)  # saved by segmentation_models_pytorch: 2D
        # The weights come from the checkpoint: never fetch the encoder's pretrained weights again.
        arguments["encoder_weights"] = None
        arguments.update(model_kwargs)
        from ..encoders.weights import load_state_dict_strict, read_safetensors

        model = target(**arguments)
        state = read_safetensors(weights_file)
        load_state_dict_strict(model, state, what=f"from {where}", strict=strict)
        model.to(map_location)
        model.eval()
        return model  # type: ignore[return-value]


def _locate(
    source: str | Path,
    *,
    force_download: bool,
    token: str | bool | None,
    cache_dir: str | Path | None,
    local_files_only: bool,
    revision: str | None,
) -> tuple[str, str, str]:
    """``(config_file, weights_file, description)`` for a local folder or a Hub repository id."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = [path / CONFIG_FILENAME, path / WEIGHTS_FILENAME]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"The model folder {str(path)!r} has no {' or '.join(missing)}.")
        return str(files[0]), str(files[1]), repr(str(path))
    if path.exists():
        raise ValueError(f"{str(path)!r} is a file: from_pretrained takes the folder written by save_pretrained.")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, OfflineModeIsEnabled

    repo_id = str(source)
    where = f"Hub repository {repo_id!r}" + (f"@{revision}" if revision else "")
    found = []
    for filename in (CONFIG_FILENAME, WEIGHTS_FILENAME):
        try:
            found.append(
                hf_hub_download(
                    repo_id,
                    filename,
                    revision=revision,
                    cache_dir=cache_dir,
                    force_download=force_download,
                    token=token,
                    local_files_only=local_files_only,
                )
            )
        except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
            raise FileNotFoundError(
                f"{repo_id!r} is not a local folder, and {filename} of the {where} is not in the local Hugging Face "
                f"cache while the Hub cannot be used (offline or unreachable)."
            ) from exc
        except EntryNotFoundError as exc:
            raise FileNotFoundError(f"The {where} has no {filename}: it was not saved by save_pretrained.") from exc
    return found[0], found[1], where


def from_pretrained(pretrained_model_name_or_path: str | Path, **kwargs: Any) -> nn.Module:
    """Load any saved smp3d (or segmentation_models_pytorch 0.6) model: the class comes from its config."""
    return _base_class().from_pretrained(pretrained_model_name_or_path, **kwargs)  # type: ignore[attr-defined]
