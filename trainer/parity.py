"""Parity: does an exported artifact predict what the eager model predicts?

FP32 artifacts must match the eager model numerically. FP16 and INT8 artifacts cannot, so they
must agree on the top-1 class for at least a fixed share of validation images (99% for FP16, 98%
for INT8), and the accuracy of both models on those labelled images is recorded beside it. For
multilabel bundles the agreement is on each image's whole label set at the bundle's thresholds.
"""

from __future__ import annotations

import numpy as np
import torch

from imgcls.manifest import ParityResult, Precision

__all__ = ["MIN_TOP1_AGREEMENT", "compare"]

# Precision -> the top-1 agreement with the eager FP32 model an artifact needs; absent: exact (fp32).
MIN_TOP1_AGREEMENT: dict[Precision, float] = {"fp16": 0.99, "bf16": 0.99, "int8": 0.98, "fp8": 0.98}


def _accuracy(probabilities: np.ndarray, labels: np.ndarray | None) -> float | None:
    return None if labels is None else float((probabilities.argmax(axis=1) == labels).mean())


def _subset_accuracy(label_sets: np.ndarray, labels: np.ndarray | None) -> float | None:
    return None if labels is None else float((label_sets == labels.astype(bool)).all(axis=1).mean())


def compare(
    reference: np.ndarray,
    candidate: np.ndarray,
    *,
    tolerance: float,
    precision: Precision = "fp32",
    labels: np.ndarray | None = None,
    thresholds: np.ndarray | None = None,
) -> ParityResult:
    """Compare logits ``[N, classes]`` of the eager model (``reference``) and an artifact.

    FP32: passes when every softmax value is within ``tolerance``; a top-1 class can then flip only
    where the reference was a near-tie (a decisive flip moves two probabilities by more than the
    tolerance). Reduced precision: passes on :data:`MIN_TOP1_AGREEMENT`. With ``thresholds``
    (multilabel), the scores are sigmoids and the agreement is on the thresholded label sets.
    """
    multilabel = thresholds is not None
    ref_logits, cand_logits = torch.from_numpy(reference).double(), torch.from_numpy(candidate).double()
    if multilabel:
        ref, cand = torch.sigmoid(ref_logits).numpy(), torch.sigmoid(cand_logits).numpy()
        ref_decision, cand_decision = ref >= thresholds, cand >= thresholds
        agreement = float((ref_decision == cand_decision).all(axis=1).mean())
        reference_accuracy, accuracy = (
            _subset_accuracy(ref_decision, labels),
            _subset_accuracy(cand_decision, labels),
        )
    else:
        ref, cand = torch.softmax(ref_logits, dim=1).numpy(), torch.softmax(cand_logits, dim=1).numpy()
        agreement = float((ref.argmax(axis=1) == cand.argmax(axis=1)).mean())
        reference_accuracy, accuracy = _accuracy(ref, labels), _accuracy(cand, labels)
    max_abs_diff = float(np.abs(ref - cand).max())
    min_agreement = MIN_TOP1_AGREEMENT.get(precision)
    passed = max_abs_diff <= tolerance if min_agreement is None else agreement >= min_agreement
    return ParityResult(
        samples=len(reference),
        top1_agreement=agreement,
        max_abs_diff=max_abs_diff,
        tolerance=tolerance,
        min_top1_agreement=min_agreement,
        agreement_on="label_set" if multilabel else None,
        reference_accuracy=reference_accuracy,
        accuracy=accuracy,
        passed=passed,
    )
