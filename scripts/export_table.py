"""The export matrix (architectures x encoder families x export paths) and docs/export.md generated from it.

    python scripts/export_table.py          # rewrite docs/export.md
    python scripts/export_table.py --check  # exit 1 if docs/export.md is stale

``tests/test_export.py`` runs every case of :func:`cases` and checks the outcome :func:`expected`
says; the table is written from the same two functions, so it documents what the tests check. The
architectures and families come from ``scripts/architecture_matrix.py`` (``create_model``'s table and
the registry), so a new architecture or family joins the matrix without editing this file.

Each case builds a small model (``in_channels=1, classes=2``) in eval mode and feeds it a
``(1, 1, 32, ..., 32)`` input. A path "works" when the exported program runs and gives PyTorch's
output (ONNX programs are run in onnxruntime); it is "refused" when it raises an error naming the
path and the reason (TorchScript refusals: :mod:`smp3d.base.scripting`).
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import NamedTuple

import architecture_matrix as am
import torch

import smp3d

DOC = Path(__file__).resolve().parent.parent / "docs" / "export.md"
SIZE = 32
CLASSES = 2
ARCH_ENCODER = "resnet18"  # the encoder every architecture is exported with
TIMM_ENCODER = "tu-resnet10t"  # the tu- bridge (timm models converted to N-D), smallest case
RTOL = ATOL = 1e-4
#: Input sizes other than SIZE. PSPNet and UPerNet pool their deepest feature to 1, 2, 3 and 6 bins per axis, and ONNX
#: has no adaptive pooling: both exporters refuse bins that do not divide the feature (the TorchScript
#: exporter says "output size that are not factor of input size"), so its input gives a 6^3 feature.
SIZES = {"PSPNet": 48, "UPerNet": 48}
DEPTH = 3  # encoder_depth where accepted: every stage type is still exported, in half the graph

PATHS = {
    "onnx_dynamo": "`torch.onnx.export(dynamo=True)` run in onnxruntime",
    "onnx_torchscript": "`torch.onnx.export(dynamo=False)` run in onnxruntime",
    "torch_export": "`torch.export.export`",
    "jit_trace": "`torch.jit.trace`",
    "jit_script": "`torch.jit.script`",
    "compile": '`torch.compile(fullgraph=True, backend="eager")`',
}
# The cross product is chosen to fit CI (tests/test_export.py, about 90 s on 2 cores):
# - every architecture in 3D through torch.export, ONNX from that exported program (the dynamo
#   exporter's own first step), the TorchScript ONNX exporter and scripting; in 2D through
#   jit.trace (the TorchScript exporter's first step, so 3D covers it) and scripting;
# - every family through Unet with the paths most sensitive to an encoder's code: the TorchScript
#   ONNX exporter in 3D and scripting in 2D and 3D;
# - torch.compile(fullgraph=True) of every architecture runs in its own test file
#   (``test_compiles_without_graph_breaks``, listed by tests/test_export.py), so it is not repeated here.
ARCH_PATHS = {3: ("torch_export", "onnx_dynamo", "onnx_torchscript", "jit_script"), 2: ("jit_trace", "jit_script")}
FAMILY_PATHS = {3: ("onnx_torchscript", "jit_script"), 2: ("jit_script",)}

#: Architectures and encoder classes that TorchScript compiles (their ``_is_torch_scriptable``);
#: every other one is expected to refuse ``torch.jit.script`` with the reason it gives.
SCRIPTABLE_ARCHITECTURES: frozenset[str] = frozenset(
    arch for arch, cls in am.architectures().items() if getattr(cls, "_is_torch_scriptable", True)
)
SCRIPTABLE_ENCODERS: frozenset[str] = frozenset(
    {
        "DenseNetEncoder",
        "EfficientNetEncoder",
        "HRNetEncoder",
        "MedNeXtEncoder",
        "MobileOneEncoder",
        "PlainEncoder",
        "ResidualEncoder",
        "ResNetEncoder",
        "SENetEncoder",
        "VGGEncoder",
    }
)


#: Paths torch's exporters do not support for an architecture: (architecture, spatial_dims, path) ->
#: (text of the exporter's error, the reason for the table). Asserted as errors like every refusal.
EXPORTER_LIMITS = {
    (arch, 3, "onnx_dynamo"): (
        "_adaptive_avg_pool3d",
        f"{arch}: torch's dynamo ONNX exporter has no translation of 3D adaptive average pooling "
        "(aten._adaptive_avg_pool3d, the pyramid pooling module); use torch.onnx.export(dynamo=False)",
    )
    for arch in ("PSPNet", "UPerNet")
}


class Case(NamedTuple):
    arch: str
    encoder: str
    spatial_dims: int
    path: str

    @property
    def id(self) -> str:
        return f"{self.arch}-{self.encoder}-{self.spatial_dims}d-{self.path}"


class Outcome(NamedTuple):
    status: str  # "works" or "refused"
    error: type[Exception] | None = None
    message: str = ""  # a part of the refusal's message


TESTS = Path(__file__).resolve().parent.parent / "tests"


def compile_tests() -> dict[str, str]:
    """architecture -> the test file whose ``test_compiles_without_graph_breaks`` compiles it
    (``tests/test_<architecture>.py``, DeepLabV3Plus sharing DeepLabV3's); missing ones are left out."""
    out = {}
    for arch in am.architectures():
        for stem in dict.fromkeys([arch.lower(), arch.lower().removesuffix("plus")]):
            path = TESTS / f"test_{stem}.py"
            text = path.read_text() if path.exists() else ""
            if "def test_compiles_without_graph_breaks" in text and re.search(rf"\b{arch}\b", text):
                out[arch] = f"tests/{path.name}"
                break
    return out


@functools.cache
def families() -> dict[str, str]:
    """family -> the encoder it is tested with: the smallest of each first-party family, and the tu- bridge."""
    return {**am.first_party_families(), "timm (tu-)": TIMM_ENCODER}


def cases() -> list[Case]:
    out = []
    for arch in am.architectures():
        for dims, paths in ARCH_PATHS.items():
            out += [Case(arch, ARCH_ENCODER, dims, path) for path in paths]
    for encoder in families().values():
        # a single-scale family (a plain ViT) goes through the architecture that builds its pyramid
        arch = "UNETR" if smp3d.get_encoder_spec(encoder).extra.get("single_scale") else "Unet"
        for dims, paths in FAMILY_PATHS.items():
            out += [Case(arch, encoder, dims, path) for path in paths]
    return list(dict.fromkeys(out))  # Unet(resnet18) is both an architecture and a family case


@functools.cache
def _depth(arch: str, encoder: str, spatial_dims: int) -> dict[str, int]:
    """``encoder_depth=DEPTH`` where the architecture and encoder accept it (smaller graphs export faster)."""
    cls = am.architectures()[arch]
    try:
        with torch.device("meta"):
            cls(encoder_name=encoder, encoder_depth=DEPTH, in_channels=1, spatial_dims=spatial_dims)
    except ValueError:
        return {}
    return {"encoder_depth": DEPTH}


def _build(arch: str, encoder: str, spatial_dims: int) -> torch.nn.Module:
    torch.manual_seed(0)
    cls = am.architectures()[arch]
    kwargs = _depth(arch, encoder, spatial_dims)
    return cls(encoder_name=encoder, in_channels=1, classes=CLASSES, spatial_dims=spatial_dims, **kwargs).eval()


@functools.lru_cache(maxsize=1)
def build(case: Case) -> torch.nn.Module:
    """The case's model in eval mode; consecutive cases of one model share it (no path mutates it)."""
    return _build(case.arch, case.encoder, case.spatial_dims)


@functools.cache
def _encoder_class(arch: str, encoder: str, spatial_dims: int) -> str:
    with torch.device("meta"):
        return type(_build(arch, encoder, spatial_dims).encoder).__name__


def expected(case: Case) -> Outcome:
    limit = EXPORTER_LIMITS.get((case.arch, case.spatial_dims, case.path))
    if limit is not None:
        return Outcome("refused", Exception, limit[0])
    if case.path == "jit_script":
        reasons = []
        if case.arch not in SCRIPTABLE_ARCHITECTURES:
            reasons.append(case.arch)
        encoder = _encoder_class(case.arch, case.encoder, case.spatial_dims)
        if encoder not in SCRIPTABLE_ENCODERS:
            reasons.append(encoder)
        if reasons:
            from smp3d.base.scripting import TorchScriptError

            return Outcome("refused", TorchScriptError, f"torch.jit.script cannot compile this {case.arch}: ")
    return Outcome("works")


# -- running a case ---------------------------------------------------------------------------------------------


def _onnxruntime(model_bytes: bytes, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(out)


@functools.lru_cache(maxsize=1)
def _exported(model: torch.nn.Module, shape: tuple[int, ...]) -> torch.export.ExportedProgram:
    return torch.export.export(model, (torch.zeros(shape),))


def _torch_export(model, x):
    return _exported(model, tuple(x.shape)).module()(x)


def _onnx_dynamo(model, x):
    # from torch.export's program, the dynamo exporter's first step (shared with the torch_export case)
    program = torch.onnx.export(_exported(model, tuple(x.shape)), (x,), dynamo=True, verbose=False)
    return _onnxruntime(program.model_proto.SerializeToString(), x)


def _onnx_torchscript(model, x):
    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, dynamo=False)
    return _onnxruntime(buffer.getvalue(), x)


def _compile(model, x):
    torch._dynamo.reset()  # fullgraph=True turns the per-code recompile limit, shared across tests, into an error
    return torch.compile(model, backend="eager", fullgraph=True)(x)


RUNNERS = {
    "onnx_dynamo": _onnx_dynamo,
    "onnx_torchscript": _onnx_torchscript,
    "torch_export": _torch_export,
    "jit_trace": lambda model, x: torch.jit.trace(model, x, check_trace=False)(x),
    "jit_script": lambda model, x: torch.jit.script(model)(x),
    "compile": _compile,
}


def run(case: Case) -> None:
    """Export ``case``'s model along its path and check the program's output against eager PyTorch."""
    model = build(case)
    x = torch.randn(
        1, 1, *(SIZES.get(case.arch, SIZE),) * case.spatial_dims, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation and tracer notes
        got = RUNNERS[case.path](model, x)
        want = model(x)
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)


# -- the table --------------------------------------------------------------------------------------------------

HEADER = """# Export support

Generated by `python scripts/export_table.py` from the cases and expected outcomes that
`tests/test_export.py` checks (a test fails when this file is stale; do not edit it by hand).

Each case builds the model with `in_channels=1, classes=2` (and `encoder_depth={depth}` where the
architecture and encoder accept it) in eval mode and exports it for a
`(1, 1, {size}, ...)` input; "works" means the exported program runs and gives PyTorch's output
(rtol = atol = {tol:g}; ONNX programs run in onnxruntime). "refused" means the path raises an error
naming the path and the reason, as quoted. Every architecture is tested with `{arch_encoder}`;
every encoder family (its smallest encoder) through `Unet`. `torch.compile(fullgraph=True)` of each
architecture is tested in its own test file (`test_compiles_without_graph_breaks`, named in the table).

PSPNet and UPerNet are exported for a 48-voxel input (a 6-voxel deepest feature at depth 3): their pyramid pools to
1, 2, 3 and 6 bins per axis, and ONNX has no adaptive pooling, so both ONNX exporters need every bin
count to divide the deepest feature's size (otherwise the TorchScript exporter raises "output size
that are not factor of input size"). `torch.export`, tracing and compile take any size.

Eager-only fast paths (the batch-1 CPU split convolution, the fused upsample -> convolution of the
Unet decoder) are left out of every captured graph, so exported programs hold the plain computation
and are valid for any batch size and backend.
"""


def _cell(outcome: Outcome, notes: dict[str, int], reason: str = "") -> str:
    if outcome.status == "works":
        return "works"
    notes.setdefault(reason, len(notes) + 1)
    return f"refused [{notes[reason]}]"


def _refusal_reason(case: Case) -> str:
    """The reason the refusal gives (the model's own flags: the test checks the raised message contains it)."""
    limit = EXPORTER_LIMITS.get((case.arch, case.spatial_dims, case.path))
    if limit is not None:
        return limit[1]
    from smp3d.base.scripting import check_scriptable

    with torch.device("meta"):
        model = _build(case.arch, case.encoder, case.spatial_dims)
    try:
        check_scriptable(model)
    except RuntimeError as error:
        return str(error).split(": ", 1)[1].rsplit(". torch.jit.trace", 1)[0]
    return ""


def render() -> str:
    all_cases = cases()
    rows: dict[tuple[str, str], dict[tuple[int, str], str]] = {}
    notes: dict[str, int] = {}
    for case in all_cases:
        outcome = expected(case)
        reason = _refusal_reason(case) if outcome.status == "refused" else ""
        rows.setdefault((case.arch, case.encoder), {})[(case.spatial_dims, case.path)] = _cell(outcome, notes, reason)
    for arch, test_file in compile_tests().items():  # tested in the architecture's own file
        rows[(arch, ARCH_ENCODER)][(3, "compile")] = f"works (`{test_file}`)"
    used = {col for cells in rows.values() for col in cells}
    columns = [(dims, path) for dims in (3, 2) for path in PATHS if (dims, path) in used]
    lines = [HEADER.format(depth=DEPTH, size=SIZE, tol=RTOL, arch_encoder=ARCH_ENCODER).rstrip(), ""]
    lines += [f"- `{name}`: {label}" for name, label in PATHS.items()]
    lines.append("")
    lines.append("| model | " + " | ".join(f"{dims}D `{path}`" for dims, path in columns) + " |")
    lines.append("|---|" + "---|" * len(columns))
    for (arch, encoder), cells in rows.items():
        lines.append(f"| {arch}(`{encoder}`) | " + " | ".join(cells.get(col, "-") for col in columns) + " |")
    lines += ["", '"-": not in the matrix (see the choice above). Refusals (the reason the error gives):', ""]
    lines += [f"{number}. {text}" for text, number in notes.items()]
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC} is stale: run python scripts/export_table.py", file=sys.stderr)
            return 1
        return 0
    _write_atomic(DOC, text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
