"""Calibration: top-label expected calibration error, reliability bins, and temperature scaling
(Guo et al., 2017, "On Calibration of Modern Neural Networks").

Bins are equal-width on the top-class confidence and closed on the right: bin b is (b/B, (b+1)/B].
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

__all__ = ["apply_temperature", "expected_calibration_error", "fit_temperature", "reliability_bins"]

TEMPERATURE_BOUNDS = (0.05, 20.0)


def _binned(probabilities: np.ndarray, labels: np.ndarray, bins: int) -> tuple[np.ndarray, ...]:
    """Per bin: image count, summed confidence and summed correctness."""
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)
    if probabilities.ndim != 2 or len(probabilities) != len(labels) or not len(labels):
        raise ValueError(
            f"expected probabilities (N, K) and labels (N,) with N > 0; got {probabilities.shape} and {labels.shape}"
        )
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    # edges as exact fractions, and a confidence equal to an edge belongs to the bin it closes
    edges = np.arange(bins + 1) / bins
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    return (
        np.bincount(index, minlength=bins),
        np.bincount(index, weights=confidence, minlength=bins),
        np.bincount(index, weights=correct, minlength=bins),
    )


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Σ_b (n_b / N) · |accuracy_b − mean confidence_b| over the top-class confidence bins."""
    counts, confidence, correct = _binned(probabilities, labels, bins)
    return float(np.abs(correct - confidence).sum() / counts.sum())  # |Σacc − Σconf| / N = n_b/N · |gap|


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> list[dict]:
    """The non-empty bins of the reliability diagram: edges, count, mean confidence and accuracy."""
    counts, confidence, correct = _binned(probabilities, labels, bins)
    return [
        {
            "low": round(b / bins, 6),
            "high": round((b + 1) / bins, 6),
            "count": int(counts[b]),
            "confidence": round(float(confidence[b] / counts[b]), 6),
            "accuracy": round(float(correct[b] / counts[b]), 6),
        }
        for b in np.flatnonzero(counts)
    ]


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    scaled = logits / temperature
    return float(np.mean(logsumexp(scaled, axis=1) - scaled[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, max_iter: int = 200) -> float:
    """The T > 0 that minimises the mean NLL of softmax(logits / T), searched on log T within
    ``TEMPERATURE_BOUNDS`` by bounded Brent (deterministic; the NLL is unimodal in log T)."""
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(labels) or not len(labels):
        raise ValueError(
            f"expected logits (N, K) and labels (N,) with N > 0; got {logits.shape} and {labels.shape}"
        )
    result = minimize_scalar(
        lambda log_t: _nll(logits, labels, np.exp(log_t)),
        bounds=tuple(np.log(TEMPERATURE_BOUNDS)),
        method="bounded",
        options={"maxiter": max_iter, "xatol": 1e-6},
    )
    return float(np.exp(result.x))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / temperature) in float64, shifted by the row maximum so nothing overflows."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive; got {temperature}")
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    exponentials = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)
