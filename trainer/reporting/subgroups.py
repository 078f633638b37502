"""Accuracy per subgroup (camera, site, ...: the extra columns of a CSV dataset), and which groups do
significantly worse than the rest of the images.

A group is flagged when a one-sided Fisher exact test says its accuracy is below that of all the other
images, with Holm's correction across the groups of one column (corrected p < alpha). The reported
``p_value`` is the corrected one; it is None when a column has a single group (no rest to compare).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import fisher_exact
from sklearn.metrics import f1_score

from trainer.reporting.stats import bootstrap_mean

__all__ = ["MISSING", "holm", "subgroup_table"]

MISSING = "(missing)"


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the input's order."""
    p_values = np.asarray(p_values, dtype=np.float64)
    m = len(p_values)
    order = np.argsort(p_values, kind="stable")
    stepped = np.minimum(1.0, (m - np.arange(m)) * p_values[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(stepped)  # adjusted values never fall as p grows
    return adjusted


def _group_names(values: list) -> np.ndarray:
    return np.array([MISSING if v is None or not str(v).strip() else str(v) for v in values], dtype=object)


def _below_rest_p(correct: np.ndarray, members: np.ndarray) -> float | None:
    """One-sided Fisher exact p that the odds of a correct answer are lower in the group than outside."""
    if members.all():
        return None
    inside, outside = correct[members], correct[~members]
    table = [[inside.sum(), len(inside) - inside.sum()], [outside.sum(), len(outside) - outside.sum()]]
    return float(fisher_exact(table, alternative="less").pvalue)


def _column_rows(
    labels: np.ndarray,
    predictions: np.ndarray,
    names: np.ndarray,
    class_count: int,
    *,
    seed: int,
    rounds: int,
    alpha: float,
) -> list[dict]:
    correct = predictions == labels
    groups = sorted(set(names))
    members = [names == group for group in groups]
    raw = [_below_rest_p(correct, mask) for mask in members]
    tested = [i for i, p in enumerate(raw) if p is not None]
    corrected: list[float | None] = [None] * len(groups)
    for i, p in zip(tested, holm(np.array([raw[i] for i in tested])), strict=True):
        corrected[i] = float(p)
    rows = []
    for group, mask, p in zip(groups, members, corrected, strict=True):
        accuracy = bootstrap_mean(correct[mask], rounds=rounds, seed=seed)
        f1 = f1_score(
            labels[mask], predictions[mask], labels=range(class_count), average="macro", zero_division=0
        )
        rows.append(
            {
                "group": group,
                "support": int(mask.sum()),
                "accuracy": accuracy.to_json(),
                "f1_macro": round(float(f1), 6),
                "flagged": p is not None and p < alpha,
                "p_value": None if p is None else float(f"{p:.6g}"),
            }
        )
    return sorted(rows, key=lambda row: (row["accuracy"]["value"], row["group"]))


def subgroup_table(
    labels: np.ndarray,
    predictions: np.ndarray,
    groups: dict[str, list[str]],
    class_count: int,
    *,
    seed: int = 0,
    rounds: int = 1000,
    alpha: float = 0.05,
) -> dict[str, list[dict]]:
    """Per column of ``groups`` (one value per image), one row per distinct value, worst accuracy first:
    group, support, accuracy with a 95 % bootstrap interval, macro F1 over ``class_count``
    classes, flagged, and the Holm-corrected p-value of "below the rest". Empty values form ``(missing)``."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.shape != predictions.shape or labels.ndim != 1:
        raise ValueError(
            f"labels and predictions must both be (N,); got {labels.shape} and {predictions.shape}"
        )
    table = {}
    for column, values in groups.items():
        if len(values) != len(labels):
            raise ValueError(f"column {column!r} has {len(values)} values for {len(labels)} images")
        table[column] = _column_rows(
            labels, predictions, _group_names(values), class_count, seed=seed, rounds=rounds, alpha=alpha
        )
    return table
