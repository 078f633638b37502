"""trainer.reporting.stats: point values equal scikit-learn's; the stratified bootstrap behaves."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    log_loss,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
    top_k_accuracy_score,
)

from trainer.reporting.stats import (
    Interval,
    _stratified_indices,
    bootstrap_mean,
    most_confused_pairs,
    per_class_table,
    roc_pr_curves,
    summary_metrics,
)


def _softmax(logits: np.ndarray) -> np.ndarray:
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def _classifier(n: int, k: int, seed: int, skill: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), labels] += skill
    return labels, _softmax(logits)


def _sklearn_summary(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    k = probabilities.shape[1]
    predictions = probabilities.argmax(axis=1)
    expected = {
        "accuracy": accuracy_score(labels, predictions),
        "balanced_accuracy": balanced_accuracy_score(labels, predictions),
        "log_loss": log_loss(labels, y_proba=probabilities, labels=range(k)),
    }
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            labels, predictions, labels=range(k), average=average, zero_division=0
        )
        expected |= {f"precision_{average}": precision, f"recall_{average}": recall, f"f1_{average}": f1}
    if k > 5:
        expected["top5_accuracy"] = top_k_accuracy_score(labels, probabilities, k=5, labels=range(k))
    return expected


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_point_values_equal_scikit_learn_with_an_absent_class_and_a_never_predicted_class(dtype):
    rng = np.random.default_rng(3)
    k = 8
    labels = rng.choice([0, 1, 2, 4, 5, 6, 7], size=300)  # class 3 never occurs
    logits = rng.normal(size=(300, k))
    logits[np.arange(300), labels] += 1.0
    logits[:, 7] -= 20  # class 7 occurs but is never predicted
    probabilities = _softmax(logits).astype(dtype)
    assert (probabilities.argmax(axis=1) == 3).any()  # so balanced accuracy must drop class 3

    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true"):
        expected = _sklearn_summary(labels, probabilities)
    summary = summary_metrics(labels, probabilities, rounds=50)

    assert list(summary) == [
        "accuracy",
        "balanced_accuracy",
        "precision_macro",
        "recall_macro",
        "f1_macro",
        "precision_weighted",
        "recall_weighted",
        "f1_weighted",
        "top5_accuracy",
        "log_loss",
    ]
    for name, value in expected.items():
        assert summary[name].value == pytest.approx(value, rel=1e-6, abs=1e-12), name


def test_top5_accuracy_is_reported_only_beyond_five_classes():
    assert "top5_accuracy" not in summary_metrics(*_classifier(50, 5, seed=0), rounds=10)
    assert "top5_accuracy" in summary_metrics(*_classifier(50, 6, seed=0), rounds=10)


def test_top5_ties_are_broken_as_scikit_learn_breaks_them():
    labels = np.array([9, 8, 5, 4, 0])
    probabilities = np.full((5, 10), 0.1)  # every class tied: scikit-learn ranks higher indices first
    expected = top_k_accuracy_score(labels, probabilities, k=5, labels=range(10))
    assert expected == 0.6
    assert summary_metrics(labels, probabilities, rounds=10)["top5_accuracy"].value == expected


def test_bootstrap_interval_contains_point_estimate_and_narrows_with_more_samples():
    small = summary_metrics(*_classifier(200, 10, seed=1), rounds=500)
    large = summary_metrics(*_classifier(3200, 10, seed=1), rounds=500)
    for name, interval in {**small, **large}.items():
        assert interval.low <= interval.value <= interval.high, name
    for name in small:
        # 16 times the images: about a quarter of the width
        assert large[name].high - large[name].low < 0.5 * (small[name].high - small[name].low), name


def test_accuracy_interval_width_matches_the_binomial_standard_error():
    labels, probabilities = _classifier(1000, 10, seed=2)
    accuracy = summary_metrics(labels, probabilities, rounds=2000)["accuracy"]
    p = accuracy.value
    # stratifying removes some between-class variance, so the width is at most the binomial one
    assert (
        0.6 * 3.92 * np.sqrt(p * (1 - p) / 1000)
        < accuracy.high - accuracy.low
        < 1.1 * 3.92 * np.sqrt(p * (1 - p) / 1000)
    )


def test_summary_metrics_repeat_exactly_for_a_seed_and_differ_across_seeds():
    labels, probabilities = _classifier(300, 10, seed=4)
    first = summary_metrics(labels, probabilities, rounds=200, seed=7)
    assert summary_metrics(labels, probabilities, rounds=200, seed=7) == first
    assert summary_metrics(labels, probabilities, rounds=200, seed=8)["accuracy"] != first["accuracy"]


def test_stratified_resamples_keep_every_class_count():
    labels = np.array([2, 0, 0, 1, 2, 2, 0, 2, 1, 4])  # class 3 absent, class 4 a single image
    index = _stratified_indices(labels, 300, np.random.default_rng(0))
    assert index.shape == (300, len(labels))
    resampled = labels[index]
    np.testing.assert_array_equal(
        np.apply_along_axis(np.bincount, 1, resampled, minlength=5), np.tile(np.bincount(labels), (300, 1))
    )
    assert len(np.unique(index[:, labels[index[0]] == 0])) == 3  # class 0's draws use all its images


def test_a_rare_class_keeps_balanced_accuracy_defined_in_every_resample():
    labels, probabilities = _classifier(100, 6, seed=5)
    labels = np.where(labels == 5, 0, labels)
    labels[0] = 5  # class 5: one image
    summary = summary_metrics(labels, probabilities, rounds=300)
    assert all(np.isfinite([i.value, i.low, i.high]).all() for i in summary.values())


def test_a_perfect_classifier_has_degenerate_intervals():
    labels = np.repeat(np.arange(7), 5)
    probabilities = np.eye(7)[labels] * 0.9 + 0.1 / 7
    summary = summary_metrics(labels, probabilities, rounds=100)
    for name in ("accuracy", "balanced_accuracy", "f1_macro", "top5_accuracy"):
        assert summary[name] == Interval(1.0, 1.0, 1.0)


def test_summary_metrics_takes_well_under_a_second_for_400_images_1000_rounds():
    labels, probabilities = _classifier(400, 10, seed=6)
    summary_metrics(labels, probabilities, rounds=10)  # first call pays for imports and caches
    started = time.perf_counter()
    summary_metrics(labels, probabilities, rounds=1000)
    assert time.perf_counter() - started < 0.5


def test_summary_metrics_rejects_labels_out_of_range():
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2"):
        summary_metrics(np.array([0, 3]), np.full((2, 3), 1 / 3))


def test_interval_json_rounds_to_six_decimals():
    assert Interval(1 / 3, 0.1234567, 0.9).to_json() == {"value": 0.333333, "low": 0.123457, "high": 0.9}


def test_bootstrap_mean_centres_on_the_mean_with_a_binomial_width():
    values = np.r_[np.ones(320), np.zeros(80)]
    interval = bootstrap_mean(values, rounds=2000, seed=0)
    assert interval.value == 0.8
    assert interval.low < 0.8 < interval.high
    assert interval.high - interval.low == pytest.approx(3.92 * np.sqrt(0.8 * 0.2 / 400), rel=0.15)
    assert bootstrap_mean(values, rounds=2000, seed=0) == interval


def test_bootstrap_mean_of_constant_values_is_that_constant():
    assert bootstrap_mean(np.full(10, 0.25), rounds=50) == Interval(0.25, 0.25, 0.25)


def test_per_class_table_equals_scikit_learn_and_leaves_auroc_empty_without_positives():
    labels, probabilities = _classifier(200, 4, seed=7)
    labels[labels == 3] = 0  # class 3 has no positives
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, probabilities.argmax(axis=1), labels=range(4), zero_division=0
    )
    rows = per_class_table(labels, probabilities, ["a", "b", "c", "d"])
    assert [row["class"] for row in rows] == ["a", "b", "c", "d"]
    for i, row in enumerate(rows[:3]):
        assert row["precision"] == pytest.approx(precision[i], abs=1e-6)
        assert row["recall"] == pytest.approx(recall[i], abs=1e-6)
        assert row["f1"] == pytest.approx(f1[i], abs=1e-6)
        assert row["support"] == support[i]
        assert row["auroc"] == pytest.approx(roc_auc_score(labels == i, probabilities[:, i]), abs=1e-6)
        assert row["average_precision"] == pytest.approx(
            average_precision_score(labels == i, probabilities[:, i]), abs=1e-6
        )
    assert rows[3]["support"] == 0
    assert rows[3]["auroc"] is None
    assert rows[3]["average_precision"] is None


def test_roc_pr_curves_are_scikit_learns_thinned_to_max_points_keeping_the_ends():
    labels, probabilities = _classifier(3000, 3, seed=8, skill=0.5)
    labels[labels == 2] = 0  # class "c" has no positives: left out
    curves = roc_pr_curves(labels, probabilities, ["a", "b", "c"], max_points=50)
    assert set(curves) == {"a", "b"}
    fpr, tpr, _ = roc_curve(labels == 1, probabilities[:, 1])
    precision, recall, _ = precision_recall_curve(labels == 1, probabilities[:, 1])
    assert len(fpr) > 50 and len(precision) > 50
    curve = curves["b"]
    for key, full in (("fpr", fpr), ("tpr", tpr), ("precision", precision), ("recall", recall)):
        assert 40 <= len(curve[key]) <= 50
        assert curve[key][0] == full[0] and curve[key][-1] == full[-1]
        assert set(curve[key]) <= set(full.tolist())
    assert np.all(np.diff(curve["fpr"]) >= 0)
    untouched = roc_pr_curves(labels, probabilities, ["a", "b", "c"], max_points=100_000)["b"]
    np.testing.assert_array_equal(untouched["fpr"], fpr)
    np.testing.assert_array_equal(untouched["precision"], precision)


def test_most_confused_pairs_sort_by_count_then_rate_and_skip_the_diagonal_and_zeros():
    confusion = np.array([[50, 5, 0], [5, 10, 2], [0, 0, 7]])
    pairs = most_confused_pairs(confusion, ["cat", "dog", "fox"], k=5)
    assert pairs == [
        {"true": "dog", "predicted": "cat", "count": 5, "rate": round(5 / 17, 6)},
        {"true": "cat", "predicted": "dog", "count": 5, "rate": round(5 / 55, 6)},
        {"true": "dog", "predicted": "fox", "count": 2, "rate": round(2 / 17, 6)},
    ]
    assert most_confused_pairs(confusion, ["cat", "dog", "fox"], k=1) == pairs[:1]
    assert most_confused_pairs(np.diag([3, 4]), ["cat", "dog"]) == []
