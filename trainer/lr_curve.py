"""The range test's curve (Smith, 2017): the exponential learning-rate schedule, fastai's smoothing
and stopping, and fastai's rules for reading a rate off the curve (``fastai.callback.schedule``).

Pure functions on numbers: ``trainer.lr_find`` runs them on a real model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "MIN_POINTS",
    "StopReason",
    "Suggestions",
    "Sweep",
    "exponential_lrs",
    "minimum",
    "slide",
    "smooth_losses",
    "steepest",
    "suggest",
    "suggestion_window",
    "sweep",
    "valley",
]

StopReason = Literal["completed", "diverged", "non_finite"]

MIN_POINTS = 10  # a suggestion read off fewer smoothed points is noise
_SKIP_END = 5  # fastai drops the last 5 points: the smoothed loss there lags the divergence


# --- the sweep: lr schedule, smoothing, stopping ---


def exponential_lrs(start_lr: float, end_lr: float, num_steps: int) -> np.ndarray:
    """``num_steps`` rates from ``start_lr`` to ``end_lr`` inclusive, a constant factor apart."""
    return np.geomspace(start_lr, end_lr, num_steps)


class _Smoother:
    """fastai's AvgSmoothLoss: an exponential moving average divided by ``1 - beta**n``, so the first
    values are not pulled towards the zero it starts from."""

    def __init__(self, beta: float) -> None:
        self.beta, self.average, self.count = beta, 0.0, 0

    def update(self, value: float) -> float:
        self.count += 1
        self.average = self.beta * self.average + (1.0 - self.beta) * value
        return self.average / (1.0 - self.beta**self.count)


def smooth_losses(losses: Sequence[float], smoothing: float = 0.98) -> np.ndarray:
    smoother = _Smoother(smoothing)
    return np.array([smoother.update(v) for v in losses], dtype=np.float64)


@dataclass(frozen=True)
class Sweep:
    losses: tuple[float, ...]  # the raw mini-batch loss at each step run
    smoothed: tuple[float, ...]
    stop_reason: StopReason


def sweep(
    lrs: Sequence[float],
    step: Callable[[float], float],
    *,
    diverge_factor: float = 4.0,
    smoothing: float = 0.98,
) -> Sweep:
    """Call ``step(lr)`` (one optimisation step, returning its loss) for each rate until the smoothed
    loss exceeds ``diverge_factor`` times its minimum or is not finite (that step is kept)."""
    smoother = _Smoother(smoothing)
    losses: list[float] = []
    smoothed: list[float] = []
    best = math.inf
    reason: StopReason = "completed"
    for lr in lrs:
        loss = step(float(lr))
        losses.append(loss)
        smoothed.append(smoother.update(loss))
        if not math.isfinite(smoothed[-1]):
            reason = "non_finite"
            break
        best = min(best, smoothed[-1])
        if smoothed[-1] > diverge_factor * best:
            reason = "diverged"
            break
    return Sweep(tuple(losses), tuple(smoothed), reason)


# --- the suggestions: fastai.callback.schedule's rules, on the smoothed loss ---


@dataclass(frozen=True)
class Suggestions:
    valley: float  # fastai's default and the rate imgcls suggests: the longest descent, read early
    steepest: float  # where the smoothed loss falls fastest per decade of lr
    minimum: float  # a tenth of the rate at the lowest smoothed loss
    slide: float | None  # fastai's interval slide rule; None on a curve shorter than its window

    def as_dict(self) -> dict[str, float | None]:
        return {
            "valley": self.valley,
            "steepest": self.steepest,
            "minimum": self.minimum,
            "slide": self.slide,
        }


def valley(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai's ``valley``: find the longest strictly decreasing run of losses (not necessarily
    contiguous: the longest decreasing subsequence ending at each point), and take the rate a half of
    the way into it (a third plus a sixth), where the loss still falls but well before it turns."""
    n = len(losses)
    longest = [1] * n
    max_start, max_end = 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
            if longest[max_end] < longest[i]:
                max_end = i
                max_start = max_end - longest[max_end]
    sections = (max_end - max_start) / 3
    index = max_start + int(sections) + int(sections / 2)
    return float(lrs[max(index, 0)])  # fastai's max_start is -1 for a run from the first point


def steepest(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai's ``steep`` (the rate where the loss's slope against log(lr) is most negative), read on the
    descent only, up to the lowest loss: fastai reads the whole curve, where a loss falling back after a
    spike past the minimum (seen on digits) wins with a rate that diverges."""
    values = np.asarray(losses, dtype=np.float64)
    descent = int(np.argmin(values)) + 1
    if descent < 2:
        return float(lrs[0])  # no descent at all: the lowest rate
    slopes = np.diff(values[:descent]) / np.diff(np.log(np.asarray(lrs[:descent], dtype=np.float64)))
    return float(lrs[int(np.argmin(slopes))])


def minimum(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai's ``minimum``: a tenth of the rate at the lowest loss (that rate is already too high)."""
    return float(lrs[int(np.argmin(np.asarray(losses)))]) / 10


def slide(
    lrs: Sequence[float], losses: Sequence[float], lr_diff: int = 15, thresh: float = 0.005
) -> float | None:
    """fastai's ``slide``: walk a window of ``lr_diff`` points back from the end until the loss's
    gradient at its two ends agrees within ``thresh``; the rate at its left end. None when the curve
    has no more points than the window."""
    if len(losses) <= lr_diff:
        return None
    gradient = np.gradient(np.asarray(losses, dtype=np.float64))
    right, left = -1, -1 - lr_diff
    chosen = lrs[left]
    while left >= -len(losses) and abs(gradient[right] - gradient[left]) > thresh:
        chosen = lrs[left]
        right, left = right - 1, left - 1
    return float(chosen)


def suggestion_window(steps_run: int, smoothed: Sequence[float], num_steps: int) -> tuple[int, int]:
    """The steps ``[first, end)`` the suggestions read, as fastai's lr_find does: without the first
    tenth (the loss barely moves and its smoothing is still settling), the last 5, and anything from
    the first non-finite value on."""
    end = steps_run - _SKIP_END
    non_finite = [i for i, v in enumerate(smoothed) if not math.isfinite(v)]
    if non_finite:
        end = min(end, non_finite[0])
    return num_steps // 10, end


def suggest(lrs: Sequence[float], smoothed: Sequence[float]) -> Suggestions:
    """All four suggestions from a (trimmed) smoothed loss curve."""
    if len(lrs) != len(smoothed) or len(lrs) < 2:
        raise ValueError(f"need matching rates and losses, at least 2; got {len(lrs)} and {len(smoothed)}")
    return Suggestions(
        valley(lrs, smoothed), steepest(lrs, smoothed), minimum(lrs, smoothed), slide(lrs, smoothed)
    )
