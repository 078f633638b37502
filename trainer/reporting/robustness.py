"""Accuracy under corruption, ImageNet-C style: every corruption at five severities on the same images.

The corruptions are applied to the crops the model sees (``trainer.reporting.corruptions``), seeded
per corruption and severity, so the table is the same on every run of the report.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from imgcls.manifest import PreprocessSpec
from trainer.reporting.corruptions import CORRUPTIONS, SEVERITIES, corrupt, describe
from trainer.reporting.predictions import logits_of

__all__ = ["robustness_table"]


def robustness_table(
    model: nn.Module, crops: torch.Tensor, labels: np.ndarray, spec: PreprocessSpec, *, seed: int = 0
) -> dict:
    """Accuracy per corruption and severity on ``crops``, the mean over all of them, and its ratio to
    the clean accuracy (1.0: nothing lost)."""
    clean = float((logits_of(model, crops, spec).argmax(axis=1) == labels).mean()) if len(labels) else 0.0
    table: dict[str, dict] = {}
    steps = [(name, severity) for name in CORRUPTIONS for severity in SEVERITIES]
    for index, (name, severity) in enumerate(tqdm(steps, desc="robustness", unit="corruption", leave=False)):
        corrupted = corrupt(crops, name, severity, seed=seed + index)
        accuracy = float((logits_of(model, corrupted, spec).argmax(axis=1) == labels).mean())
        entry = table.setdefault(name, {"accuracy": [], "descriptions": []})
        entry["accuracy"].append(round(accuracy, 6))
        entry["descriptions"].append(describe(name, severity, image_height=crops.shape[-2]))
    all_accuracies = [a for entry in table.values() for a in entry["accuracy"]]
    mean = float(np.mean(all_accuracies)) if all_accuracies else 0.0
    return {
        "images": len(labels),
        "seed": seed,
        "clean_accuracy": round(clean, 6),
        "corruptions": table,
        "mean_corruption_accuracy": round(mean, 6),
        "relative_to_clean": round(mean / clean, 6) if clean > 0 else None,
    }
