"""trainer.reporting.subgroups: planted bad groups are flagged, equal ones are not."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from trainer.reporting.subgroups import MISSING, holm, subgroup_table

CLASSES = 4


def _predictions(labels: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Predictions that are right exactly where ``right`` says (wrong ones name the next class)."""
    return np.where(right, labels, (labels + 1) % CLASSES)


def _right(count: int, accuracy: float, rng: np.random.Generator) -> np.ndarray:
    right = np.arange(count) < round(accuracy * count)
    return rng.permutation(right)


def _planted(accuracies: dict[str, float], per_group: int = 100, seed: int = 0):
    rng = np.random.default_rng(seed)
    names = [name for name in accuracies for _ in range(per_group)]
    right = np.concatenate([_right(per_group, accuracy, rng) for accuracy in accuracies.values()])
    labels = rng.integers(0, CLASSES, len(names))
    return labels, _predictions(labels, right), names


def test_a_planted_bad_group_is_flagged_and_listed_first():
    labels, predictions, cameras = _planted({"a": 0.95, "b": 0.5, "c": 0.95})
    rows = subgroup_table(labels, predictions, {"camera": cameras}, CLASSES, rounds=200)["camera"]
    assert [row["group"] for row in rows] == ["b", "a", "c"]
    assert [row["flagged"] for row in rows] == [True, False, False]
    assert rows[0]["p_value"] < 1e-6
    assert rows[0]["accuracy"]["value"] == 0.5


def test_groups_with_equal_accuracy_are_not_flagged():
    labels, predictions, sites = _planted({"north": 0.9, "south": 0.9, "east": 0.9})
    rows = subgroup_table(labels, predictions, {"site": sites}, CLASSES, rounds=200)["site"]
    assert not any(row["flagged"] for row in rows)
    assert all(row["p_value"] > 0.05 for row in rows)


def test_a_group_better_than_the_rest_is_not_flagged():
    labels, predictions, names = _planted({"good": 1.0, "rest": 0.7})
    rows = subgroup_table(labels, predictions, {"lens": names}, CLASSES, rounds=200)["lens"]
    assert {row["group"]: row["flagged"] for row in rows} == {"rest": True, "good": False}


def test_rows_report_support_accuracy_interval_and_macro_f1_of_their_images():
    labels, predictions, names = _planted({"x": 0.8, "y": 0.6}, per_group=50, seed=1)
    rows = subgroup_table(labels, predictions, {"camera": names}, CLASSES, rounds=300)["camera"]
    for row in rows:
        members = np.array(names) == row["group"]
        assert row["support"] == 50
        accuracy = row["accuracy"]
        assert accuracy["value"] == pytest.approx((labels[members] == predictions[members]).mean())
        assert accuracy["low"] < accuracy["value"] < accuracy["high"]
        expected_f1 = f1_score(
            labels[members], predictions[members], labels=range(CLASSES), average="macro", zero_division=0
        )
        assert row["f1_macro"] == pytest.approx(expected_f1, abs=1e-6)


def test_empty_and_none_values_form_the_missing_group():
    labels = np.array([0, 1, 2, 3, 0, 1])
    rows = subgroup_table(
        labels, labels.copy(), {"site": ["a", "", None, "  ", "a", "b"]}, CLASSES, rounds=50
    )
    assert {row["group"]: row["support"] for row in rows["site"]} == {"a": 2, MISSING: 3, "b": 1}


def test_a_column_with_a_single_group_has_no_p_value_and_no_flag():
    labels = np.array([0, 1, 2, 3])
    (row,) = subgroup_table(labels, (labels + 1) % CLASSES, {"site": ["a"] * 4}, CLASSES, rounds=50)["site"]
    assert row["p_value"] is None
    assert row["flagged"] is False


def test_subgroup_table_repeats_exactly_for_a_seed():
    labels, predictions, names = _planted({"a": 0.7, "b": 0.9}, per_group=40)
    first = subgroup_table(labels, predictions, {"camera": names}, CLASSES, seed=3, rounds=100)
    assert subgroup_table(labels, predictions, {"camera": names}, CLASSES, seed=3, rounds=100) == first


def test_a_column_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="'camera' has 2 values for 3 images"):
        subgroup_table(np.zeros(3, int), np.zeros(3, int), {"camera": ["a", "b"]}, CLASSES)


def test_holm_adjustment_of_a_hand_worked_example():
    # sorted: 0.01 * 3 = 0.03; 0.03 * 2 = 0.06; 0.04 * 1 = 0.04, raised to 0.06 to stay monotone
    np.testing.assert_allclose(holm(np.array([0.01, 0.04, 0.03])), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(holm(np.array([0.5, 0.9])), [1.0, 1.0])
