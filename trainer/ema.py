"""An exponential moving average of a model's weights, warmed up over the first steps.

A plain EMA with decay 0.99 still holds ``0.99 ** n`` of the random initial weights after ``n``
optimiser steps: about 40 % after 90 steps, which is 30 epochs of a 200-image dataset. Validated
and exported, that average is a chance-level model although training went well. As in
TensorFlow's ``ExponentialMovingAverage(num_updates=...)``, timm's ``ModelEmaV3`` and the
torchvision reference recipes, the decay therefore grows with the number of updates::

    decay_n = min(decay, (1 + n) / (10 + n))

so the average follows the live weights closely at first (0.1 at the first update, 0.5 at the
eighth) and the configured decay applies only once enough steps exist for it to mean anything.

BatchNorm statistics (floating-point buffers) are averaged with the same warmed-up decay as the
weights, as torchvision's reference does with ``use_buffers=True``: the running mean and variance
have to describe the activations of the *averaged* weights, and the live model's statistics were
gathered with other weights. Averaging them with the same decay keeps the two in step. Integer
buffers (``num_batches_tracked``) are copied.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ModelEma", "warmed_up_decay"]

_WARMUP_OFFSET = 10  # the "10" in (1 + n) / (10 + n)


def warmed_up_decay(decay: float, updates: int) -> float:
    """The decay used for update number ``updates`` (0 for the first)."""
    return min(decay, (1 + updates) / (_WARMUP_OFFSET + updates))


class ModelEma:
    """A copy of ``model`` whose parameters and float buffers trail the live ones.

    ``module`` is a plain model of the same class (same ``state_dict`` keys), so it can be
    validated, checkpointed and exported exactly like the live model.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @property
    def current_decay(self) -> float:
        """The decay the next :meth:`update` applies."""
        return warmed_up_decay(self.decay, self.updates)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights; call after every optimiser step."""
        weight = 1.0 - self.current_decay
        averaged: list[torch.Tensor] = []
        live: list[torch.Tensor] = []
        for (name, mine), theirs in zip(
            self.module.state_dict().items(), model.state_dict().values(), strict=True
        ):
            if mine.shape != theirs.shape:
                raise ValueError(f"EMA and live model differ at {name}: {mine.shape} vs {theirs.shape}")
            if mine.is_floating_point():
                averaged.append(mine)
                live.append(theirs.detach())
            else:
                mine.copy_(theirs)
        if averaged:
            torch._foreach_lerp_(averaged, live, weight)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "decay": self.decay, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`, or the ``AveragedModel`` state of runs written before the warm-up."""
        if "module" in state and "updates" in state:
            self.module.load_state_dict(state["module"])
            self.updates = int(state["updates"])
            return
        # torch.optim.swa_utils.AveragedModel: the model's keys under "module.", and "n_averaged".
        legacy = {k.removeprefix("module."): v for k, v in state.items() if k.startswith("module.")}
        self.module.load_state_dict(legacy)
        self.updates = int(state["n_averaged"]) if "n_averaged" in state else 0
