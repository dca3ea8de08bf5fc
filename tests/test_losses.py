"""smp3d.losses: hand-computed values, equality with smp 0.6.0 in 2D and flattened 3D, gradients, bf16, errors."""

from __future__ import annotations

import math
import re

import pytest
import segmentation_models_pytorch.losses as smp_losses
import torch
import torch.nn.functional as F

import smp3d.losses as losses
from smp3d.losses import BINARY_MODE, MULTICLASS_MODE, MULTILABEL_MODE

MODES = (BINARY_MODE, MULTICLASS_MODE, MULTILABEL_MODE)
# void label per mode: outside the classes for index targets, outside [0, 1] for dense ones
IGNORE = {BINARY_MODE: -1, MULTICLASS_MODE: 255, MULTILABEL_MODE: -1}
SPATIAL = {"2d": (5, 6), "3d": (4, 3, 5)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny: intra-op threads only add wake-up latency (10+ ms a call on a busy host)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_inputs(
    mode: str,
    spatial: tuple[int, ...],
    ignore_index: int | None = None,
    channels: int = 3,
    batch: int = 2,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    channels = 1 if mode == BINARY_MODE else channels
    pred = 2.0 * torch.randn(batch, channels, *spatial, dtype=dtype)
    if mode == MULTICLASS_MODE:
        target = torch.randint(0, channels, (batch, *spatial))
    else:
        target = (torch.rand(batch, channels, *spatial) > 0.5).to(dtype)
    if ignore_index is not None:
        target[torch.rand(target.shape) < 0.25] = ignore_index
    return pred, target


def as_2d(pred: torch.Tensor, target: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """smp's losses flatten the spatial axes: fold every axis after H into W to feed it an N-D case."""
    batch, channels, height = pred.shape[:3]
    pred = pred.reshape(batch, channels, height, -1)
    if mode == MULTICLASS_MODE:
        return pred, target.reshape(batch, height, -1)
    return pred, target.reshape(batch, target.shape[1], height, -1)


def _smp_cases() -> list[tuple[str, dict]]:
    cases: list[tuple[str, dict]] = []
    for mode in MODES:
        for ignore_index in (None, IGNORE[mode]):
            common = {"mode": mode, "ignore_index": ignore_index}
            cases += [
                ("DiceLoss", common),
                ("JaccardLoss", common),
                ("TverskyLoss", {**common, "alpha": 0.3, "beta": 0.7, "gamma": 1.5}),
                ("LovaszLoss", common),
                ("LovaszLoss", {**common, "per_image": True}),
            ]
            if not (mode == MULTILABEL_MODE and ignore_index is not None):  # smp's multilabel focal fails on it
                cases.append(("FocalLoss", common))
        cases += [
            ("DiceLoss", {"mode": mode, "log_loss": True, "smooth": 1.0, "from_logits": False}),
            ("JaccardLoss", {"mode": mode, "smooth": 0.5, "eps": 1e-3}),
            ("FocalLoss", {"mode": mode, "alpha": 0.25, "gamma": 1.5, "normalized": True}),
            ("FocalLoss", {"mode": mode, "reduced_threshold": 0.5, "reduction": "sum"}),
            (
                "FocalLoss",
                {"mode": mode, "from_logits": False, "ignore_index": IGNORE[mode] if mode != "multilabel" else None},
            ),
        ]
    for mode in (MULTICLASS_MODE, MULTILABEL_MODE):
        cases += [
            ("DiceLoss", {"mode": mode, "classes": [0, 2], "class_weights": [1.0, 2.0, 3.0]}),
            ("JaccardLoss", {"mode": mode, "class_weights": [0.5, 1.0, 2.0], "log_loss": True}),
            ("TverskyLoss", {"mode": mode, "classes": [1], "alpha": 0.7, "beta": 0.3}),
            ("FocalLoss", {"mode": mode, "class_weights": [1.0, 0.0, 4.0], "alpha": 0.6}),
        ]
    cases += [
        ("DiceLoss", {"mode": MULTICLASS_MODE, "ignore_index": 0}),  # an ignored label that is also a class
        ("TverskyLoss", {"mode": MULTICLASS_MODE, "ignore_index": 1, "alpha": 0.2, "beta": 0.8}),
        ("SoftBCEWithLogitsLoss", {"mode": MULTILABEL_MODE, "ignore_index": -1, "smooth_factor": 0.1}),
        ("SoftBCEWithLogitsLoss", {"mode": BINARY_MODE, "reduction": "sum", "ignore_index": -1}),
        ("SoftBCEWithLogitsLoss", {"mode": MULTILABEL_MODE, "ignore_index": None}),
        ("SoftCrossEntropyLoss", {"mode": MULTICLASS_MODE, "smooth_factor": 0.1, "ignore_index": 255}),
        ("SoftCrossEntropyLoss", {"mode": MULTICLASS_MODE, "smooth_factor": 0.2, "reduction": "sum"}),
        ("MCCLoss", {"mode": BINARY_MODE, "from_logits": False}),
    ]
    return cases


def _case_id(case: tuple[str, dict]) -> str:
    name, kwargs = case
    return name + "-" + "-".join(f"{k}={v}" for k, v in kwargs.items())


def _build(module, name: str, kwargs: dict) -> torch.nn.Module:
    kwargs = {k: v for k, v in kwargs.items() if not (k == "mode" and name.startswith(("Soft", "MCC")))}
    if name == "MCCLoss":
        kwargs = {k: v for k, v in kwargs.items() if k != "from_logits"}
    return getattr(module, name)(**kwargs)


@pytest.mark.parametrize("case", _smp_cases(), ids=_case_id)
@pytest.mark.parametrize("dims", list(SPATIAL))
def test_equals_smp(case: tuple[str, dict], dims: str) -> None:
    name, kwargs = case
    mode = kwargs["mode"]
    ignore_index = kwargs.get("ignore_index", -100 if name.startswith("Soft") else None)
    # the target carries void labels only where the loss ignores them
    # smp's Lovasz mixes float32 into its dot product: compare it in float32
    dtype = torch.float32 if name == "LovaszLoss" else torch.float64
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {}
    pred, target = make_inputs(
        mode, SPATIAL[dims], ignore_index if ignore_index not in (0, 1, -100) else None, dtype=dtype
    )
    if kwargs.get("from_logits") is False:
        pred = pred.softmax(1) if mode == MULTICLASS_MODE else pred.sigmoid()
    ours = _build(losses, name, kwargs)
    reference = _build(smp_losses, name, kwargs)
    pred_ours = pred.clone().requires_grad_()
    pred_smp = pred.clone().requires_grad_()
    value = ours(pred_ours, target)
    expected = reference(*as_2d(pred_smp, target, mode))
    torch.testing.assert_close(value, expected, **tolerance)
    value.backward()
    expected.backward()
    torch.testing.assert_close(pred_ours.grad, pred_smp.grad, **tolerance)


@pytest.mark.parametrize("spatial", [(7,), (2, 3, 2, 3)], ids=["1d", "4d"])
@pytest.mark.parametrize("name", ["DiceLoss", "FocalLoss", "LovaszLoss"])
def test_any_number_of_spatial_axes(spatial: tuple[int, ...], name: str) -> None:
    pred, target = make_inputs(MULTICLASS_MODE, spatial, 255, dtype=torch.float32)
    value = getattr(losses, name)(MULTICLASS_MODE, ignore_index=255)(pred, target)
    batch, channels = pred.shape[:2]
    expected = getattr(smp_losses, name)(MULTICLASS_MODE, ignore_index=255)(
        pred.reshape(batch, channels, 1, -1), target.reshape(batch, 1, -1)
    )
    torch.testing.assert_close(value, expected)


def test_depth_one_volume_equals_image() -> None:
    pred, target = make_inputs(MULTILABEL_MODE, (5, 6))
    for loss in (losses.DiceLoss(MULTILABEL_MODE), losses.GeneralizedDiceLoss(MULTILABEL_MODE)):
        torch.testing.assert_close(loss(pred.unsqueeze(-1), target.unsqueeze(-1)), loss(pred, target))


def test_multiclass_target_with_channel_axis() -> None:
    pred, target = make_inputs(MULTICLASS_MODE, (3, 4, 2), 255)
    for loss in (
        losses.DiceLoss(MULTICLASS_MODE, ignore_index=255),
        losses.GeneralizedDiceLoss(MULTICLASS_MODE, ignore_index=255),
        losses.LovaszLoss(MULTICLASS_MODE, ignore_index=255),
        losses.SoftCrossEntropyLoss(ignore_index=255),
        losses.WeightedCrossEntropyLoss(ignore_index=255),
    ):
        torch.testing.assert_close(loss(pred, target.unsqueeze(1)), loss(pred, target))


def test_binary_target_without_channel_axis() -> None:
    pred, target = make_inputs(BINARY_MODE, (3, 4, 2), -1)
    for loss in (losses.DiceLoss(BINARY_MODE, ignore_index=-1), losses.FocalLoss(BINARY_MODE, ignore_index=-1)):
        torch.testing.assert_close(loss(pred, target[:, 0]), loss(pred, target))


# ---------------------------------------------------------------- hand-computed values on a 2x2x2 volume

# binary probabilities and target, (B=1, C=1, 2, 2, 2): TP = 1 + .5 + 1 = 2.5, sum p = 3.5, sum t = 3
PROBABILITIES = torch.tensor([1.0, 0.5, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]).reshape(1, 1, 2, 2, 2)
TRUTH = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]).reshape(1, 1, 2, 2, 2)


def test_dice_jaccard_tversky_by_hand() -> None:
    # FP = 3.5 - 2.5 = 1, FN = 3 - 2.5 = 0.5
    dice = losses.DiceLoss(BINARY_MODE, from_logits=False)(PROBABILITIES, TRUTH)
    assert dice.item() == pytest.approx(1 - 2 * 2.5 / (3.5 + 3))
    jaccard = losses.JaccardLoss(BINARY_MODE, from_logits=False)(PROBABILITIES, TRUTH)
    assert jaccard.item() == pytest.approx(1 - 2.5 / (2.5 + 1 + 0.5))
    tversky = losses.TverskyLoss(BINARY_MODE, from_logits=False, alpha=0.3, beta=0.7, gamma=2.0)
    assert tversky(PROBABILITIES, TRUTH).item() == pytest.approx((1 - 2.5 / (2.5 + 0.3 * 1 + 0.7 * 0.5)) ** 2)
    log_dice = losses.DiceLoss(BINARY_MODE, from_logits=False, log_loss=True, smooth=1.0)
    # smp's smoothing enters the Tversky form once: (TP + s) / (TP + FP / 2 + FN / 2 + s)
    assert log_dice(PROBABILITIES, TRUTH).item() == pytest.approx(-math.log((2.5 + 1) / (2.5 + 0.5 + 0.25 + 1)))


def test_dice_ignore_index_by_hand() -> None:
    target = TRUTH.clone()
    target[0, 0, 1, 0, 1] = 255  # the voxel with p = 1, t = 0: its false positive disappears
    dice = losses.DiceLoss(BINARY_MODE, from_logits=False, ignore_index=255)(PROBABILITIES, target)
    assert dice.item() == pytest.approx(1 - 2 * 2.5 / (2.5 + 3))


def test_multiclass_dice_by_hand() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0]).reshape(1, 2, 2, 2)
    predicted = torch.tensor([0, 1, 1, 1, 2, 2, 0, 0])
    one_hot = F.one_hot(predicted, 4).T.reshape(1, 4, 2, 2, 2).double()
    loss = losses.DiceLoss(MULTICLASS_MODE, from_logits=False)(one_hot, labels)
    # class 0: TP 2, |p| 3, |t| 3; class 1: TP 2, 3, 2; class 2: TP 2, 2, 3; class 3 absent: contributes 0
    per_class = [1 - 4 / 6, 1 - 4 / 5, 1 - 4 / 5, 0.0]
    assert loss.item() == pytest.approx(sum(per_class) / 4)
    only = losses.DiceLoss(MULTICLASS_MODE, from_logits=False, classes=[1, 2], class_weights=[1, 1, 3, 1])
    assert only(one_hot, labels).item() == pytest.approx((per_class[1] + 3 * per_class[2]) / 4)


def test_focal_by_hand() -> None:
    logits = torch.zeros(1, 1, 2, 2, 2)  # p = 0.5 everywhere: BCE = log 2, (1 - p_t)^2 = 1/4
    target = TRUTH
    assert losses.FocalLoss(BINARY_MODE)(logits, target).item() == pytest.approx(0.25 * math.log(2))
    alpha = losses.FocalLoss(BINARY_MODE, alpha=0.25, reduction="sum")(logits, target)
    assert alpha.item() == pytest.approx(0.25 * math.log(2) * (3 * 0.25 + 5 * 0.75))
    none = losses.FocalLoss(BINARY_MODE, reduction="none", ignore_index=-1)(logits, torch.where(target > 0, -1.0, 0.0))
    assert none.shape == (1, 2, 2, 2)
    torch.testing.assert_close(none, torch.where(TRUTH[:, 0] > 0, 0.0, 0.25 * math.log(2)))


def test_focal_none_matches_smp_kept_positions() -> None:
    pred, target = make_inputs(BINARY_MODE, (3, 4, 2), -1)
    ours = losses.FocalLoss(BINARY_MODE, ignore_index=-1, reduction="none")(pred, target)
    reference = smp_losses.FocalLoss(BINARY_MODE, ignore_index=-1, reduction="none")(pred, target)
    kept = target[:, 0] != -1
    torch.testing.assert_close(ours[kept], reference)
    assert (ours[~kept] == 0).all()


def test_focal_none_averages_to_mean() -> None:
    pred, target = make_inputs(MULTICLASS_MODE, (3, 2, 2))
    kwargs = {"mode": MULTICLASS_MODE, "class_weights": [1.0, 3.0, 0.5], "alpha": 0.4}
    none = losses.FocalLoss(reduction="none", **kwargs)(pred, target)
    assert none.shape == target.shape
    torch.testing.assert_close(none.mean(), losses.FocalLoss(**kwargs)(pred, target))


def test_focal_all_ignored_is_zero() -> None:
    pred = torch.randn(1, 3, 2, 2, 2, requires_grad=True)
    loss = losses.FocalLoss(MULTICLASS_MODE, ignore_index=255)(pred, torch.full((1, 2, 2, 2), 255))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(pred.grad).all()


def test_lovasz_hinge_by_hand() -> None:
    # errors 1 - s * logit = (-1, 2): sorted (2, -1), Jaccard increments (0.5, 0.5) -> 2 * 0.5
    logits = torch.tensor([2.0, -1.0]).reshape(1, 1, 1, 2)
    target = torch.ones(1, 1, 1, 2)
    assert losses.LovaszLoss(BINARY_MODE)(logits, target).item() == pytest.approx(1.0)
    # one image entirely ignored: per_image averages it in as 0, like smp
    pair = torch.cat([logits, logits]), torch.cat([target, torch.full_like(target, 255)])
    assert losses.LovaszLoss(BINARY_MODE, per_image=True, ignore_index=255)(*pair).item() == pytest.approx(0.5)


def test_mcc_by_hand() -> None:
    pred = PROBABILITIES.clone()
    pred[0, 0, 0, 0, 1] = 0.0  # hard prediction: TP 2, FP 1, FN 1, TN 4
    value = losses.MCCLoss(eps=0.0)(pred, TRUTH).item()
    assert value == pytest.approx(1 - (2 * 4 - 1 * 1) / math.sqrt(3 * 3 * 5 * 5))
    logits = torch.logit(pred.clamp(0.1, 0.9))
    expected = losses.MCCLoss()(logits.sigmoid(), TRUTH)
    torch.testing.assert_close(losses.MCCLoss(from_logits=True)(logits, TRUTH), expected)


def _gdl_by_hand(probabilities: torch.Tensor, one_hot: torch.Tensor, smooth: float = 0.0) -> float:
    """Sudre et al.'s formula, one class at a time, with the absent-class rule written out."""
    volumes = [float(one_hot[:, c].sum()) for c in range(one_hot.shape[1])]
    present = [1.0 / v**2 for v in volumes if v > 0]
    weights = [1.0 / v**2 if v > 0 else (max(present) if present else 1.0) for v in volumes]
    numerator, denominator = smooth, smooth
    for c, w in enumerate(weights):
        p, t = probabilities[:, c], one_hot[:, c]
        numerator += 2 * w * float((p * t).sum())
        denominator += w * float((p + t).sum())
    return 1 - numerator / denominator


@pytest.mark.parametrize("absent", [False, True])
def test_generalized_dice_by_hand(absent: bool) -> None:
    logits = torch.randn(2, 3, 2, 2, 3, dtype=torch.float64)
    labels = torch.randint(0, 3 if not absent else 2, (2, 2, 2, 3))
    labels[0, 0, 0, 0], labels[0, 0, 0, 1] = 0, 1
    one_hot = F.one_hot(labels, 3).movedim(-1, 1).double()
    value = losses.GeneralizedDiceLoss(MULTICLASS_MODE, smooth=0.5)(logits, labels)
    assert value.item() == pytest.approx(_gdl_by_hand(logits.softmax(1), one_hot, smooth=0.5))


def test_generalized_dice_binary_adds_background_and_ignores() -> None:
    logits = torch.randn(2, 1, 3, 2, 2, dtype=torch.float64)
    target = (torch.rand(2, 1, 3, 2, 2) > 0.5).double()
    target[0, 0, 0] = 7  # ignored slab
    keep = (target != 7).double()
    p = torch.cat([1 - logits.sigmoid(), logits.sigmoid()], 1) * keep
    t = torch.cat([1 - target, target], 1) * keep
    value = losses.GeneralizedDiceLoss(BINARY_MODE, ignore_index=7)(logits, target)
    assert value.item() == pytest.approx(_gdl_by_hand(p, t))


def test_generalized_dice_without_any_class_uses_unit_weights() -> None:
    probabilities = torch.rand(1, 2, 2, 2, 2, dtype=torch.float64)
    value = losses.GeneralizedDiceLoss(MULTILABEL_MODE, from_logits=False)(
        probabilities, torch.zeros_like(probabilities)
    )
    assert value.item() == pytest.approx(1.0)
    assert losses.generalized_dice_weights(torch.tensor([2.0, 0.0, 4.0])).tolist() == [0.25, 0.25, 0.0625]


@pytest.mark.parametrize("absent", [False, True])
def test_generalized_dice_equals_monai(absent: bool) -> None:
    monai_losses = pytest.importorskip("monai.losses")
    logits = torch.randn(2, 4, 3, 4, 2, dtype=torch.float64)
    labels = torch.randint(0, 3 if absent else 4, (2, 3, 4, 2))
    ours = losses.GeneralizedDiceLoss(MULTICLASS_MODE, smooth=1e-5)(logits, labels)
    reference = monai_losses.GeneralizedDiceLoss(to_onehot_y=True, softmax=True, batch=True)(logits, labels[:, None])
    torch.testing.assert_close(ours, reference)


def _weighted_ce_by_hand(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> float:
    """pytorch-3dunet's WCE: w_c = sum(1 - p_c) / sum(p_c) over every voxel, then the w-weighted mean NLL."""
    probabilities = logits.softmax(1).movedim(1, -1).reshape(-1, logits.shape[1])
    weights = [float((1 - probabilities[:, c]).sum() / probabilities[:, c].sum()) for c in range(logits.shape[1])]
    numerator = denominator = 0.0
    for p, y in zip(probabilities, labels.reshape(-1).tolist(), strict=True):
        if y != ignore_index:
            numerator += weights[y] * -math.log(float(p[y]))
            denominator += weights[y]
    return numerator / denominator


def test_weighted_cross_entropy_by_hand() -> None:
    logits = torch.randn(2, 3, 2, 3, 2, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 2, 3, 2))
    labels[0, 0] = -1
    value = losses.WeightedCrossEntropyLoss()(logits, labels)
    assert value.item() == pytest.approx(_weighted_ce_by_hand(logits, labels, -1))
    weights = losses.WeightedCrossEntropyLoss.class_weights(logits)
    p = logits.softmax(1)
    torch.testing.assert_close(weights, (1 - p).sum((0, 2, 3, 4)) / p.sum((0, 2, 3, 4)))


def test_weighted_cross_entropy_weights_carry_no_gradient() -> None:
    logits = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 2, (1, 3, 3))
    losses.WeightedCrossEntropyLoss(ignore_index=None)(logits, labels).backward()
    weights = losses.WeightedCrossEntropyLoss.class_weights(logits)
    expected = torch.autograd.grad(F.cross_entropy(logits, labels, weight=weights), logits)[0]
    torch.testing.assert_close(logits.grad, expected)


def test_soft_cross_entropy_without_smoothing_is_cross_entropy() -> None:
    pred, target = make_inputs(MULTICLASS_MODE, (3, 2, 2))
    torch.testing.assert_close(losses.SoftCrossEntropyLoss()(pred, target), F.cross_entropy(pred, target))


def test_soft_bce_per_channel_pos_weight() -> None:
    pred, target = make_inputs(MULTILABEL_MODE, (3, 2, 2))
    pos_weight = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    value = losses.SoftBCEWithLogitsLoss(pos_weight=pos_weight)(pred, target)
    expected = F.binary_cross_entropy_with_logits(pred, target, pos_weight=pos_weight.view(3, 1, 1, 1))
    torch.testing.assert_close(value, expected)


# ---------------------------------------------------------------- gradients and numerical stability


def _all_losses(mode: str) -> list[torch.nn.Module]:
    built = [
        losses.DiceLoss(mode),
        losses.JaccardLoss(mode),
        losses.TverskyLoss(mode, alpha=0.3, beta=0.7, gamma=1.5),
        losses.FocalLoss(mode),
        losses.LovaszLoss(mode),
        losses.GeneralizedDiceLoss(mode),
    ]
    if mode == MULTICLASS_MODE:
        built += [losses.SoftCrossEntropyLoss(smooth_factor=0.1), losses.WeightedCrossEntropyLoss()]
    else:
        built += [losses.SoftBCEWithLogitsLoss(smooth_factor=0.1)]
    if mode == BINARY_MODE:
        built += [losses.MCCLoss(from_logits=True)]
    return built


@pytest.mark.parametrize("mode", MODES)
def test_gradients_finite_on_extreme_logits(mode: str) -> None:
    pred, target = make_inputs(mode, (3, 2, 2), dtype=torch.float32)
    pred = (pred.sign() * 80.0).requires_grad_()
    for loss in _all_losses(mode):
        pred.grad = None
        value = loss(pred, target)
        value.backward()
        assert torch.isfinite(value), type(loss).__name__
        assert torch.isfinite(pred.grad).all(), type(loss).__name__


@pytest.mark.parametrize(
    "build",
    [
        lambda m, i: losses.DiceLoss(m, smooth=0.1, ignore_index=i),
        lambda m, i: losses.JaccardLoss(m, log_loss=True, ignore_index=i),
        lambda m, i: losses.TverskyLoss(m, alpha=0.3, beta=0.7, gamma=1.5, ignore_index=i),
        lambda m, i: losses.FocalLoss(m, alpha=0.3, normalized=True, ignore_index=i),
        lambda m, i: losses.GeneralizedDiceLoss(m, smooth=0.1, ignore_index=i),
        lambda m, i: losses.LovaszLoss(m, per_image=True, ignore_index=i),
    ],
    ids=["dice", "jaccard", "tversky", "focal", "gdl", "lovasz"],
)
@pytest.mark.parametrize("mode", MODES)
def test_gradcheck(build, mode: str) -> None:
    pred, target = make_inputs(mode, (2, 2, 1), IGNORE[mode], channels=2, batch=2)
    pred.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: build(mode, IGNORE[mode])(x, target), (pred,))


@pytest.mark.parametrize("mode", MODES)
def test_bf16_autocast_is_stable(mode: str) -> None:
    pred, target = make_inputs(mode, (4, 4, 3), dtype=torch.float32)
    half = pred.to(torch.bfloat16).requires_grad_()
    for loss in _all_losses(mode):
        name = type(loss).__name__
        with torch.autocast("cpu", dtype=torch.bfloat16):
            value = loss(half, target)
        assert value.dtype == torch.float32, name
        assert torch.isfinite(value), name
        # computed in float32 from the rounded logits, and close to the loss of the unrounded ones
        torch.testing.assert_close(value, loss(half.detach().float(), target), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(value, loss(pred, target), rtol=3e-2, atol=3e-3)
        half.grad = None
        value.backward()
        assert torch.isfinite(half.grad.float()).all(), name


def test_bf16_saturated_logits_stay_finite() -> None:
    logits = torch.full((1, 1, 2, 2, 2), 60.0, dtype=torch.bfloat16, requires_grad=True)
    target = torch.zeros(1, 1, 2, 2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = losses.FocalLoss(BINARY_MODE)(logits, target) + losses.DiceLoss(BINARY_MODE, log_loss=True)(
            logits, TRUTH
        )
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad.float()).all()


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: losses.DiceLoss("binray"), ValueError, "unknown mode 'binray'; expected one of 'binary'"),
        (lambda: losses.GeneralizedDiceLoss("softmax"), ValueError, "unknown mode 'softmax'"),
        (lambda: losses.LovaszLoss("x"), ValueError, "unknown mode 'x'"),
        (lambda: losses.FocalLoss("binary", reduction="avg"), ValueError, "unknown reduction 'avg'"),
        (lambda: losses.SoftCrossEntropyLoss(reduction="batchwise_mean"), ValueError, "unknown reduction"),
        (lambda: losses.WeightedCrossEntropyLoss(reduction="max"), ValueError, "unknown reduction 'max'"),
        (lambda: losses.DiceLoss("binary", classes=[0]), ValueError, "not supported with mode='binary'"),
        (lambda: losses.JaccardLoss("binary", class_weights=[1.0]), ValueError, "not supported with mode='binary'"),
        (lambda: losses.FocalLoss("binary", class_weights=[1.0]), ValueError, "not supported with mode='binary'"),
        (lambda: losses.DiceLoss("multiclass", classes=[]), ValueError, "at least one class index"),
        (lambda: losses.DiceLoss("multiclass", class_weights=[1, -1]), ValueError, "non-negative"),
        (lambda: losses.FocalLoss("binary", alpha=1.5), ValueError, "alpha must lie in [0, 1]"),
        (
            lambda: losses.FocalLoss("binary", reduced_threshold=0.0),
            ValueError,
            "reduced_threshold must lie in (0, inf]",
        ),
        (lambda: losses.SoftBCEWithLogitsLoss(smooth_factor=2.0), ValueError, "smooth_factor must lie in"),
        (lambda: losses.SoftCrossEntropyLoss(smooth_factor=-0.1), ValueError, "smooth_factor must lie in"),
    ],
)
def test_bad_arguments(build, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        build()


LOGITS_3 = torch.randn(2, 3, 4, 4, 2)
LABELS = torch.randint(0, 3, (2, 4, 4, 2))


@pytest.mark.parametrize(
    ("loss", "pred", "target", "error", "message"),
    [
        (losses.DiceLoss("multiclass"), [1.0], LABELS, TypeError, "prediction must be a torch.Tensor, got list"),
        (losses.DiceLoss("multiclass"), torch.randn(2, 3), LABELS, ValueError, "at least one spatial axis, got a 2D"),
        (losses.FocalLoss("multiclass"), LABELS[:, None], LABELS, TypeError, "floating-point tensor, got dtype"),
        (losses.DiceLoss("binary"), LOGITS_3, LABELS, ValueError, "expects a one-channel prediction"),
        (losses.MCCLoss(), LOGITS_3, LABELS, ValueError, "expects a one-channel prediction"),
        (
            losses.DiceLoss("multiclass"),
            LOGITS_3,
            LABELS.float(),
            TypeError,
            "multiclass target must be (B, *spatial) integer class indices, got torch.float32 tensor of shape "
            "(2, 4, 4, 2)",
        ),
        (losses.LovaszLoss("multiclass"), LOGITS_3, LABELS.bool(), TypeError, "integer class indices, got torch.bool"),
        (losses.DiceLoss("multiclass"), LOGITS_3, LABELS[:, :2], ValueError, "= (2, 4, 4, 2) integer class indices"),
        (losses.FocalLoss("multiclass"), LOGITS_3, LABELS[0], ValueError, "got shape (4, 4, 2)"),
        (losses.DiceLoss("multiclass"), LOGITS_3, LABELS + 3, ValueError, "must lie in [0, 3); found [3, 4, 5]"),
        (
            losses.JaccardLoss("multiclass", ignore_index=255),
            LOGITS_3,
            LABELS - 1,
            ValueError,
            "or equal ignore_index=255; found [-1]",
        ),
        (losses.SoftCrossEntropyLoss(), LOGITS_3, LABELS * 2, ValueError, "must lie in [0, 3)"),
        (losses.WeightedCrossEntropyLoss(), LOGITS_3, LABELS * 2, ValueError, "must lie in [0, 3)"),
        (losses.GeneralizedDiceLoss("multiclass"), LOGITS_3, "labels", TypeError, "target must be a torch.Tensor"),
        (
            losses.DiceLoss("multilabel"),
            LOGITS_3,
            LABELS,
            ValueError,
            "multilabel target must be (B, C, *spatial) matching the prediction (2, 3, 4, 4, 2), got shape",
        ),
        (
            losses.FocalLoss("binary"),
            LOGITS_3[:, :1],
            LABELS[:, None].repeat(1, 2, 1, 1, 1),
            ValueError,
            "binary target must be (B, 1, *spatial) or (B, *spatial)",
        ),
        (losses.DiceLoss("multilabel"), LOGITS_3, torch.zeros(2, 3, 4, 4, 2, dtype=torch.cfloat), TypeError, "real"),
        (losses.DiceLoss("multiclass", classes=[0, 5]), LOGITS_3, LABELS, ValueError, "`classes` [5] are out of range"),
        (
            losses.TverskyLoss("multilabel", class_weights=[1, 2]),
            LOGITS_3,
            LABELS[:, None].repeat(1, 3, 1, 1, 1),
            ValueError,
            "`class_weights` has 2 entries but the prediction has 3 channels",
        ),
        (losses.SoftBCEWithLogitsLoss(), LOGITS_3, LABELS, ValueError, "must have the prediction's shape"),
        (
            losses.SoftBCEWithLogitsLoss(pos_weight=torch.ones(2)),
            LOGITS_3,
            torch.zeros_like(LOGITS_3),
            ValueError,
            "1-D `pos_weight` holds one value per channel: expected 3 entries",
        ),
        (losses.SoftCrossEntropyLoss(dim=5), LOGITS_3, LABELS, ValueError, "dim=5 is out of range for a 5D"),
    ],
)
def test_bad_inputs(loss, pred, target, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        loss(pred, target)
