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
- Multilabel (``task: multilabel``): per-label sigmoid losses (:class:`MultilabelLoss`: binary
  cross-entropy, focal, asymmetric), with ``negatives / positives`` as each label's positive weight.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import WeightedRandomSampler

from imgcls.errors import ConfigError

_FOCUS_FLOOR = 1e-12  # (1e-12) ** gamma is 0 for any loss that matters, with a finite slope

__all__ = [
    "FocalLoss",
    "MultilabelLoss",
    "balanced_sampler",
    "build_criterion",
    "class_counts",
    "class_weights",
    "label_pos_weight",
]


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
        # clamped above 0: x ** gamma has an infinite slope at 0 for gamma < 1 (NaN gradients once p saturates)
        focus = (1.0 - log_p.exp()).clamp(min=_FOCUS_FLOOR).pow(self.gamma)
        per_class = -target * focus * log_p
        if self.weight is not None:
            per_class = per_class * self.weight.to(per_class.device)
        return per_class.sum(dim=1).mean()


class MultilabelLoss(nn.Module):
    """Per-label losses on sigmoid outputs, averaged over images and labels (as ``BCEWithLogitsLoss``):
    ``bce``; ``focal`` (torchvision's ``sigmoid_focal_loss``, no alpha); ``asymmetric`` (ASL, Ridnik et
    al., 2021: positives weighted by ``(1 - p) ** gamma_pos``, negatives by ``p_m ** gamma_neg`` with
    ``p_m = max(p - clip, 0)``, so easy negatives, the bulk of a multilabel batch, fade out and very
    easy ones count for nothing). Label smoothing moves targets to ``eps / 2`` and ``1 - eps / 2``;
    ``pos_weight`` scales each label's positive term (``optim.class_weights=inverse_frequency``)."""

    def __init__(
        self,
        kind: str,
        *,
        pos_weight: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
        gamma: float = 2.0,
        gamma_neg: float = 4.0,
        gamma_pos: float = 0.0,
        clip: float = 0.05,
    ) -> None:
        super().__init__()
        if kind not in ("bce", "focal", "asymmetric"):
            raise ValueError(f"unknown multilabel loss {kind!r}")
        self.kind = kind
        self.label_smoothing = label_smoothing
        self.gamma, self.gamma_neg, self.gamma_pos, self.clip = gamma, gamma_neg, gamma_pos, clip
        self.register_buffer("pos_weight", pos_weight if pos_weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        if self.label_smoothing:
            target = target * (1.0 - self.label_smoothing) + self.label_smoothing / 2
        pos_weight = self.pos_weight.to(logits.device) if self.pos_weight is not None else None
        if self.kind == "bce":
            return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)
        p = torch.sigmoid(logits)
        log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
        if self.kind == "focal":
            p_t = p * target + (1 - p) * (1 - target)
            positive = target * log_p * (pos_weight if pos_weight is not None else 1.0)
            per_label = -(positive + (1 - target) * log_not_p) * (1 - p_t).clamp(min=_FOCUS_FLOOR).pow(
                self.gamma
            )
            return per_label.mean()
        shifted = (p - self.clip).clamp(min=0) if self.clip > 0 else p
        # log(1 - p_m) from the shifted probability; clamped so a fully confident negative costs 0, not -inf
        log_not_shifted = torch.log((1 - shifted).clamp(min=1e-8)) if self.clip > 0 else log_not_p
        # the focusing bases are floored above 0 for the same reason as the focal loss's
        positive = target * (1 - p).clamp(min=_FOCUS_FLOOR).pow(self.gamma_pos) * log_p
        if pos_weight is not None:
            positive = positive * pos_weight
        negative = (1 - target) * shifted.clamp(min=_FOCUS_FLOOR).pow(self.gamma_neg) * log_not_shifted
        return -(positive + negative).mean()


def label_pos_weight(positives: np.ndarray, num_images: int) -> torch.Tensor:
    """``negatives / positives`` per label (``BCEWithLogitsLoss``'s pos_weight), so a rare label's few
    positives weigh as much as its many negatives."""
    positives = np.asarray(positives, dtype=np.float64)
    if (positives <= 0).any():
        missing = [int(i) for i in np.flatnonzero(positives <= 0)]
        raise ConfigError(
            f"optim.class_weights=inverse_frequency: labels {missing} (indices into labels.json) have no "
            "positive training images, so they have no weight; add images with them, or set "
            "optim.class_weights=none"
        )
    return torch.tensor((num_images - positives) / positives, dtype=torch.float32)


def build_criterion(
    loss: str,
    *,
    counts: np.ndarray,
    weighting: str,
    beta: float,
    gamma: float,
    label_smoothing: float,
    multilabel_images: int | None = None,
    asymmetric: tuple[float, float, float] = (4.0, 0.0, 0.05),
) -> nn.Module:
    """The training loss the config names, with its class weights. For multilabel runs pass
    ``multilabel_images`` (the training images; ``counts`` are then each label's positives) and the
    asymmetric loss's ``(gamma_neg, gamma_pos, clip)``."""
    if multilabel_images is not None:
        if weighting not in ("none", "inverse_frequency"):
            raise ConfigError(
                f"optim.class_weights={weighting} is single-label; multilabel takes inverse_frequency"
            )
        pos_weight = label_pos_weight(counts, multilabel_images) if weighting == "inverse_frequency" else None
        gamma_neg, gamma_pos, clip = asymmetric
        return MultilabelLoss(
            loss,
            pos_weight=pos_weight,
            label_smoothing=label_smoothing,
            gamma=gamma,
            gamma_neg=gamma_neg,
            gamma_pos=gamma_pos,
            clip=clip,
        )
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
