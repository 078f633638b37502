"""trainer.reporting.calibration: ECE by hand and by a plain loop, and temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import log_loss

from trainer.reporting.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)

# four images, two classes; with 5 bins the confidences 0.9 and 0.85 share (0.8, 1], 0.7 is in (0.6, 0.8]
# and 0.6 closes (0.4, 0.6]
HAND_PROBABILITIES = np.array([[0.9, 0.1], [0.85, 0.15], [0.3, 0.7], [0.6, 0.4]])
HAND_LABELS = np.array([0, 1, 1, 1])  # right, wrong, right, wrong


def _calibrated_logits(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is the true label distribution: labels are drawn from it."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, k))
    probabilities = softmax(logits, axis=1)
    labels = (rng.random((n, 1)) > probabilities.cumsum(axis=1)).sum(axis=1)
    return logits, np.minimum(labels, k - 1)


def _loop_ece(probabilities: np.ndarray, labels: np.ndarray, bins: int) -> float:
    confidence, correct = probabilities.max(axis=1), probabilities.argmax(axis=1) == labels
    total = 0.0
    for b in range(bins):
        inside = (confidence > b / bins) & (confidence <= (b + 1) / bins)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return total


def test_ece_of_a_hand_built_example():
    # (0.8, 1]: 2 images, accuracy 0.5, confidence 0.875 -> 2/4 * 0.375 = 0.1875
    # (0.6, 0.8]: 1 image, accuracy 1, confidence 0.7 -> 1/4 * 0.3 = 0.075
    # (0.4, 0.6]: 1 image, accuracy 0, confidence 0.6 -> 1/4 * 0.6 = 0.15
    assert expected_calibration_error(HAND_PROBABILITIES, HAND_LABELS, bins=5) == pytest.approx(0.4125)


def test_reliability_bins_of_a_hand_built_example_list_only_non_empty_bins():
    assert reliability_bins(HAND_PROBABILITIES, HAND_LABELS, bins=5) == [
        {"low": 0.4, "high": 0.6, "count": 1, "confidence": 0.6, "accuracy": 0.0},
        {"low": 0.6, "high": 0.8, "count": 1, "confidence": 0.7, "accuracy": 1.0},
        {"low": 0.8, "high": 1.0, "count": 2, "confidence": 0.875, "accuracy": 0.5},
    ]


def test_ece_equals_a_plain_loop_over_right_closed_bins():
    rng = np.random.default_rng(0)
    probabilities = softmax(rng.normal(scale=3.0, size=(2000, 10)), axis=1)
    labels = rng.integers(0, 10, 2000)
    for bins in (1, 10, 15):
        assert expected_calibration_error(probabilities, labels, bins=bins) == pytest.approx(
            _loop_ece(probabilities, labels, bins), abs=1e-12
        )


def test_ece_is_zero_when_each_bins_accuracy_equals_its_confidence():
    probabilities = np.tile([0.75, 0.25], (4, 1))
    assert expected_calibration_error(probabilities, np.array([0, 0, 0, 1])) == pytest.approx(0.0)


def test_fit_temperature_recovers_the_factor_that_overconfident_logits_were_scaled_by():
    logits, labels = _calibrated_logits(5000, 10, seed=1)
    assert fit_temperature(3.0 * logits, labels) == pytest.approx(3.0, rel=0.1)
    assert fit_temperature(0.5 * logits, labels) == pytest.approx(0.5, rel=0.1)


def test_fitted_temperature_never_raises_the_nll_and_is_deterministic():
    logits, labels = _calibrated_logits(1000, 5, seed=2)
    logits = 2.5 * logits
    temperature = fit_temperature(logits, labels)
    assert fit_temperature(logits, labels) == temperature
    before = log_loss(labels, y_proba=apply_temperature(logits, 1.0), labels=range(5))
    after = log_loss(labels, y_proba=apply_temperature(logits, temperature), labels=range(5))
    assert after <= before


def test_temperature_fitted_on_validation_lowers_held_out_ece_of_an_overconfident_model():
    logits, labels = _calibrated_logits(4000, 10, seed=3)
    logits = 4.0 * logits
    val, test = slice(0, 2000), slice(2000, None)
    temperature = fit_temperature(logits[val], labels[val])
    before = expected_calibration_error(apply_temperature(logits[test], 1.0), labels[test])
    after = expected_calibration_error(apply_temperature(logits[test], temperature), labels[test])
    assert after < 0.5 * before


def test_apply_temperature_is_softmax_of_scaled_logits_and_stable_for_huge_logits():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(20, 7)).astype(np.float32)
    probabilities = apply_temperature(logits, 2.0)
    assert probabilities.dtype == np.float64
    np.testing.assert_allclose(probabilities, softmax(logits.astype(np.float64) / 2.0, axis=1), rtol=1e-12)
    huge = apply_temperature(np.array([[1e4, 0.0, -1e4]]), 0.5)
    np.testing.assert_allclose(huge, [[1.0, 0.0, 0.0]])


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_apply_temperature_rejects_a_temperature_that_is_not_positive(temperature: float):
    with pytest.raises(ValueError, match="temperature must be positive"):
        apply_temperature(np.zeros((1, 3)), temperature)
