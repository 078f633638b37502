"""Classification metrics with bootstrap intervals, per-class tables, curves and confused pairs.

The bootstrap resamples within each true class, so every class keeps its count and every class
present stays present: the interval says how much the numbers would move on another test set of the
same make-up. All resamples are scored at once, from per-round class counts and per-image vectors;
the point values come from the same code on the unresampled set and equal scikit-learn's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

__all__ = [
    "Interval",
    "bootstrap_mean",
    "most_confused_pairs",
    "per_class_table",
    "roc_pr_curves",
    "summary_metrics",
]

TOP_K = 5
_CHUNK_CELLS = 1 << 22  # resampled indices held at once (~32 MiB of int64), whatever N is


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def to_json(self) -> dict[str, float]:
        return {"value": _rounded(self.value), "low": _rounded(self.low), "high": _rounded(self.high)}


def _validated(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, probabilities = np.asarray(labels, dtype=np.int64), np.asarray(probabilities)
    if labels.ndim != 1 or probabilities.ndim != 2 or len(labels) != len(probabilities) or not len(labels):
        raise ValueError(
            f"expected labels (N,) and probabilities (N, K) with N > 0; got {labels.shape} and {probabilities.shape}"
        )
    if labels.min() < 0 or labels.max() >= probabilities.shape[1]:
        raise ValueError(
            f"labels must lie in 0..{probabilities.shape[1] - 1}; got {labels.min()}..{labels.max()}"
        )
    return labels, probabilities


def _interval(point: float, draws: np.ndarray, confidence: float) -> Interval:
    tail = (1 - confidence) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return Interval(float(point), float(low), float(high))


def _chunks(rounds: int, n: int) -> Iterator[int]:
    """Round counts per chunk, so that memory stays bounded on large test sets."""
    per_chunk = max(1, _CHUNK_CELLS // n)
    for start in range(0, rounds, per_chunk):
        yield min(per_chunk, rounds - start)


def _top_k_hits(labels: np.ndarray, probabilities: np.ndarray, k: int) -> np.ndarray:
    """Whether the true class is among the top k, ties broken as scikit-learn's reversed stable
    argsort breaks them (the higher class index ranks first), without sorting."""
    true_score = probabilities[np.arange(len(labels)), labels][:, None]
    later_class = np.arange(probabilities.shape[1]) > labels[:, None]
    ranked_above = (probabilities > true_score) | ((probabilities == true_score) & later_class)
    return ranked_above.sum(axis=1) < k


def _per_image_losses(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    # scikit-learn clips to [eps, 1 - eps] of the input's dtype before taking the log
    eps = np.finfo(probabilities.dtype if probabilities.dtype.kind == "f" else np.float64).eps
    return -np.log(np.clip(probabilities[np.arange(len(labels)), labels], eps, 1 - eps).astype(np.float64))


def _class_metrics(tp: np.ndarray, predicted: np.ndarray, support: np.ndarray) -> dict[str, np.ndarray]:
    """Macro, weighted and balanced scores from per-round true positives and prediction counts (R, K),
    the confusion matrices' diagonals and column sums; a class never predicted (or never present)
    scores 0, as scikit-learn's ``zero_division=0``."""
    zeros = np.zeros(tp.shape)
    precision = np.divide(tp, predicted, out=zeros.copy(), where=predicted > 0)
    recall = np.divide(tp, support, out=zeros.copy(), where=support > 0)
    both = predicted + support
    f1 = np.divide(2 * tp, both, out=zeros.copy(), where=both > 0)
    weights = support / support.sum()
    return {
        "balanced_accuracy": recall[:, support > 0].mean(axis=1),  # classes absent from labels left out
        "precision_macro": precision.mean(axis=1),
        "recall_macro": recall.mean(axis=1),
        "f1_macro": f1.mean(axis=1),
        "precision_weighted": precision @ weights,
        "recall_weighted": recall @ weights,
        "f1_weighted": f1 @ weights,
    }


def _counts_per_round(codes: np.ndarray, bins: int) -> np.ndarray:
    """Per row of ``codes`` (R, N), how often each of ``bins`` values occurs: one bincount for all rows,
    each row's codes shifted into a block of its own."""
    shifted = codes + (np.arange(len(codes)) * bins)[:, None]
    return np.bincount(shifted.ravel(), minlength=len(codes) * bins).reshape(len(codes), bins)


def _scores(
    index: np.ndarray,
    predictions: np.ndarray,
    hit_class: np.ndarray,
    support: np.ndarray,
    per_image: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Every summary metric for each row of ``index`` (R, N): one class-stratified resample per row,
    so each keeps the true-class counts ``support``. Only the confusion matrices' diagonals and column
    sums are counted: O(R·K) memory where whole matrices would take O(R·K²)."""
    k = len(support)
    tp = _counts_per_round(hit_class[index], k + 1)[:, :k]  # bin k: the misses
    predicted = _counts_per_round(predictions[index], k)
    means = {name: values[index].mean(axis=1) for name, values in per_image.items()}
    return {"accuracy": means.pop("accuracy"), **_class_metrics(tp, predicted, support), **means}


def _stratified_indices(labels: np.ndarray, rounds: int, rng: np.random.Generator) -> np.ndarray:
    """(rounds, N) indices, each row drawing every class's images with replacement from that class."""
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels)
    starts = np.cumsum(counts) - counts
    low = starts[labels[order]]
    return order[rng.integers(low, low + counts[labels[order]], size=(rounds, len(labels)))]


def summary_metrics(
    labels: np.ndarray,
    probabilities: np.ndarray,
    *,
    rounds: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Interval]:
    """Headline metrics with percentile intervals from ``rounds`` class-stratified bootstrap resamples.

    Keys: accuracy, balanced_accuracy, precision/recall/f1 _macro and _weighted (over all K classes),
    top5_accuracy (only when K > 5) and log_loss.
    """
    labels, probabilities = _validated(labels, probabilities)
    n, k = probabilities.shape
    predictions = probabilities.argmax(axis=1)
    per_image = {"accuracy": predictions == labels}
    if k > TOP_K:
        per_image["top5_accuracy"] = _top_k_hits(labels, probabilities, TOP_K)
    per_image["log_loss"] = _per_image_losses(labels, probabilities)
    hit_class = np.where(predictions == labels, labels, k)
    support = np.bincount(labels, minlength=k)

    point = _scores(np.arange(n)[None, :], predictions, hit_class, support, per_image)
    rng = np.random.default_rng(seed)
    chunks = [
        _scores(_stratified_indices(labels, size, rng), predictions, hit_class, support, per_image)
        for size in _chunks(rounds, n)
    ]
    return {
        name: _interval(values[0], np.concatenate([chunk[name] for chunk in chunks]), confidence)
        for name, values in point.items()
    }


def bootstrap_mean(
    values: np.ndarray, *, rounds: int = 1000, seed: int = 0, confidence: float = 0.95
) -> Interval:
    """The mean of ``values`` with a plain (unstratified) percentile bootstrap interval."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if not len(values):
        raise ValueError("bootstrap_mean needs at least one value")
    rng = np.random.default_rng(seed)
    draws = [
        values[rng.integers(0, len(values), size=(size, len(values)))].mean(axis=1)
        for size in _chunks(rounds, len(values))
    ]
    return _interval(values.mean(), np.concatenate(draws), confidence)


def _rounded(value: float) -> float:
    return round(float(value), 6)


def _one_vs_rest(
    labels: np.ndarray, probabilities: np.ndarray, index: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """The binary problem of one class, or None when it has no positives or no negatives."""
    positives = labels == index
    if positives.all() or not positives.any():
        return None
    return positives, probabilities[:, index]


def per_class_table(labels: np.ndarray, probabilities: np.ndarray, class_names: list[str]) -> list[dict]:
    """Precision, recall, F1 and support per class, and one-vs-rest AUROC and average precision
    (None when the class has no positives or no negatives among ``labels``)."""
    labels, probabilities = _validated(labels, probabilities)
    classes = range(len(class_names))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, probabilities.argmax(axis=1), labels=classes, zero_division=0
    )
    rows = []
    for index, name in enumerate(class_names):
        binary = _one_vs_rest(labels, probabilities, index)
        rows.append(
            {
                "class": name,
                "precision": _rounded(precision[index]),
                "recall": _rounded(recall[index]),
                "f1": _rounded(f1[index]),
                "support": int(support[index]),
                "auroc": None if binary is None else _rounded(roc_auc_score(*binary)),
                "average_precision": None if binary is None else _rounded(average_precision_score(*binary)),
            }
        )
    return rows


def _thinned(values: np.ndarray, keep: np.ndarray) -> list[float]:
    return values[keep].astype(np.float64).tolist()


def roc_pr_curves(
    labels: np.ndarray, probabilities: np.ndarray, class_names: list[str], *, max_points: int = 200
) -> dict[str, dict]:
    """One-vs-rest ROC and precision-recall curves per class, each thinned to ``max_points`` (first and
    last kept). Classes without positives, or without negatives (no ROC then), are left out."""
    labels, probabilities = _validated(labels, probabilities)
    curves = {}
    for index, name in enumerate(class_names):
        binary = _one_vs_rest(labels, probabilities, index)
        if binary is None:
            continue
        fpr, tpr, _ = roc_curve(*binary)
        precision, recall, _ = precision_recall_curve(*binary)
        roc_keep, pr_keep = _thinning(len(fpr), max_points), _thinning(len(precision), max_points)
        curves[name] = {
            "fpr": _thinned(fpr, roc_keep),
            "tpr": _thinned(tpr, roc_keep),
            "precision": _thinned(precision, pr_keep),
            "recall": _thinned(recall, pr_keep),
        }
    return curves


def _thinning(length: int, max_points: int) -> np.ndarray:
    """At most ``max_points`` evenly spread indices into ``length`` points, first and last included."""
    if length <= max_points:
        return np.arange(length)
    return np.unique(np.linspace(0, length - 1, max(max_points, 2)).round().astype(np.int64))


def most_confused_pairs(confusion: np.ndarray, class_names: list[str], k: int = 5) -> list[dict]:
    """The ``k`` largest off-diagonal cells: by count, then by share of the true class (``rate``)."""
    confusion = np.asarray(confusion)
    rows = confusion.sum(axis=1, keepdims=True)
    rates = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
    true, predicted = np.nonzero((confusion > 0) & ~np.eye(len(confusion), dtype=bool))
    counts, pair_rates = confusion[true, predicted], rates[true, predicted]
    order = np.lexsort((predicted, true, -pair_rates, -counts))[:k]  # last key sorts first
    return [
        {
            "true": class_names[true[i]],
            "predicted": class_names[predicted[i]],
            "count": int(counts[i]),
            "rate": _rounded(pair_rates[i]),
        }
        for i in order
    ]
