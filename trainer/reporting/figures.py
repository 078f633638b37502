"""The report's plots, as PNG files beside index.html (no network, no JavaScript)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np

__all__ = ["plot_confusion", "plot_reliability", "plot_robustness", "plot_roc_pr"]


def _save(figure: plt.Figure, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return f"{path.parent.name}/{path.name}"


def plot_confusion(confusion: np.ndarray, class_names: Sequence[str], path: Path) -> str:
    """Counts and row-normalised (recall per true class) side by side."""
    size = max(4.0, 0.45 * len(class_names) + 2)
    figure, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    rows = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros_like(confusion, dtype=float), where=rows > 0)
    for axis, values, title, fmt in (
        (axes[0], confusion, "counts", "d"),
        (axes[1], normalised, "row-normalised", ".2f"),
    ):
        axis.imshow(values, cmap="Blues")
        axis.set_title(title)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        ticks = range(len(class_names))
        axis.set_xticks(ticks, class_names, rotation=90 if len(class_names) > 6 else 0, fontsize=7)
        axis.set_yticks(ticks, class_names, fontsize=7)
        if len(class_names) <= 20:
            top = values.max() if values.size else 0
            for (i, j), value in np.ndenumerate(values):
                axis.text(
                    j,
                    i,
                    format(value, fmt),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if value > top / 2 else "black",
                )
    return _save(figure, path)


def plot_roc_pr(curves: dict[str, dict], path: Path) -> str:
    """One-vs-rest ROC and precision-recall curves, one line per class."""
    figure, (roc, pr) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, curve in curves.items():
        roc.plot(curve["fpr"], curve["tpr"], linewidth=1, label=name)
        pr.plot(curve["recall"], curve["precision"], linewidth=1, label=name)
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (one vs rest)")
    pr.set(xlabel="recall", ylabel="precision", title="precision-recall (one vs rest)")
    if len(curves) <= 20:
        pr.legend(fontsize=6, loc="lower left", ncol=2)
    return _save(figure, path)


def plot_reliability(before: list[dict], after: list[dict] | None, path: Path) -> str:
    """Accuracy against confidence per bin, before and after temperature scaling."""
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfectly calibrated")
    for bins, label, marker in ((before, "softmax", "o"), (after, "temperature-scaled", "s")):
        if bins:
            axis.plot(
                [b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker=marker, label=label
            )
    axis.set(xlabel="confidence (top class)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02))
    axis.set_title("reliability diagram")
    axis.legend(loc="upper left", fontsize=8)
    return _save(figure, path)


def plot_robustness(robustness: dict, path: Path) -> str:
    """Accuracy against severity, one line per corruption, the clean accuracy dotted."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, entry in robustness["corruptions"].items():
        axis.plot(
            range(1, len(entry["accuracy"]) + 1), entry["accuracy"], marker="o", linewidth=1, label=name
        )
    axis.axhline(robustness["clean_accuracy"], color="black", linestyle=":", linewidth=1, label="clean")
    axis.set(xlabel="severity", ylabel="accuracy", ylim=(0, 1.02), title="accuracy under corruption")
    axis.set_xticks(range(1, 6))
    axis.legend(fontsize=7, ncol=2, loc="lower left")
    return _save(figure, path)
