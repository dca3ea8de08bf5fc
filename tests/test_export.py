"""Every export path users have, for every architecture and encoder family (generated matrix).

The cases and their expected outcomes come from ``scripts/export_table.py``, which also writes the
support table docs/export.md from them: a path either works (the exported program, run in
onnxruntime for ONNX, gives PyTorch's output) or is refused with an error naming the path and the
reason. Nothing is skipped.
"""

from __future__ import annotations

import pytest
import repo_scripts
import torch

export_table = repo_scripts.load("scripts/export_table.py")
CASES = export_table.cases()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_export_path(case):
    outcome = export_table.expected(case)
    if outcome.status == "works":
        export_table.run(case)
        return
    with pytest.raises(outcome.error, match=outcome.message) as raised:
        export_table.run(case)
    if case.path == "jit_script":  # our refusal: the message carries the reason the table gives
        assert export_table._refusal_reason(case) in str(raised.value)


def test_matrix_covers_every_architecture_family_and_path():
    am = repo_scripts.load("scripts/architecture_matrix.py")
    assert {c.arch for c in CASES} == set(am.architectures())
    encoders = {c.encoder for c in CASES if c.arch in ("Unet", "UNETR")}  # single-scale families go through UNETR
    assert set(export_table.families().values()) <= encoders
    assert {c.path for c in CASES} | {"compile"} == set(export_table.PATHS)
    assert {c.spatial_dims for c in CASES} == {2, 3}


def test_export_table_is_up_to_date():
    assert export_table.DOC.read_text() == export_table.render(), (
        "docs/export.md is stale: run python scripts/export_table.py"
    )


def test_split_convolution_stays_out_of_captured_graphs():
    """The batch-1 CPU split (two halves run as a batch of two) is eager-only: a traced graph has one
    convolution of batch 1, so the TorchScript ONNX exporter sees a kernel of known shape."""
    conv = torch.nn.Conv3d  # the plain layer, for the reference
    from smp3d.layers import Conv3d, conv_nd
    from smp3d.layers.conv import splits_for_onednn

    layer = Conv3d(64, 64, 3, padding=1).eval()
    x = torch.randn(1, 64, 16, 16, 16)
    assert splits_for_onednn(x, layer.weight, layer.stride, layer.padding, layer.dilation, layer.groups)
    graph = torch.jit.trace(layer, x).inlined_graph
    assert len(graph.findAllNodes("aten::_convolution")) == 1 and not graph.findAllNodes("aten::cat")
    torch.testing.assert_close(
        conv_nd(x, layer.weight, layer.bias, (1,) * 3, (1,) * 3, (1,) * 3), conv.forward(layer, x)
    )


def test_every_architecture_has_a_compile_test():
    """torch.compile(fullgraph=True) is not repeated in this matrix: each architecture's own file checks it."""
    assert set(export_table.compile_tests()) == {c.arch for c in CASES}


def test_scripted_unet_takes_other_sizes_and_batches():
    """A scripted model is not specialised to the example: other batch sizes and spatial sizes run and
    equal eager (the 3D Unet at batch 1 takes the eager split convolution, the script the plain one)."""
    import smp3d

    torch.manual_seed(0)
    model = smp3d.Unet("resnet18", encoder_depth=3, decoder_channels=(32, 16, 8), in_channels=1, classes=2).eval()
    scripted = torch.jit.script(model)
    with torch.no_grad():
        for x in (torch.randn(1, 1, 32, 16, 24), torch.randn(2, 1, 16, 16, 8)):
            torch.testing.assert_close(scripted(x), model(x), rtol=1e-4, atol=1e-4)


def test_scripting_refusal_names_the_path_the_part_and_the_reason():
    import smp3d
    from smp3d.base.scripting import TorchScriptError

    with torch.device("meta"):
        model = smp3d.FPN("dpn68", spatial_dims=2)
    with pytest.raises(
        TorchScriptError, match=r"torch.jit.script cannot compile this FPN: DPNEncoder: .*TorchScript.*torch.jit.trace"
    ):
        torch.jit.script(model)


def test_scripted_batch_norm_of_a_pooled_branch_trains_like_eager():
    """SingleCellBatchNorm's scripted forward spells out batch norm: training mode (batch statistics, running
    statistics updated) and the single-cell case equal eager."""
    from smp3d.layers import SingleCellBatchNorm

    torch.manual_seed(0)
    for x in (torch.randn(3, 4, 2, 2, 2), torch.randn(1, 4, 1, 1, 1)):
        eager, scripted = SingleCellBatchNorm(4).train(), torch.jit.script(SingleCellBatchNorm(4).train())
        for _ in range(2):
            torch.testing.assert_close(scripted(x), eager(x))
        torch.testing.assert_close(scripted.running_mean, eager.running_mean)
        torch.testing.assert_close(scripted.running_var, eager.running_var)
        assert int(scripted.num_batches_tracked) == int(eager.num_batches_tracked)
