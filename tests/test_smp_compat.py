"""Moving from segmentation_models_pytorch 0.6: its checkpoints, loss shapes and preprocessing work here."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch

import smp3d
import smp3d.losses as losses
from smp3d.models import _CLASSES

smp = pytest.importorskip("segmentation_models_pytorch")

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


def _default_depth(cls: type) -> int:
    return inspect.signature(cls.__init__).parameters["encoder_depth"].default


# Every architecture smp also has whose default encoder depth is below the full 5 stages: smp builds
# (and saves) the deeper stages anyway.
# smp's DPT builds only on tu- ViTs (its 2D parity, checkpoints included, is tests/test_dpt.py).
SHALLOW = [c.__name__ for c in _CLASSES if hasattr(smp, c.__name__) and _default_depth(c) < 5 and c.__name__ != "DPT"]
ENCODERS = ["resnet34", "efficientnet-b0", "mit_b0"]


def test_the_shallow_list_is_not_empty():
    assert "PSPNet" in SHALLOW


def _randomized(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor) * 0.05 + (1.0 if tensor.ndim == 1 else 0.0))
    return model.eval()


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("arch", SHALLOW)
def test_default_smp_checkpoint_loads_strictly(arch, encoder):
    reference = _randomized(getattr(smp, arch)(encoder, encoder_weights=None, classes=2))
    model = getattr(smp3d, arch)(encoder, classes=2, spatial_dims=2).eval()
    extra = set(reference.state_dict()) - set(model.state_dict())
    assert extra and all(k.startswith("encoder.") for k in extra)  # smp's unused deeper stages
    with pytest.warns(UserWarning, match=r"Ignored \d+ weight\(s\) of encoder stages") as record:
        result = model.load_state_dict(reference.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert sum("Ignored" in str(w.message) for w in record) == 1  # said once
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", SHALLOW)
def test_default_smp_folder_loads_with_from_pretrained(arch, tmp_path):
    reference = _randomized(getattr(smp, arch)("resnet18", encoder_weights=None, classes=3))
    reference.save_pretrained(tmp_path / "smp")
    with pytest.warns(UserWarning, match="segmentation_models_pytorch keeps those stages unused"):
        model = smp3d.from_pretrained(tmp_path / "smp")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)


def test_only_the_unused_stage_keys_are_forgiven():
    reference = smp.PSPNet("resnet18", encoder_weights=None)
    model = smp3d.PSPNet("resnet18", spatial_dims=2)
    state = reference.state_dict()
    state["encoder.layer9.weight"] = torch.zeros(1)  # not a stage of this encoder
    with pytest.warns(UserWarning, match="Ignored"), pytest.raises(RuntimeError, match=r"encoder\.layer9\.weight"):
        model.load_state_dict(state)
    del state["encoder.layer9.weight"]
    del state["decoder.conv.0.weight"]
    with pytest.warns(UserWarning, match="Ignored"), pytest.raises(RuntimeError, match=r"decoder\.conv\.0\.weight"):
        model.load_state_dict(state)


# -- from_pretrained(strict=False) ---------------------------------------------------------------------------


def test_from_pretrained_non_strict_loads_what_fits(tmp_path):
    saved = _randomized(smp3d.Unet("resnet18", encoder_depth=3, decoder_channels=(16, 8, 8), classes=2))
    saved.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match=r"(?s)nothing was loaded.*segmentation_head\.0\.weight.*strict=False"):
        smp3d.from_pretrained(tmp_path / "m", classes=5)
    with pytest.warns(UserWarning, match=r"(?s)strict=False.*segmentation_head\.0\.weight.*segmentation_head\.0\.bias"):
        model = smp3d.from_pretrained(tmp_path / "m", classes=5, strict=False)
    assert model.segmentation_head[0].weight.shape[0] == 5
    for key, value in saved.state_dict().items():
        if not key.startswith("segmentation_head"):
            assert torch.equal(model.state_dict()[key], value), key
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = smp3d.Unet.from_pretrained(tmp_path / "m", strict=False)  # everything fits: no warning
    assert torch.equal(same.segmentation_head[0].weight, saved.segmentation_head[0].weight)


# -- losses: smp's shapes without spatial axes -----------------------------------------------------------


def _cases():
    n, c = 6, 4
    g = torch.Generator().manual_seed(0)
    yield "multiclass", "(N,C)-(N,)", torch.randn(n, c, generator=g), torch.randint(0, c, (n,), generator=g)
    yield "multilabel", "(N,C)-(N,C)", torch.randn(n, c, generator=g), torch.randint(0, 2, (n, c), generator=g).float()
    yield "binary", "(N,1)-(N,)", torch.randn(n, 1, generator=g), torch.randint(0, 2, (n,), generator=g).float()
    yield "binary", "(N,1)-(N,1)", torch.randn(n, 1, generator=g), torch.randint(0, 2, (n, 1), generator=g).float()
    yield "binary", "(N,)-(N,)", torch.randn(n, generator=g), torch.randint(0, 2, (n,), generator=g).float()
    yield "binary", "(N,H)-(N,H)", torch.randn(2, 5, generator=g), torch.randint(0, 2, (2, 5), generator=g).float()
    yield (
        "binary",
        "(N,H,W)-(N,H,W)",
        torch.randn(2, 5, 7, generator=g),
        torch.randint(0, 2, (2, 5, 7), generator=g).float(),
    )


# (loss, modes it takes, extra arguments); shapes smp itself refuses are left out below.
LOSSES = [
    ("DiceLoss", ("binary", "multiclass", "multilabel"), {}),
    ("JaccardLoss", ("binary", "multiclass", "multilabel"), {}),
    ("TverskyLoss", ("binary", "multiclass", "multilabel"), {}),
    ("FocalLoss", ("binary", "multiclass", "multilabel"), {}),
    ("LovaszLoss", ("binary", "multiclass", "multilabel"), {}),
    ("MCCLoss", ("binary",), {}),
    ("SoftBCEWithLogitsLoss", ("binary", "multilabel"), {}),
    ("SoftCrossEntropyLoss", ("multiclass",), {"smooth_factor": 0.1}),
]
SMP_REFUSES = {("DiceLoss", "(N,)-(N,)"), ("JaccardLoss", "(N,)-(N,)"), ("TverskyLoss", "(N,)-(N,)")}
SMP_REFUSES |= {("SoftBCEWithLogitsLoss", "(N,1)-(N,)")}
PARITY = [
    pytest.param(name, mode, shape, pred, target, kwargs, id=f"{name}-{mode}-{shape}")
    for mode, shape, pred, target in _cases()
    for name, modes, kwargs in LOSSES
    if mode in modes and (name, shape) not in SMP_REFUSES
]


@pytest.mark.parametrize(("name", "mode", "shape", "pred", "target", "kwargs"), PARITY)
def test_loss_accepts_smp_shapes_with_smp_values(name, mode, shape, pred, target, kwargs):
    if name == "MCCLoss":
        pred = pred.sigmoid()  # smp's MCC takes probabilities
    takes_mode = "mode" in inspect.signature(getattr(smp.losses, name).__init__).parameters
    args = (mode,) if takes_mode else ()
    expected = getattr(smp.losses, name)(*args, **kwargs)(pred.clone(), target.clone())
    got = getattr(losses, name)(*args, **kwargs)(pred.clone(), target.clone())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_loss_shapes_smp_refuses_still_name_the_problem():
    with pytest.raises(ValueError, match=r"multiclass target must be \(B, \*spatial\)"):
        losses.DiceLoss("multiclass")(torch.randn(6, 4), torch.randint(0, 4, (5,)))
    with pytest.raises(ValueError, match="one-channel prediction"):
        losses.DiceLoss("binary")(torch.randn(6, 4), torch.randint(0, 2, (6,)).float())


# -- preprocessing parameters of pretrained encoders -------------------------------------------------------


def test_preprocessing_params_come_from_the_weight_metadata():
    params = smp3d.get_preprocessing_params("resnet34")
    assert params == {
        "input_space": "RGB",
        "input_range": [0.0, 1.0],
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    assert smp3d.get_preprocessing_params("efficientnet-b0", "advprop")["mean"] == [0.5, 0.5, 0.5]
    assert smp3d.get_preprocessing_params("dpn68")["mean"] == pytest.approx([124 / 255, 117 / 255, 104 / 255])
    with pytest.raises(ValueError, match=r"no pretrained tag 'nope' \(tags: imagenet"):
        smp3d.get_preprocessing_params("resnet34", "nope")
    for name in smp3d.list_encoders():  # every pretrained tag of every encoder has its parameters
        for tag in smp3d.get_encoder_spec(name).weights:
            params = smp3d.get_preprocessing_params(name, tag)
            assert len(params["mean"]) == len(params["std"]) == 3 and min(params["std"]) > 0


def test_preprocess_input_matches_smp():
    from segmentation_models_pytorch.encoders._preprocessing import preprocess_input as smp_preprocess

    image = torch.randint(0, 256, (2, 8, 8, 3)).double().numpy()
    params = {"input_space": "BGR", "input_range": [0, 1], "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.6, 0.7]}
    expected = smp_preprocess(image.copy(), **params)
    got = smp3d.preprocess_input(image.copy(), **params)
    assert abs(got - expected).max() < 1e-12
    channels_first = torch.from_numpy(image.copy()).movedim(-1, 1)
    tensor = smp3d.preprocess_input(channels_first, channel_axis=1, **params)
    assert abs(tensor.movedim(1, -1).numpy() - expected).max() < 1e-12
    fn = smp3d.get_preprocessing_fn("resnet34")
    reference = smp_preprocess(image.copy(), **smp3d.get_preprocessing_params("resnet34"))
    assert abs(fn(image.copy()) - reference).max() < 1e-12
