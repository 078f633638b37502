"""End-of-run evaluation on the test split, and the plots a person looks at.

Kept separate from the training loop so the fuller evaluation report (calibration, per-class
errors, a gallery of mistakes) can grow here without touching it.
"""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np
from scipy.special import softmax
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

__all__ = ["classification_metrics", "plot_confusion_matrix", "plot_curves", "write_per_class_csv"]


def classification_metrics(logits: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, top-5 (with more than 5 classes), macro precision/recall/F1, and the per-class table."""
    predictions = logits.argmax(axis=1)
    all_labels = np.arange(len(class_names))
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predictions, labels=all_labels, average="macro", zero_division=0
    )
    per_p, per_r, per_f, per_support = precision_recall_fscore_support(
        labels, predictions, labels=all_labels, average=None, zero_division=0
    )
    metrics: dict = {
        "samples": len(labels),
        "accuracy": float(accuracy_score(labels, predictions)),
        "precision_macro": float(precision),
        "recall_macro": float(recall),
        "f1_macro": float(f1),
    }
    if len(class_names) > 5:
        probabilities = softmax(logits.astype(np.float64), axis=1)
        metrics["top5_accuracy"] = float(top_k_accuracy_score(labels, probabilities, k=5, labels=all_labels))
    metrics["per_class"] = {
        name: {
            "precision": float(per_p[i]),
            "recall": float(per_r[i]),
            "f1": float(per_f[i]),
            "support": int(per_support[i]),
        }
        for i, name in enumerate(class_names)
    }
    metrics["confusion_matrix"] = confusion_matrix(labels, predictions, labels=all_labels).tolist()
    return metrics


def write_per_class_csv(path: Path, metrics: dict) -> None:
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "precision", "recall", "f1", "support"])
        for name, row in metrics["per_class"].items():
            writer.writerow(
                [name, f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", row["support"]]
            )


def plot_confusion_matrix(path: Path, matrix: list[list[int]], class_names: list[str]) -> None:
    size = min(4 + 0.45 * len(class_names), 30)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=class_names).plot(
        ax=ax, cmap="Blues", colorbar=False, include_values=len(class_names) <= 30, xticks_rotation="vertical"
    )
    ax.set_title("Confusion matrix (test split)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(path: Path, rows: list[dict[str, float]]) -> None:
    """Loss and accuracy per epoch, train against validation (live weights, and the EMA's when on)."""
    epochs = [r["epoch"] for r in rows]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(epochs, [r["train_loss"] for r in rows], label="train")
    loss_ax.plot(epochs, [r["val_loss"] for r in rows], label="val")
    with_ema = all("ema_val_loss" in r for r in rows)
    if with_ema:
        loss_ax.plot(epochs, [r["ema_val_loss"] for r in rows], label="val (EMA)", linestyle="--")
    loss_ax.set(title="Loss", xlabel="epoch")
    acc_ax.plot(epochs, [r["train_accuracy"] for r in rows], label="train")
    acc_ax.plot(epochs, [r["val_accuracy"] for r in rows], label="val")
    if with_ema:
        acc_ax.plot(epochs, [r["ema_val_accuracy"] for r in rows], label="val (EMA)", linestyle="--")
    acc_ax.set(title="Accuracy", xlabel="epoch", ylim=(0, 1.005))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
