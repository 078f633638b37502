"""Parity rules: FP32 artifacts match numerically; FP16/INT8 ones on top-1 agreement."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.parity import MIN_TOP1_AGREEMENT, compare


def _logits(classes: list[int], count: int = 3) -> np.ndarray:
    out = np.zeros((len(classes), count), dtype=np.float32)
    out[np.arange(len(classes)), classes] = 5.0
    return out


def test_fp32_passes_only_within_the_softmax_tolerance():
    reference = _logits([0, 1, 2, 0])
    assert compare(reference, reference + 1e-6, tolerance=1e-4).passed
    drifted = reference.copy()
    drifted[0, 1] += 0.5
    result = compare(reference, drifted, tolerance=1e-4)
    assert not result.passed and result.top1_agreement == 1.0 and result.max_abs_diff > 1e-4


def test_fp32_forgives_a_flipped_near_tie_but_not_a_decisive_flip():
    tie = np.array([[1.0, 1.0 + 1e-6, -3.0]], dtype=np.float32)
    assert compare(tie, tie[:, [1, 0, 2]], tolerance=1e-4).passed
    flipped = compare(_logits([0]), _logits([1]), tolerance=1e-4)
    assert not flipped.passed and flipped.top1_agreement == 0.0


@pytest.mark.parametrize(("precision", "flips_allowed"), [("int8", 2), ("fp16", 1)])
def test_reduced_precision_passes_on_top1_agreement_at_the_documented_threshold(precision, flips_allowed):
    assert MIN_TOP1_AGREEMENT[precision] == {"int8": 0.98, "fp16": 0.99}[precision]
    classes = [i % 3 for i in range(100)]
    reference = _logits(classes)
    within = _logits([(c + 1) % 3 if i < flips_allowed else c for i, c in enumerate(classes)])
    beyond = _logits([(c + 1) % 3 if i <= flips_allowed else c for i, c in enumerate(classes)])
    passed = compare(reference, within, tolerance=1e-4, precision=precision)
    failed = compare(reference, beyond, tolerance=1e-4, precision=precision)
    assert passed.passed and passed.max_abs_diff > passed.tolerance  # numbers differ, classes agree enough
    assert not failed.passed
    assert passed.min_top1_agreement == failed.min_top1_agreement == MIN_TOP1_AGREEMENT[precision]


def test_accuracy_of_both_models_is_recorded_when_labels_are_known():
    reference = _logits([0, 1, 2, 2])
    candidate = _logits([0, 1, 2, 0])
    result = compare(reference, candidate, tolerance=1e-4, precision="int8", labels=np.array([0, 1, 2, 0]))
    assert result.reference_accuracy == 0.75 and result.accuracy == 1.0
    assert result.accuracy_change == pytest.approx(0.25)
    unlabelled = compare(reference, candidate, tolerance=1e-4, precision="int8")
    assert unlabelled.accuracy is None and unlabelled.accuracy_change is None
