"""smp3d.metrics: hand counts, equality with smp 0.6.0 (2D, and 3D flattened), reductions, the accumulator, errors."""

from __future__ import annotations

import warnings

import pytest
import segmentation_models_pytorch.metrics as smp_metrics
import torch

from smp3d import metrics

SCORE_NAMES = [
    "fbeta_score",
    "f1_score",
    "iou_score",
    "accuracy",
    "precision",
    "recall",
    "sensitivity",
    "specificity",
    "balanced_accuracy",
    "positive_predictive_value",
    "negative_predictive_value",
    "false_negative_rate",
    "false_positive_rate",
    "false_discovery_rate",
    "false_omission_rate",
    "positive_likelihood_ratio",
    "negative_likelihood_ratio",
]
SMP_REDUCTIONS = ["micro", "macro", "weighted", "micro-imagewise", "macro-imagewise", "none", None]


def random_inputs(mode: str, spatial: tuple[int, ...], ignore_index: int | None = None, batch: int = 3):
    """Random (output, target, kwargs) for get_stats; class 2 (multilabel/multiclass) never occurs anywhere,
    so per-class scores meet 0/0."""
    if mode == "multiclass":
        classes = 4
        output = torch.randint(0, classes, (batch, *spatial))
        target = torch.randint(0, classes, (batch, *spatial))
        output[output == 2] = 0
        target[target == 2] = 1
        if ignore_index is not None:
            target[torch.rand(target.shape) < 0.2] = ignore_index
        return output, target, {"num_classes": classes, "ignore_index": ignore_index}
    channels = 1 if mode == "binary" else 3
    output = torch.rand(batch, channels, *spatial)
    target = torch.randint(0, 2, (batch, channels, *spatial))
    if mode == "multilabel":
        output[:, 2] = 0.1
        target[:, 2] = 0
    return output, target, {"threshold": 0.5, "num_classes": channels}


def flat_2d(tensor: torch.Tensor, spatial_axes: int) -> torch.Tensor:
    """Fold all spatial axes but the first into the second, for smp (which flattens them anyway)."""
    return tensor.flatten(tensor.ndim - spatial_axes + 1) if spatial_axes > 2 else tensor


# ---------------------------------------------------------------------------------------------- hand counts


def test_binary_2d_hand_counts() -> None:
    output = torch.tensor([[[[1, 0, 0], [1, 1, 0]]]])
    target = torch.tensor([[[[1, 1, 0], [0, 1, 0]]]])
    tp, fp, fn, tn = metrics.get_stats(output, target, "binary")
    assert [tp.tolist(), fp.tolist(), fn.tolist(), tn.tolist()] == [[[2]], [[1]], [[1]], [[2]]]
    assert tp.dtype == torch.long and tp.shape == (1, 1)


def test_multilabel_3d_hand_counts_with_threshold() -> None:
    # 2 channels on a 2x2x2 volume; channel 0 thresholded probabilities, channel 1 all predicted.
    output = torch.zeros(1, 2, 2, 2, 2)
    output[0, 0, 0, 0, 0] = 0.9
    output[0, 0, 1, 1, 1] = 0.6
    output[0, 0, 1, 0, 1] = 0.4  # below threshold
    output[0, 1] = 0.7
    target = torch.zeros(1, 2, 2, 2, 2, dtype=torch.long)
    target[0, 0, 0, 0, 0] = 1
    target[0, 0, 1, 0, 1] = 1
    target[0, 1, 0] = 1  # 4 voxels
    tp, fp, fn, tn = metrics.get_stats(output, target, "multilabel", threshold=0.5)
    assert tp.tolist() == [[1, 4]]
    assert fp.tolist() == [[1, 4]]
    assert fn.tolist() == [[1, 0]]
    assert tn.tolist() == [[5, 0]]


def test_multiclass_3d_hand_counts_with_ignore_index() -> None:
    # One sample, 1x2x3 volume, 3 classes, voxel (0,1,2) ignored.
    output = torch.tensor([[[[0, 1, 2], [2, 2, 0]]]])
    target = torch.tensor([[[[0, 1, 1], [2, 0, -1]]]])
    tp, fp, fn, tn = metrics.get_stats(output, target, "multiclass", num_classes=3, ignore_index=-1)
    # counted voxels (target, prediction): (0,0) (1,1) (1,2) (2,2) (0,2)
    assert tp.tolist() == [[1, 1, 1]]
    assert fp.tolist() == [[0, 0, 2]]
    assert fn.tolist() == [[1, 1, 0]]
    assert tn.tolist() == [[3, 3, 2]]
    assert (tp + fp + fn + tn).tolist() == [[5, 5, 5]]


def test_per_channel_threshold() -> None:
    output = torch.rand(2, 3, 4, 5, 2)
    target = torch.randint(0, 2, output.shape)
    thresholds = [0.2, 0.5, 0.8]
    stats = metrics.get_stats(output, target, "multilabel", threshold=thresholds)
    for channel, threshold in enumerate(thresholds):
        one = metrics.get_stats(
            output[:, channel : channel + 1], target[:, channel : channel + 1], "binary", threshold=threshold
        )
        for full, single in zip(stats, one, strict=True):
            assert torch.equal(full[:, channel : channel + 1], single)


def test_bool_and_integer_masks() -> None:
    output = torch.rand(2, 2, 3, 4) > 0.5
    target = torch.rand(2, 2, 3, 4) > 0.5
    from_bool = metrics.get_stats(output, target, "multilabel")
    from_long = metrics.get_stats(output.long(), target.to(torch.uint8), "multilabel")
    for a, b in zip(from_bool, from_long, strict=True):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------ smp 0.6.0 parity


@pytest.mark.parametrize("spatial", [(5, 6), (4, 5, 3), (2, 3, 4, 2)], ids=["2d", "3d", "4d"])
@pytest.mark.parametrize(
    ("mode", "ignore_index"),
    [("binary", None), ("multilabel", None), ("multiclass", None), ("multiclass", -1), ("multiclass", 255)],
)
def test_get_stats_equals_smp(mode: str, ignore_index: int | None, spatial: tuple[int, ...]) -> None:
    output, target, kwargs = random_inputs(mode, spatial, ignore_index)
    ours = metrics.get_stats(output, target, mode, **kwargs)
    spatial_axes = len(spatial)
    theirs = smp_metrics.get_stats(flat_2d(output, spatial_axes), flat_2d(target, spatial_axes), mode, **kwargs)
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == torch.long
        assert torch.equal(a, b)


def test_get_stats_integer_output_equals_smp() -> None:
    output = torch.randint(0, 2, (2, 3, 4, 5))
    target = torch.randint(0, 2, (2, 3, 4, 5))
    for a, b in zip(
        metrics.get_stats(output, target, "multilabel"),
        smp_metrics.get_stats(output, target, "multilabel"),
        strict=True,
    ):
        assert torch.equal(a, b)


@pytest.fixture(scope="module")
def stats_by_mode() -> dict[str, tuple[torch.Tensor, ...]]:
    torch.manual_seed(1)
    stats = {}
    for mode in ("binary", "multilabel", "multiclass"):
        output, target, kwargs = random_inputs(mode, (6, 5, 4), ignore_index=-1 if mode == "multiclass" else None)
        stats[mode] = metrics.get_stats(output, target, mode, **kwargs)
    return stats


@pytest.mark.parametrize("mode", ["binary", "multilabel", "multiclass"])
@pytest.mark.parametrize("reduction", SMP_REDUCTIONS)
@pytest.mark.parametrize("name", SCORE_NAMES)
def test_scores_equal_smp(stats_by_mode, name: str, reduction: str | None, mode: str) -> None:
    tp, fp, fn, tn = stats_by_mode[mode]
    weights = torch.arange(1.0, tp.shape[1] + 1).tolist() if reduction == "weighted" else None
    for zero_division in (1.0, 0.0, 0.25):
        ours = getattr(metrics, name)(
            tp, fp, fn, tn, reduction=reduction, class_weights=weights, zero_division=zero_division
        )
        theirs = getattr(smp_metrics, name)(
            tp, fp, fn, tn, reduction=reduction, class_weights=weights, zero_division=zero_division
        )
        assert ours.dtype == theirs.dtype
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["iou_score", "f1_score", "specificity", "positive_likelihood_ratio"])
def test_weighted_imagewise_is_a_true_weighted_mean(stats_by_mode, name: str) -> None:
    tp, fp, fn, tn = stats_by_mode["multilabel"]
    weights = [3.0, 1.0, 0.5]
    ours = getattr(metrics, name)(tp, fp, fn, tn, reduction="weighted-imagewise", class_weights=weights)
    per_class = getattr(metrics, name)(tp, fp, fn, tn, reduction="none").mean(0)
    expected = (per_class * torch.tensor(weights)).sum() / sum(weights)
    torch.testing.assert_close(ours, expected)
    # smp 0.6.0 divides the weighted sum once more by the number of classes
    theirs = getattr(smp_metrics, name)(tp, fp, fn, tn, reduction="weighted-imagewise", class_weights=weights)
    torch.testing.assert_close(ours, theirs * tp.shape[1])


def test_fbeta_beta_and_dice_alias(stats_by_mode) -> None:
    tp, fp, fn, tn = stats_by_mode["multiclass"]
    for beta in (0.5, 2.0):
        torch.testing.assert_close(
            metrics.fbeta_score(tp, fp, fn, tn, beta=beta, reduction="macro"),
            smp_metrics.fbeta_score(tp, fp, fn, tn, beta=beta, reduction="macro"),
        )
    for reduction in SMP_REDUCTIONS:
        weights = [1.0] * tp.shape[1] if reduction == "weighted" else None
        assert torch.equal(
            metrics.dice_score(tp, fp, fn, tn, reduction=reduction, class_weights=weights),
            metrics.f1_score(tp, fp, fn, tn, reduction=reduction, class_weights=weights),
        )
    assert metrics.precision is metrics.positive_predictive_value and metrics.recall is metrics.sensitivity


def test_reduction_none_shape_and_per_class_value() -> None:
    tp, fp, fn, tn = (torch.tensor([[2, 0]]), torch.tensor([[1, 0]]), torch.tensor([[1, 0]]), torch.tensor([[0, 4]]))
    iou = metrics.iou_score(tp, fp, fn, tn, reduction="none", zero_division=7.0)
    assert iou.shape == (1, 2)
    torch.testing.assert_close(iou, torch.tensor([[0.5, 7.0]]))


# ------------------------------------------------------------------------------------------------- zero_division


def test_zero_division_applies_to_micro_too() -> None:
    zeros = torch.zeros(2, 3, dtype=torch.long)
    tn = torch.full((2, 3), 5)
    for reduction in SMP_REDUCTIONS:
        weights = [1.0, 1.0, 1.0] if reduction == "weighted" else None
        score = metrics.iou_score(
            zeros, zeros, zeros, tn, reduction=reduction, class_weights=weights, zero_division=0.5
        )
        assert torch.all(score == 0.5), reduction  # smp 0.6.0 returns NaN for 'micro'


def test_zero_division_warn() -> None:
    zeros = torch.zeros(1, 2, dtype=torch.long)
    with pytest.warns(RuntimeWarning, match="zero division") as record:
        score = metrics.f1_score(zeros, zeros, zeros, zeros + 3, reduction="macro", zero_division="warn")
    assert score == 0
    assert record[0].filename == __file__  # points at the caller
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics.f1_score(zeros + 1, zeros, zeros, zeros, reduction="macro", zero_division="warn")


def test_division_of_non_zero_by_zero_stays_inf() -> None:
    # specificity 1 -> false positive rate 0 -> LR+ = sensitivity / 0
    lr = metrics.positive_likelihood_ratio(
        torch.tensor([[3]]), torch.tensor([[0]]), torch.tensor([[1]]), torch.tensor([[5]]), reduction="none"
    )
    assert torch.isinf(lr).all()


# ------------------------------------------------------------------------------------ dice_per_class, accumulator


@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize(("mode", "ignore_index"), [("binary", None), ("multilabel", None), ("multiclass", 255)])
def test_accumulator_equals_one_shot_stats(mode: str, ignore_index: int | None, spatial: tuple[int, ...]) -> None:
    batches = [random_inputs(mode, spatial, ignore_index, batch=batch) for batch in (1, 3, 2)]
    kwargs = batches[0][2]
    accumulator = metrics.SegmentationMetrics(mode, **kwargs)
    for output, target, _ in batches:
        accumulator.update(output, target)
    output = torch.cat([b[0] for b in batches])
    target = torch.cat([b[1] for b in batches])
    tp, fp, fn, tn = (value.sum(0) for value in metrics.get_stats(output, target, mode, **kwargs))
    assert torch.equal(accumulator.counts, torch.stack([tp, fp, fn, tn]))
    assert torch.equal(accumulator.tp, tp) and torch.equal(accumulator.tn, tn)
    assert accumulator.num_samples == 6

    result = accumulator.compute()
    stats = [value.unsqueeze(0) for value in (tp, fp, fn, tn)]
    nan = float("nan")
    expected = {
        "dice": metrics.f1_score(*stats, zero_division=nan)[0],
        "iou": metrics.iou_score(*stats, zero_division=nan)[0],
        "precision": metrics.precision(*stats, zero_division=nan)[0],
        "recall": metrics.recall(*stats, zero_division=nan)[0],
    }
    for name, value in expected.items():
        torch.testing.assert_close(result[name], value.double(), equal_nan=True)
        torch.testing.assert_close(result[f"mean_{name}_all"], value.double().nanmean(), equal_nan=True)
    torch.testing.assert_close(
        metrics.dice_per_class(output, target, mode, **kwargs), expected["dice"].double(), equal_nan=True
    )
    if mode != "binary":  # class 2 never occurs: NaN, left out of the mean
        assert torch.isnan(result["dice"][2]) and not torch.isnan(result["mean_dice_all"])

    accumulator.reset()
    assert accumulator.num_samples == 0 and not accumulator.counts.any()


def test_accumulator_takes_multiclass_scores_and_channel_target() -> None:
    logits = torch.randn(2, 3, 4, 5, 6)
    target = torch.randint(0, 3, (2, 1, 4, 5, 6))
    from_scores = metrics.SegmentationMetrics("multiclass", num_classes=3)
    from_scores.update(logits, target)
    from_map = metrics.SegmentationMetrics("multiclass", num_classes=3)
    from_map.update(logits.argmax(1), target[:, 0])
    assert torch.equal(from_scores.counts, from_map.counts)
    torch.testing.assert_close(
        metrics.dice_per_class(logits, target, "multiclass", num_classes=3), from_map.compute()["dice"]
    )


def test_accumulator_empty_class_is_nan_and_perfect_class_is_one() -> None:
    accumulator = metrics.SegmentationMetrics("multiclass", num_classes=3)
    labels = torch.tensor([[[0, 0, 1, 1]]])
    accumulator.update(labels, labels)
    result = accumulator.compute()
    assert result["dice"][:2].tolist() == [1.0, 1.0] and torch.isnan(result["dice"][2])
    assert result["mean_dice_all"].item() == 1.0 and result["dice"].dtype == torch.float64


def test_accumulator_defers_value_errors_to_compute() -> None:
    accumulator = metrics.SegmentationMetrics("multiclass", num_classes=2)
    accumulator.update(torch.tensor([[0, 1, 5]]), torch.tensor([[0, 1, 1]]))  # no error, no sync
    with pytest.raises(ValueError, match=r"1 value\(s\) .* outside the class values 0..1"):
        accumulator.compute()
    binary = metrics.SegmentationMetrics("binary")
    binary.update(torch.tensor([[[0, 2]]]), torch.tensor([[[0, 1]]]))
    with pytest.raises(ValueError, match="neither 0 nor 1"):
        binary.compute()


def test_accumulator_update_needs_no_host_sync_and_follows_device() -> None:
    # Meta tensors hold no data, so any host sync (.item(), int(), bool()) in update() would raise.
    accumulator = metrics.SegmentationMetrics("multiclass", num_classes=3, ignore_index=255)
    accumulator.update(
        torch.randn(2, 3, 4, 4, 4, device="meta"), torch.zeros(2, 4, 4, 4, dtype=torch.long, device="meta")
    )
    assert accumulator.counts.device.type == "meta" and accumulator.num_samples == 2
    binary = metrics.SegmentationMetrics("binary", threshold=0.5)
    binary.update(torch.rand(1, 1, 3, 3, device="meta"), torch.ones(1, 1, 3, 3, dtype=torch.long, device="meta"))
    assert binary.counts.device.type == "meta"
    accumulator.reset()
    assert accumulator.counts.device.type == "meta"
    assert metrics.SegmentationMetrics("binary").to("meta").counts.device.type == "meta"


# ------------------------------------------------------------------------------------------------------ errors

GOOD = {
    "binary": (torch.zeros(2, 1, 4, 4, dtype=torch.long), torch.zeros(2, 1, 4, 4, dtype=torch.long)),
    "multiclass": (torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 4, dtype=torch.long)),
}


@pytest.mark.parametrize(
    ("output", "target", "kwargs", "error", "match"),
    [
        (GOOD["binary"][0], GOOD["binary"][1], {"mode": "semantic"}, ValueError, "Unknown mode 'semantic'"),
        (GOOD["binary"][0], GOOD["binary"][1].float(), {"mode": "binary"}, TypeError, "integer .* labels"),
        ([0, 1], GOOD["binary"][1], {"mode": "binary"}, TypeError, "`output` must be a torch.Tensor"),
        (GOOD["binary"][0].float(), GOOD["binary"][1], {"mode": "binary"}, ValueError, "pass `threshold`"),
        (GOOD["binary"][0], GOOD["binary"][1][:, :, :3], {"mode": "binary"}, ValueError, "same shape"),
        (
            torch.zeros(2, 2, 4, 4),
            torch.zeros(2, 2, 4, 4, dtype=torch.long),
            {"mode": "binary", "threshold": 0.5},
            ValueError,
            "one channel",
        ),
        (
            torch.zeros(2, 1),
            torch.zeros(2, 1, dtype=torch.long),
            {"mode": "binary", "threshold": 0.5},
            ValueError,
            "at least one spatial axis",
        ),
        (
            GOOD["binary"][0],
            GOOD["binary"][1],
            {"mode": "binary", "ignore_index": 255},
            ValueError,
            "only supported in 'multiclass'",
        ),
        (
            GOOD["binary"][0],
            GOOD["binary"][1],
            {"mode": "binary", "num_classes": 2},
            ValueError,
            "does not match the 1 channel",
        ),
        (
            torch.zeros(1, 2, 3),
            torch.zeros(1, 2, 3, dtype=torch.long),
            {"mode": "multilabel", "threshold": [0.5]},
            ValueError,
            "1 values but `output` has 2 channel",
        ),
        (
            torch.zeros(1, 2, 3),
            torch.zeros(1, 2, 3, dtype=torch.long),
            {"mode": "multilabel", "threshold": "0.5"},
            TypeError,
            "`threshold` must be a float",
        ),
        (GOOD["multiclass"][0], GOOD["multiclass"][1], {"mode": "multiclass"}, ValueError, "needs `num_classes`"),
        (
            GOOD["multiclass"][0],
            GOOD["multiclass"][1],
            {"mode": "multiclass", "num_classes": 0},
            ValueError,
            "positive int",
        ),
        (
            GOOD["multiclass"][0].float(),
            GOOD["multiclass"][1],
            {"mode": "multiclass", "num_classes": 3},
            TypeError,
            "argmax",
        ),
        (
            torch.zeros(2, 3, 4, 4, dtype=torch.long),
            GOOD["multiclass"][1],
            {"mode": "multiclass", "num_classes": 3},
            ValueError,
            "one axis more than `target`",
        ),
        (
            GOOD["multiclass"][0],
            torch.zeros(2, 1, 4, 4, dtype=torch.long),
            {"mode": "multiclass", "num_classes": 3},
            ValueError,
            "squeeze",
        ),
        (
            GOOD["multiclass"][0],
            GOOD["multiclass"][1],
            {"mode": "multiclass", "num_classes": 3, "threshold": 0.5},
            ValueError,
            "`threshold` does not apply",
        ),
        (
            GOOD["multiclass"][0],
            GOOD["multiclass"][1],
            {"mode": "multiclass", "num_classes": 3, "ignore_index": 1},
            ValueError,
            "outside the class values 0..2",
        ),
        (
            torch.zeros(3, dtype=torch.long),
            torch.zeros(3, dtype=torch.long),
            {"mode": "multiclass", "num_classes": 3},
            ValueError,
            "at least one spatial axis",
        ),
        (
            GOOD["multiclass"][0],
            torch.full((2, 4, 4), 3),
            {"mode": "multiclass", "num_classes": 3},
            ValueError,
            r"32 value\(s\) .* outside the class values 0..2",
        ),
        (
            GOOD["multiclass"][0],
            torch.full((2, 4, 4), 3),
            {"mode": "multiclass", "num_classes": 3, "ignore_index": -1},
            ValueError,
            "0..2 or ignore_index=-1",
        ),
        (GOOD["binary"][0] + 2, GOOD["binary"][1], {"mode": "binary"}, ValueError, r"32 value\(s\) .* neither 0 nor 1"),
    ],
)
def test_get_stats_errors(output, target, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        metrics.get_stats(output, target, **kwargs)


def test_device_mismatch_error() -> None:
    with pytest.raises(ValueError, match="on cpu but `target` is on meta"):
        metrics.get_stats(GOOD["binary"][0], GOOD["binary"][1].to("meta"), "binary")


COUNTS = (torch.ones(2, 3, dtype=torch.long),) * 4


@pytest.mark.parametrize(
    ("counts", "kwargs", "error", "match"),
    [
        (COUNTS, {"reduction": "mean"}, ValueError, "Unknown reduction 'mean'"),
        (COUNTS, {"reduction": "weighted"}, ValueError, "needs `class_weights`"),
        (COUNTS, {"reduction": "weighted-imagewise"}, ValueError, "needs `class_weights`"),
        (COUNTS, {"reduction": "macro", "class_weights": [1, 1, 1]}, ValueError, "only used by the 'weighted'"),
        (COUNTS, {"reduction": "weighted", "class_weights": [1, 1]}, ValueError, "one weight per class"),
        (COUNTS, {"reduction": "weighted", "class_weights": [1, -1, 1]}, ValueError, "non-negative"),
        (COUNTS, {"reduction": "weighted", "class_weights": [0, 0, 0]}, ValueError, "not all zero"),
        (COUNTS, {"zero_division": "nan"}, ValueError, "must be a number or 'warn'"),
        ((COUNTS[0][0],) + COUNTS[1:], {}, ValueError, r"`tp` must have shape \(B, C\)"),
        (COUNTS[:3] + (torch.ones(2, 2, dtype=torch.long),), {}, ValueError, "share one shape"),
        (([[1]],) + COUNTS[1:], {}, TypeError, "`tp` must be a torch.Tensor"),
    ],
)
def test_score_errors(counts, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        metrics.iou_score(*counts, **kwargs)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("multiclass",), "'multiclass' mode needs `num_classes`"),
        (("multilabel",), "'multilabel' mode needs `num_classes`"),
        (("binary", 2), "'binary' mode has one class"),
        (("binary", None, 255), "only supported in 'multiclass'"),
        (("multiclass", 3, None, 0.5), "`threshold` does not apply"),
        (("multiclass", -3), "positive int"),
        (("dense",), "Unknown mode 'dense'"),
    ],
)
def test_accumulator_constructor_errors(args, match) -> None:
    with pytest.raises(ValueError, match=match):
        metrics.SegmentationMetrics(*args)


def test_accumulator_update_and_compute_errors() -> None:
    accumulator = metrics.SegmentationMetrics("multiclass", num_classes=3)
    with pytest.raises(RuntimeError, match="before any update"):
        accumulator.compute()
    with pytest.raises(ValueError, match="scores have 4 channels .* num_classes=3"):
        accumulator.update(torch.randn(1, 4, 5, 5), torch.zeros(1, 5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`target` must be \(B, \*spatial\) or \(B, 1, \*spatial\)"):
        accumulator.update(torch.randn(1, 3, 5, 5), torch.zeros(1, 5, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="pass `threshold`"):
        metrics.SegmentationMetrics("binary").update(torch.rand(1, 1, 3), torch.ones(1, 1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the class values"):
        metrics.dice_per_class(torch.tensor([[0, 4]]), torch.tensor([[0, 1]]), "multiclass", num_classes=2)
