"""Optimizer with head/backbone parameter groups, the learning-rate schedule, and the freeze schedule."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from trainer.config import OptimConfig

__all__ = ["build_optimizer", "build_scheduler", "is_head", "lr_factor", "set_backbone_trainable"]


def is_head(name: str, head_prefixes: tuple[str, ...]) -> bool:
    """Whether parameter ``name`` belongs to the classifier head (some timm models have two heads)."""
    return any(name == prefix or name.startswith(prefix + ".") for prefix in head_prefixes)


def _no_decay(name: str, param: nn.Parameter) -> bool:
    # Biases and norm scales are not decayed (timm/torchvision references do the same).
    return param.ndim <= 1 or name.endswith(".bias")


def build_optimizer(
    model: nn.Module, config: OptimConfig, head_prefixes: tuple[str, ...], backbone_lr_scale: float
) -> torch.optim.Optimizer:
    """Four groups: (backbone, head) × (decay, no decay); the backbone's lr is scaled by ``backbone_lr_scale``."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        groups.setdefault((is_head(name, head_prefixes), _no_decay(name, param)), []).append(param)
    param_groups = [
        {
            "params": params,
            "lr": config.lr * (1.0 if is_head else backbone_lr_scale),
            "weight_decay": 0.0 if no_decay else config.weight_decay,
            "group_name": ("head" if is_head else "backbone") + ("_no_decay" if no_decay else ""),
        }
        for (is_head, no_decay), params in sorted(groups.items())
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    return torch.optim.AdamW(param_groups, lr=config.lr)


def lr_factor(
    step: int, *, total_steps: int, warmup_steps: int, config: OptimConfig, steps_per_epoch: int
) -> float:
    """The multiplier on each group's base lr at optimizer step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        start = config.warmup_start_factor
        return start + (1.0 - start) * step / warmup_steps
    if config.scheduler == "constant":
        return 1.0
    if config.scheduler == "step":
        return config.step_gamma ** ((step // steps_per_epoch) // config.step_epochs)
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    floor = config.min_lr_factor
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: OptimConfig, epochs: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step schedule: linear warm-up, then cosine, step or constant."""
    total = epochs * steps_per_epoch
    warmup = min(total, round(config.warmup_epochs * steps_per_epoch))
    factor = partial(
        lr_factor, total_steps=total, warmup_steps=warmup, config=config, steps_per_epoch=steps_per_epoch
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def set_backbone_trainable(model: nn.Module, head_prefixes: tuple[str, ...], trainable: bool) -> None:
    """Freeze or unfreeze every parameter outside the head (transfer learning's first phase)."""
    for name, param in model.named_parameters():
        if not is_head(name, head_prefixes):
            param.requires_grad_(trainable)
