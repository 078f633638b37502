"""Losses and the sampler for imbalanced classes (trainer/losses.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from imgcls.errors import ConfigError
from trainer.losses import FocalLoss, balanced_sampler, build_criterion, class_counts, class_weights


def test_inverse_frequency_weights_are_n_over_k_n_c_with_mean_one():
    weights = class_weights(np.array([100, 10, 10]), "inverse_frequency")

    expected = np.array([120 / 300, 120 / 30, 120 / 30])
    np.testing.assert_allclose(weights.numpy(), expected / expected.mean(), rtol=1e-6)
    assert weights.mean().item() == pytest.approx(1.0)


def test_effective_number_weights_follow_cui_et_al_and_grow_slower_than_inverse_frequency():
    counts = np.array([1000, 50, 5])
    beta = 0.99

    weights = class_weights(counts, "effective_number", beta).numpy()

    raw = (1 - beta) / (1 - beta**counts)
    np.testing.assert_allclose(weights, raw / raw.mean(), rtol=1e-6)
    inverse = class_weights(counts, "inverse_frequency").numpy()
    assert weights[2] / weights[0] < inverse[2] / inverse[0]  # less extreme
    assert weights[2] > weights[1] > weights[0]


def test_weights_refuse_a_class_without_training_images_and_none_means_none():
    assert class_weights(np.array([3, 4]), "none") is None
    with pytest.raises(ConfigError, match=r"classes \[1\] have no training images"):
        class_weights(np.array([3, 0, 2]), "inverse_frequency")


def test_focal_loss_with_gamma_zero_is_cross_entropy_weighted_or_not():
    torch.manual_seed(0)
    logits, target = torch.randn(16, 4), torch.randint(0, 4, (16,))
    weight = torch.tensor([0.5, 1.0, 1.5, 1.0])

    plain = FocalLoss(gamma=0.0)(logits, target)
    weighted = FocalLoss(gamma=0.0, weight=weight)(logits, target)

    assert plain.item() == pytest.approx(nn.functional.cross_entropy(logits, target).item(), rel=1e-5)
    # CrossEntropyLoss with weights divides by the targets' weight sum; focal averages over the batch
    manual = -(weight[target] * nn.functional.log_softmax(logits, 1)[torch.arange(16), target]).mean()
    assert weighted.item() == pytest.approx(manual.item(), rel=1e-5)


def test_focal_loss_down_weights_easy_examples_more_than_hard_ones():
    easy = torch.tensor([[6.0, 0.0, 0.0]])
    hard = torch.tensor([[0.2, 0.0, 0.0]])
    target = torch.tensor([0])
    focal, ce = FocalLoss(gamma=2.0), nn.CrossEntropyLoss()

    easy_ratio = focal(easy, target) / ce(easy, target)
    hard_ratio = focal(hard, target) / ce(hard, target)

    assert easy_ratio < 0.01 < hard_ratio < 1.0


def test_focal_loss_takes_probability_targets_and_label_smoothing_like_cross_entropy():
    torch.manual_seed(1)
    logits = torch.randn(8, 5)
    soft = torch.softmax(torch.randn(8, 5), dim=1)  # as MixUp/CutMix make them
    hard = torch.randint(0, 5, (8,))

    assert FocalLoss(0.0)(logits, soft).item() == pytest.approx(
        nn.CrossEntropyLoss()(logits, soft).item(), rel=1e-5
    )
    smoothed = FocalLoss(0.0, label_smoothing=0.1)(logits, hard)
    assert smoothed.item() == pytest.approx(
        nn.CrossEntropyLoss(label_smoothing=0.1)(logits, hard).item(), rel=1e-5
    )


def test_build_criterion_gives_the_configured_loss_with_its_weights():
    counts = class_counts([0, 0, 0, 1], 2)

    ce = build_criterion(
        "cross_entropy", counts=counts, weighting="inverse_frequency", beta=0.999, gamma=2, label_smoothing=0
    )
    focal = build_criterion(
        "focal", counts=counts, weighting="none", beta=0.999, gamma=1.5, label_smoothing=0
    )

    assert list(counts) == [3, 1]
    assert isinstance(ce, nn.CrossEntropyLoss) and ce.weight.tolist() == pytest.approx([0.5, 1.5])
    assert isinstance(focal, FocalLoss) and focal.gamma == 1.5 and focal.weight is None


def test_the_balanced_sampler_draws_every_class_about_equally_and_repeats_with_its_seed():
    labels = [0] * 900 + [1] * 90 + [2] * 10

    def draw(seed: int) -> list[int]:
        return list(balanced_sampler(labels, torch.Generator().manual_seed(seed)))

    drawn = draw(3)
    per_class = np.bincount(np.asarray(labels)[drawn], minlength=3)

    assert len(drawn) == len(labels)
    assert per_class.min() > 250 and per_class.max() < 420  # ~333 each, against 900/90/10
    assert drawn == draw(3) and drawn != draw(4)
