"""Checks shared by the architecture test files (``tests/test_<architecture>.py``).

Plain functions and test encoders, imported as ``import architecture_checks as checks`` (pytest puts
``tests/`` on ``sys.path``). Each test file keeps only what is specific to its architecture.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn

import smp3d

RESNET_STAGES = 5  # smp builds every ResNet stage, whatever ``encoder_depth`` is


# --- smp 0.6.0 parity in 2D -------------------------------------------------------------------------------------


def smp_unused_stages(depth: int) -> tuple[str, ...]:
    """Key prefixes of the ResNet stages deeper than ``depth``: smp keeps them, we build only the used ones."""
    return tuple(f"encoder.layer{i}." for i in range(depth, RESNET_STAGES))


def smp_kwargs(kwargs: dict) -> dict:
    """Our arguments as smp takes them: smp's ``upsampling`` is one int, ours may be a per-axis tuple."""
    out = dict(kwargs)
    if isinstance(out.get("upsampling"), tuple):
        out["upsampling"] = out["upsampling"][0]
    return out


def perturbed_state(reference_model: nn.Module, drop_prefixes: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """``reference_model``'s state dict made to look trained: every weight scaled, batch-norm means shifted.

    Keys starting with one of ``drop_prefixes`` (a full key drops just that key) are left out. The tensors
    are the model's own: perturbing them perturbs ``reference_model`` too.
    """
    drop = tuple(drop_prefixes)
    state = {k: v for k, v in reference_model.state_dict().items() if not k.startswith(drop)}
    with torch.no_grad():
        for key, value in state.items():
            if key.endswith("running_mean"):
                value.add_(torch.empty_like(value).uniform_(-0.1, 0.1))
            elif value.is_floating_point():
                value.mul_(torch.empty_like(value).uniform_(0.9, 1.1))
    return state


def assert_eval_outputs_match(
    reference: nn.Module, ours: nn.Module, x: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-4
) -> None:
    """Both models in eval mode give the same output, or the same tuple of outputs (masks, aux labels)."""
    reference.eval()
    ours.eval()
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    expected, got = (expected, got) if isinstance(expected, tuple) else ((expected,), (got,))
    assert isinstance(got, tuple) and len(expected) == len(got)
    for a, b in zip(expected, got, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=rtol, atol=atol)


def assert_loads_and_matches_smp(
    reference: nn.Module,
    ours: nn.Module,
    x: torch.Tensor,
    drop_prefixes: Iterable[str] = (),
    rtol: float = 1e-4,
    atol: float = 1e-4,
) -> None:
    """A trained smp model (see :func:`perturbed_state`) has our keys and shapes, loads strictly into ours,
    and both give the same eval outputs on ``x``."""
    state = perturbed_state(reference, drop_prefixes)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in state.items()}
    ours.load_state_dict(state, strict=True)
    assert_eval_outputs_match(reference, ours, x, rtol=rtol, atol=atol)


# Our defaults where smp's differ: no pretrained weights, and the head's upsampling follows the encoder's strides.
WEIGHTS_AND_UPSAMPLING = {"encoder_weights": None, "upsampling": None}


def assert_case_matches_smp(
    smp_cls: type,
    ours_cls: type,
    kwargs: dict,
    batch: int = 1,
    size: tuple[int, ...] = (64, 96),
    rtol: float = 1e-4,
    atol: float = 1e-4,
) -> None:
    """One 2D parity case: smp's model built from ``kwargs`` (no weights) and ours (``spatial_dims=2``) pass
    :func:`assert_loads_and_matches_smp` on a random ``(batch, in_channels, *size)`` input, with smp's unused
    deeper ResNet stages left out."""
    reference = smp_cls(encoder_weights=None, **smp_kwargs(kwargs))
    ours = ours_cls(spatial_dims=2, **kwargs)
    depth = kwargs.get("encoder_depth", inspect.signature(ours_cls).parameters["encoder_depth"].default)
    x = torch.randn(batch, kwargs.get("in_channels", 3), *size)
    assert_loads_and_matches_smp(reference, ours, x, smp_unused_stages(depth), rtol=rtol, atol=atol)


def assert_defaults_match_smp(
    ours_cls: type, smp_cls: type, differing: dict[str, object] | None = None
) -> dict[str, inspect.Parameter]:
    """Our constructor takes every argument of smp's with smp's default, except those in ``differing``
    (name -> our default; by default only ``encoder_weights=None``), plus ``spatial_dims=3, strides=None``.

    Returns our parameters, for architecture-specific checks.
    """
    differing = {"encoder_weights": None} if differing is None else differing
    ours = inspect.signature(ours_cls.__init__).parameters
    theirs = inspect.signature(smp_cls.__init__).parameters
    assert set(theirs) <= set(ours), sorted(set(theirs) - set(ours))
    for name, parameter in theirs.items():
        if name in ("self", "kwargs"):
            continue
        expected = differing.get(name, parameter.default)
        assert ours[name].default == expected, name
    assert ours["spatial_dims"].default == 3 and ours["strides"].default is None
    return dict(ours)


# --- training, fast paths, meta device --------------------------------------------------------------------------


def _expected_shape(x: torch.Tensor, classes: int) -> tuple[int, ...]:
    return (x.shape[0], classes, *x.shape[2:])


def check_forward_backward(
    model: nn.Module, x: torch.Tensor, classes: int, unused: Callable[[str], bool] = lambda name: False
):
    """Masks of the input's size; a loss on the masks (and the aux labels, if any) gives a finite gradient
    to every trainable parameter except those named ``unused(name)`` (never applied, as in smp).

    Returns the output.
    """
    out = model(x)
    masks = out[0] if isinstance(out, tuple) else out
    assert masks.shape == _expected_shape(x, classes)
    loss = masks.square().mean() + (out[1].square().mean() if isinstance(out, tuple) else 0)
    loss.backward()
    missing = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and not unused(name) and (p.grad is None or not torch.isfinite(p.grad).all())
    ]
    assert not missing, missing
    return out


def check_eval_shapes(model: nn.Module, classes: int, *input_shapes: tuple[int, ...]) -> None:
    """In eval mode, every input gives masks of its own spatial size."""
    model.eval()
    with torch.no_grad():
        for shape in input_shapes:
            assert model(torch.randn(shape)).shape == (shape[0], classes, *shape[2:]), shape


def torch_keeps_channels_last_bf16() -> bool:
    """Whether this torch's CPU bf16 3D convolution returns a channels_last_3d input in channels_last_3d.

    torch 2.14's oneDNN path returns a contiguous output; the model cannot keep a layout its convolutions
    drop, so the layout checks below hold where torch itself keeps it."""
    x = torch.randn(1, 8, 4, 4, 4, dtype=torch.bfloat16).to(memory_format=torch.channels_last_3d)
    w = torch.randn(8, 8, 3, 3, 3, dtype=torch.bfloat16).to(memory_format=torch.channels_last_3d)
    return torch.nn.functional.conv3d(x, w, padding=1).is_contiguous(memory_format=torch.channels_last_3d)


def check_channels_last_bf16(model: nn.Module, x: torch.Tensor, classes: int) -> torch.Tensor:
    """A channels-last-3d model under CPU bf16 autocast: finite bf16 channels-last masks of the input's size,
    a backward pass, and eval outputs that do not depend on the input's memory format. Returns the autocast
    output."""
    model = model.to(memory_format=torch.channels_last_3d)
    x = x.to(memory_format=torch.channels_last_3d)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16 and out.shape == _expected_shape(x, classes)
    assert torch.isfinite(out).all()
    if torch_keeps_channels_last_bf16():
        assert out.is_contiguous(memory_format=torch.channels_last_3d)
    out.float().mean().backward()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x.contiguous()), rtol=1e-4, atol=1e-4)
    return out


def check_compiles(model: nn.Module, x: torch.Tensor, **tolerances: float) -> None:
    """``torch.compile(fullgraph=True)`` traces the eval model without graph breaks and equals eager
    (``tolerances``: ``rtol``/``atol`` of the comparison, torch's defaults when not given)."""
    model.eval()
    # Every compile test traces fresh models through the same code objects: without a reset,
    # Dynamo's per-code recompile limit is reached across tests, which fullgraph=True makes an error.
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), **tolerances)


def check_meta(cls: Callable[..., nn.Module], input_shape: tuple[int, ...], **kwargs) -> nn.Module:
    """Built and run on the meta device (no memory): masks of the input's size. Returns the model."""
    with torch.device("meta"):
        model = cls(**kwargs)
        out = model(torch.empty(input_shape))
    assert out.is_meta and out.shape == (input_shape[0], kwargs.get("classes", 1), *input_shape[2:])
    return model


# --- test encoders ----------------------------------------------------------------------------------------------


class PlaceholderEncoder(nn.Module):
    """Wraps an encoder and exposes its feature 1 as a 0-channel placeholder (smp's convention for MiT)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.out_channels = (inner.out_channels[0], 0, *inner.out_channels[2:])
        self.reductions = inner.reductions
        self.spatial_dims = inner.spatial_dims

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.inner(x)
        return [features[0], features[1][:, :0], *features[2:]]


def placeholder_resnet18(**kwargs) -> nn.Module:
    """Encoder builder: a resnet18 whose feature 1 is a 0-channel placeholder."""
    return PlaceholderEncoder(smp3d.get_encoder("resnet18", **kwargs))


class StridedConvEncoder(nn.Module):
    """A minimal protocol encoder (one strided conv per stage, ``width * 2**i`` channels) without the
    ``make_dilated`` hook. Register ``functools.partial(StridedConvEncoder, width=...)`` for other widths."""

    def __init__(self, in_channels=3, depth=5, spatial_dims=3, strides=None, width=8, **kwargs):
        super().__init__()
        conv = smp3d.layers.conv(spatial_dims)
        self.out_channels = (in_channels, *(width * 2**i for i in range(depth)))
        self.reductions = tuple((2**i,) * spatial_dims for i in range(depth + 1))
        self.spatial_dims = spatial_dims
        self.stages = nn.ModuleList(
            conv(cin, cout, 3, stride=2, padding=1)
            for cin, cout in zip(self.out_channels[:-1], self.out_channels[1:], strict=True)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [x]
        for stage in self.stages:
            features.append(stage(features[-1]))
        return features
