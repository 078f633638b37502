"""Multilabel evaluation (``task: multilabel``): per-label thresholds, and the metrics of label sets.

A multilabel model scores every label on its own (a sigmoid per label). An image's predicted labels
are those whose score reaches the label's threshold. Thresholds are tuned on the validation split,
each label's to maximise its F1 there, and travel with the bundle (``manifest.thresholds``); a label
with no positive validation image keeps 0.5.

Metrics, as scikit-learn defines them: mean average precision over the labels with positives (mAP,
threshold-free), micro and macro F1, per-label precision/recall/F1/AP, subset accuracy (the whole
label set right; what ``accuracy_score`` means for multilabel data, and what ``accuracy`` means in a
multilabel run's metrics) and Hamming loss (the share of wrong label decisions).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import expit
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    hamming_loss,
    precision_recall_curve,
    precision_recall_fscore_support,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "label_set_ids",
    "mean_average_precision",
    "multilabel_metrics",
    "predict_sets",
    "tune_thresholds",
    "validation_scores",
]

DEFAULT_THRESHOLD = 0.5


def predict_sets(scores: np.ndarray, thresholds: np.ndarray | float = DEFAULT_THRESHOLD) -> np.ndarray:
    """``[N, labels]`` of 0/1: a label is predicted when its score reaches its threshold."""
    return (np.asarray(scores) >= np.asarray(thresholds)).astype(np.int64)


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean over the labels with at least one positive of scikit-learn's average precision."""
    present = targets.sum(axis=0) > 0
    if not present.any():
        return 0.0
    return float(average_precision_score(targets[:, present], scores[:, present], average="macro"))


def tune_thresholds(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Each label's threshold maximising its F1 on (validation) ``scores``; 0.5 without positives.

    The cut is placed halfway between the lowest score kept and the next score below it, not on the
    kept score itself, so an image scored a hair lower is not lost to rounding between runtimes.
    """
    thresholds = np.full(scores.shape[1], DEFAULT_THRESHOLD)
    for label in range(scores.shape[1]):
        truth, score = targets[:, label], scores[:, label]
        if truth.sum() == 0:
            continue
        precision, recall, cuts = precision_recall_curve(truth, score)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)[:-1]
        best = cuts[int(np.argmax(f1))]
        below = score[score < best]
        thresholds[label] = float((best + below.max()) / 2) if below.size else float(best)
    return thresholds


def validation_scores(logits: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """The per-epoch validation metrics at threshold 0.5 (thresholds are tuned once, after training):
    loss, accuracy (subset), macro F1, balanced accuracy (mean over labels of (TPR + TNR) / 2), mAP."""
    import torch
    from torch.nn import functional as F

    scores = expit(logits.astype(np.float64))
    predicted = predict_sets(scores)
    loss = F.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(targets).float())
    positives, negatives = targets.sum(axis=0), (1 - targets).sum(axis=0)
    true_positive = (predicted * targets).sum(axis=0)
    true_negative = ((1 - predicted) * (1 - targets)).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = [true_positive / positives, true_negative / negatives]
    balanced = np.nanmean(np.stack(rates), axis=0)  # a label without positives (or negatives) uses the other
    return {
        "loss": float(loss.item()),
        "accuracy": float(accuracy_score(targets, predicted)),
        "f1_macro": float(f1_score(targets, predicted, average="macro", zero_division=0)),
        "balanced_accuracy": float(np.nanmean(balanced)) if np.isfinite(balanced).any() else 0.0,
        "map": mean_average_precision(scores, targets),
    }


def multilabel_metrics(
    scores: np.ndarray, targets: np.ndarray, class_names: Sequence[str], thresholds: np.ndarray
) -> dict:
    """The test metrics of a multilabel run at its tuned thresholds, with the per-label table."""
    predicted = predict_sets(scores, thresholds)
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predicted, average=None, zero_division=0
    )
    micro = precision_recall_fscore_support(targets, predicted, average="micro", zero_division=0)
    per_label_ap = [
        float(average_precision_score(targets[:, i], scores[:, i])) if targets[:, i].any() else None
        for i in range(len(class_names))
    ]
    subset = float(accuracy_score(targets, predicted))
    return {
        "samples": len(targets),
        "accuracy": subset,  # subset accuracy: what accuracy_score means for label sets
        "subset_accuracy": subset,
        "hamming_loss": float(hamming_loss(targets, predicted)),
        "map": mean_average_precision(scores, targets),
        "precision_micro": float(micro[0]),
        "recall_micro": float(micro[1]),
        "f1_micro": float(micro[2]),
        "precision_macro": float(np.mean(precision)),
        "recall_macro": float(np.mean(recall)),
        "f1_macro": float(np.mean(f1)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
                "average_precision": per_label_ap[i],
                "threshold": float(thresholds[i]),
            }
            for i, name in enumerate(class_names)
        },
    }


def label_set_ids(class_names: Sequence[str], *matrices: np.ndarray) -> tuple[list[np.ndarray], list[str]]:
    """Each row's label set as an id shared across ``matrices``, and each id's name (``a;b``, ``(none)``):
    label sets as classes, for the check against a model that always answers the most frequent set."""
    names: dict[tuple[int, ...], int] = {}
    ids = []
    for matrix in matrices:
        ids.append(np.array([names.setdefault(tuple(np.flatnonzero(row)), len(names)) for row in matrix]))
    return ids, [";".join(class_names[i] for i in key) if key else "(none)" for key in names]
