"""The training loss and the train sampler for imbalanced classes (``optim.loss``,
``optim.class_weights``, ``train.sampler``).

- Class weights: inverse frequency (``n / (K * n_c)``), or the "effective number of samples" of Cui et
  al. (2019), ``(1 - beta) / (1 - beta ** n_c)``, which grows more slowly than ``1 / n_c`` because
  more images of a class add less new information; both normalised to mean 1 over the classes, so the
  loss keeps its scale (and the learning rate its meaning).
- Focal loss (Lin et al., 2017): cross-entropy scaled by ``(1 - p_t) ** gamma``, so the many easy
  examples stop drowning out the hard ones; ``gamma = 0`` is cross-entropy.
- A class-balanced sampler: each training image drawn with probability proportional to
  ``1 / n_c`` (with replacement), so every class is seen about equally often per epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import WeightedRandomSampler

from imgcls.errors import ConfigError

__all__ = ["FocalLoss", "balanced_sampler", "build_criterion", "class_counts", "class_weights"]


def class_counts(labels: Sequence[int], num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)


def class_weights(counts: np.ndarray, scheme: str, beta: float = 0.999) -> torch.Tensor | None:
    """Per-class loss weights, mean 1, for ``scheme`` ``inverse_frequency`` or ``effective_number``;
    None for ``none``."""
    if scheme == "none":
        return None
    counts = np.asarray(counts, dtype=np.float64)
    if (counts <= 0).any():
        missing = [int(i) for i in np.flatnonzero(counts <= 0)]
        raise ConfigError(
            f"optim.class_weights={scheme}: classes {missing} have no training images; weights need every class"
        )
    if scheme == "inverse_frequency":
        weights = counts.sum() / (len(counts) * counts)
    elif scheme == "effective_number":
        weights = (1.0 - beta) / (1.0 - np.power(beta, counts))
    else:
        raise ValueError(f"unknown class weighting {scheme!r}")
    return torch.tensor(weights / weights.mean(), dtype=torch.float32)


class FocalLoss(nn.Module):
    """``-sum_c t_c * w_c * (1 - p_c) ** gamma * log p_c``, averaged over the batch, for class-index
    targets or probability targets (MixUp, CutMix); label smoothing as ``nn.CrossEntropyLoss`` does."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1)
        classes = logits.shape[1]
        if target.dtype in (torch.int64, torch.int32, torch.long):
            target = F.one_hot(target.long(), classes).to(log_p.dtype)
        if self.label_smoothing:
            target = target * (1.0 - self.label_smoothing) + self.label_smoothing / classes
        focus = (1.0 - log_p.exp()).clamp(min=0.0).pow(self.gamma)
        per_class = -target * focus * log_p
        if self.weight is not None:
            per_class = per_class * self.weight.to(per_class.device)
        return per_class.sum(dim=1).mean()


def build_criterion(
    loss: str,
    *,
    counts: np.ndarray,
    weighting: str,
    beta: float,
    gamma: float,
    label_smoothing: float,
) -> nn.Module:
    """The training loss the config names, with its class weights."""
    weight = class_weights(counts, weighting, beta)
    if loss == "focal":
        return FocalLoss(gamma, weight, label_smoothing)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)


def balanced_sampler(labels: Sequence[int], generator: torch.Generator) -> WeightedRandomSampler:
    """Draws ``len(labels)`` indices per epoch, each class about equally often (with replacement)."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels)
    per_image = 1.0 / counts[labels]
    return WeightedRandomSampler(
        torch.as_tensor(per_image, dtype=torch.double),
        num_samples=len(labels),
        replacement=True,
        generator=generator,
    )
