"""The end-of-run check against a model that learned nothing: majority class and uniform guessing."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.baselines import check_against_baselines

NAMES = ["cat", "dog"]


def test_a_model_at_chance_fails_and_the_warning_names_the_baselines_and_the_causes():
    labels = np.array([0, 1] * 20)
    predictions = np.zeros(40, dtype=int)  # always "cat": exactly the majority baseline
    check = check_against_baselines(
        predictions, labels, [0] * 70 + [1] * 70, NAMES, likely_causes=["only 4 optimiser steps"]
    )
    assert not check.passed
    assert check.accuracy == 0.5 and check.majority_accuracy == 0.5 and check.uniform_accuracy == 0.5
    assert check.skill == 0.0
    assert "not clearly better" in check.warning
    assert "(1) only 4 optimiser steps" in check.warning
    assert "'cat'" in check.warning


def test_a_good_model_passes_without_a_warning():
    labels = np.array([0, 1] * 20)
    predictions = labels.copy()
    predictions[:2] = 1 - predictions[:2]  # 38 of 40
    check = check_against_baselines(predictions, labels, [0, 1] * 70, NAMES)
    assert check.passed
    assert check.warning is None
    assert check.skill == pytest.approx((0.95 - 0.5) / 0.5)
    assert check.p_value < 1e-6


def test_high_accuracy_on_imbalanced_data_fails_when_it_only_matches_the_majority_class():
    # 95 % of the images are "cat": 0.95 accuracy is what always answering "cat" gets.
    labels = np.array([0] * 95 + [1] * 5)
    predictions = np.zeros(100, dtype=int)
    check = check_against_baselines(predictions, labels, [0] * 380 + [1] * 20, NAMES)
    assert check.accuracy == pytest.approx(0.95)
    assert check.majority_class == "cat"
    assert not check.passed


def test_too_few_test_images_to_tell_says_so():
    labels = np.array([0, 1, 0, 1])
    check = check_against_baselines(labels.copy(), labels, [0, 1] * 10, NAMES)  # 4 of 4 correct
    assert check.skill == 1.0
    assert not check.passed  # p = 0.5**4 = 0.0625
    assert "too small to tell" in check.warning


def test_uniform_guessing_is_the_baseline_when_classes_are_balanced_and_many():
    names = [str(k) for k in range(10)]
    labels = np.arange(10).repeat(10)
    predictions = labels.copy()
    predictions[:80] = (predictions[:80] + 1) % 10  # 20 of 100 correct: twice chance, skill 0.11
    check = check_against_baselines(predictions, labels, list(labels), names)
    assert check.uniform_accuracy == pytest.approx(0.1)
    assert check.skill == pytest.approx((0.2 - 0.1) / 0.9)
    assert check.passed
