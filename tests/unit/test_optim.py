from __future__ import annotations

import pytest
import torch

from trainer.config import OptimConfig
from trainer.models import SimpleCNN
from trainer.optim import build_optimizer, lr_factor, set_backbone_trainable


def _factor(step: int, **overrides) -> float:
    config = OptimConfig(**overrides)
    return lr_factor(step, total_steps=100, warmup_steps=10, config=config, steps_per_epoch=10)


def test_warmup_rises_linearly_from_the_start_factor_to_one():
    assert _factor(0, warmup_start_factor=0.1) == pytest.approx(0.1)
    assert _factor(5, warmup_start_factor=0.1) == pytest.approx(0.55)
    assert _factor(10, warmup_start_factor=0.1) == pytest.approx(1.0)


def test_cosine_decays_to_the_floor_at_the_last_step():
    assert _factor(55, min_lr_factor=0.0) == pytest.approx(0.5)
    assert _factor(100, min_lr_factor=0.01) == pytest.approx(0.01)


def test_step_schedule_multiplies_by_gamma_every_step_epochs():
    assert _factor(19, scheduler="step", step_epochs=2, step_gamma=0.1) == pytest.approx(1.0)
    assert _factor(20, scheduler="step", step_epochs=2, step_gamma=0.1) == pytest.approx(0.1)
    assert _factor(45, scheduler="step", step_epochs=2, step_gamma=0.1) == pytest.approx(0.01)


def test_backbone_groups_get_the_scaled_lr_and_norms_are_not_decayed():
    model = SimpleCNN(num_classes=3)
    optimizer = build_optimizer(
        model, OptimConfig(lr=0.01, weight_decay=0.05), ("head",), backbone_lr_scale=0.1
    )
    groups = {g["group_name"]: g for g in optimizer.param_groups}
    assert groups["head"]["lr"] == pytest.approx(0.01)
    assert groups["backbone"]["lr"] == pytest.approx(0.001)
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0
    assert groups["backbone"]["weight_decay"] == 0.05
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_sgd_is_built_with_momentum():
    optimizer = build_optimizer(SimpleCNN(3), OptimConfig(optimizer="sgd", momentum=0.8), ("head",), 1.0)
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["momentum"] == 0.8


def test_freezing_the_backbone_leaves_only_the_head_trainable():
    model = SimpleCNN(num_classes=3)
    set_backbone_trainable(model, ("head",), trainable=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"}
    set_backbone_trainable(model, ("head",), trainable=True)
    assert all(p.requires_grad for p in model.parameters())
