"""Multilabel evaluation (``task: multilabel``): per-label thresholds, and the metrics of label sets.

A multilabel model scores every label on its own (a sigmoid per label). An image's predicted labels
are those whose score reaches the label's threshold. Thresholds are tuned on the validation split,
each label's to maximise its F1 there, and travel with the bundle (``manifest.thresholds``); a label
with no positive validation image keeps 0.5.

Metrics, as scikit-learn defines them: mean average precision over the labels with positives (mAP,
threshold-free), micro and macro F1 (macro means over the labels with positives, like mAP),
per-label precision/recall/F1/AP, subset accuracy (the whole
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

from imgcls.manifest import BaselineCheck
from trainer.baselines import check_against_baselines

__all__ = [
    "DEFAULT_THRESHOLD",
    "evaluate_multilabel",
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


def _macro(per_label: np.ndarray, targets: np.ndarray) -> float:
    """The mean over the labels with positives in the split, as mAP: a label absent from the split has
    no recall or F1 to speak of (scikit-learn's zero_division would count it as 0)."""
    present = targets.sum(axis=0) > 0
    return float(np.mean(np.asarray(per_label)[present])) if present.any() else 0.0


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
        "f1_macro": _macro(f1_score(targets, predicted, average=None, zero_division=0), targets),
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
    present_ap = [ap for ap in per_label_ap if ap is not None]  # computed once, for the table and mAP
    subset = float(accuracy_score(targets, predicted))
    return {
        "samples": len(targets),
        "accuracy": subset,  # subset accuracy: what accuracy_score means for label sets
        "subset_accuracy": subset,
        "hamming_loss": float(hamming_loss(targets, predicted)),
        "map": float(np.mean(present_ap)) if present_ap else 0.0,  # as mean_average_precision
        "precision_micro": float(micro[0]),
        "recall_micro": float(micro[1]),
        "f1_micro": float(micro[2]),
        "precision_macro": _macro(precision, targets),
        "recall_macro": _macro(recall, targets),
        "f1_macro": _macro(f1, targets),
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


def evaluate_multilabel(
    val_logits: np.ndarray,
    val_targets: np.ndarray,
    logits: np.ndarray,
    targets: np.ndarray,
    class_names: Sequence[str],
    train_matrix: np.ndarray,
    likely_causes: Sequence[str] = (),
) -> tuple[dict, dict, BaselineCheck]:
    """A finished multilabel run's test results: thresholds tuned on the validation logits, the test
    metrics at them (with ``thresholds``), the ``calibration`` section that says why there is no
    temperature, and the check against always answering the most frequent training label set."""
    thresholds = tune_thresholds(expit(val_logits.astype(np.float64)), val_targets)
    scores = expit(logits.astype(np.float64))
    test = multilabel_metrics(scores, targets, class_names, thresholds)
    test["thresholds"] = {name: float(t) for name, t in zip(class_names, thresholds, strict=True)}
    calibration = {
        "method": "per-label thresholds",
        "temperature": None,
        "skipped": "multilabel: each label keeps its sigmoid score; decisions use the thresholds tuned on val",
        "fitted_on": "val",
        "val_images": len(val_targets),
    }
    (train_ids, test_ids, predicted_ids), set_names = label_set_ids(
        class_names, train_matrix, targets, predict_sets(scores, thresholds)
    )
    # guessing draws from the label sets that really occur, not from the ones the model invented
    observed = int(max(train_ids.max(initial=0), test_ids.max(initial=0))) + 1
    baseline_check = check_against_baselines(
        predicted_ids,
        test_ids,
        train_ids.tolist(),
        set_names[:observed],
        likely_causes=likely_causes,
        unit="label set",
    )
    return test, calibration, baseline_check
