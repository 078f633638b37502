"""The classical baseline: logistic regression on downsampled pixels (scikit-learn).

It answers "what does the network add over a linear model of a thumbnail?" on the same split.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.nn import functional as F

__all__ = ["THUMBNAIL_SIDE", "logistic_regression_baseline", "thumbnails"]

THUMBNAIL_SIDE = 16


def thumbnails(crops: torch.Tensor, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """uint8 crops ``[N, C, h, w]`` -> float ``[N, C * side * side]`` in [0, 1] (area-averaged)."""
    small = F.adaptive_avg_pool2d(crops.float() / 255.0, (side, side))
    return small.reshape(len(crops), -1).numpy()


def logistic_regression_baseline(
    train_crops: torch.Tensor,
    train_labels: np.ndarray,
    crops: torch.Tensor,
    labels: np.ndarray,
    class_count: int,
    *,
    seed: int = 0,
) -> dict:
    """Fit on the training crops' thumbnails, score on ``crops``: accuracy and macro F1."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300, C=1.0, random_state=seed))
    model.fit(thumbnails(train_crops), train_labels)
    predictions = model.predict(thumbnails(crops))
    return {
        "model": f"logistic regression on {THUMBNAIL_SIDE}x{THUMBNAIL_SIDE} pixels (scikit-learn)",
        "train_images": len(train_labels),
        "accuracy": round(float(accuracy_score(labels, predictions)), 6),
        "f1_macro": round(
            float(f1_score(labels, predictions, labels=range(class_count), average="macro", zero_division=0)),
            6,
        ),
    }
