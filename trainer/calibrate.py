"""Temperature scaling (Guo et al., 2017) at the end of a run: one scalar ``T`` fitted on the
validation split's logits, so that ``softmax(logits / T)`` are honest probabilities.

The fit never sees the test split; the test split's expected calibration error before and after is
what the run reports. Export copies ``T`` into the manifest and the service applies it to the scores
it returns (top-1 never changes: dividing by a positive scalar keeps the order).
"""

from __future__ import annotations

import numpy as np

from trainer.reporting.calibration import apply_temperature, expected_calibration_error, fit_temperature

__all__ = ["ECE_BINS", "MIN_VALIDATION_IMAGES", "calibrate"]

ECE_BINS = 15
# Below this, one scalar fitted on a handful of images is noise (it runs to a bound of the search);
# the bundle then serves plain softmax, as bundles before calibration did.
MIN_VALIDATION_IMAGES = 20


def calibrate(
    val_logits: np.ndarray, val_labels: np.ndarray, test_logits: np.ndarray, test_labels: np.ndarray
) -> dict:
    """The ``calibration`` section of metrics.json: the fitted temperature and the test ECE around it
    (``temperature`` None, with the reason, when the validation split is too small to fit it)."""
    if len(val_labels) < MIN_VALIDATION_IMAGES:
        before = expected_calibration_error(apply_temperature(test_logits, 1.0), test_labels, bins=ECE_BINS)
        return {
            "method": "temperature scaling",
            "temperature": None,
            "skipped": f"only {len(val_labels)} validation images; at least {MIN_VALIDATION_IMAGES} are needed",
            "val_images": len(val_labels),
            "ece_bins": ECE_BINS,
            "test_ece_before": round(float(before), 6),
        }
    temperature = fit_temperature(val_logits, val_labels)
    before = expected_calibration_error(apply_temperature(test_logits, 1.0), test_labels, bins=ECE_BINS)
    after = expected_calibration_error(
        apply_temperature(test_logits, temperature), test_labels, bins=ECE_BINS
    )
    return {
        "method": "temperature scaling",
        "temperature": round(float(temperature), 6),
        "fitted_on": "val",
        "val_images": len(val_labels),
        "ece_bins": ECE_BINS,
        "test_ece_before": round(float(before), 6),
        "test_ece_after": round(float(after), 6),
    }
