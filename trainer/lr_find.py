"""``imgcls lr-find``: the learning-rate range test (Smith, 2017), as fastai's ``Learner.lr_find`` runs it.

A throw-away copy of the run's model trains on the training split while the learning rate grows
exponentially from ``start_lr`` to ``end_lr``, one mini-batch per step. The loss, smoothed the way
fastai's Recorder smooths it, traces where training starts to work, where it works fastest and where
it blows up; the test stops there (the smoothed loss beyond ``diverge_factor`` times its minimum).
fastai's rules then read a learning rate off the curve: ``valley`` (fastai's default, and ours),
``steepest``, ``minimum`` and ``slide``.

Model, optimizer (its parameter groups and backbone scaling), loss, augmentation, MixUp/CutMix and
batches are built by ``trainer.train`` exactly as ``imgcls train`` builds them, so the rate found is
the ``optim.lr`` of that recipe. Nothing of a run is written, and the model is thrown away.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np
import torch

from imgcls.errors import ConfigError, DataError
from trainer.config import RunConfig
from trainer.config_edit import format_lr
from trainer.engine import optimisation_step
from trainer.fit import Compute, Loaders, TrainingState, epoch_seed
from trainer.lr_curve import (
    MIN_POINTS,
    StopReason,
    Suggestions,
    Sweep,
    exponential_lrs,
    suggest,
    suggestion_window,
    sweep,
)
from trainer.train import (
    build_loaders,
    build_training_state,
    create_run_model,
    load_data,
    set_up_compute,
    train_label_counts,
)

__all__ = ["LrFinderResult", "find_lr", "write_outputs"]

log = logging.getLogger("imgcls.lr_find")

_MIN_STEPS = 20  # fewer leave too short a curve once fastai's trimming is done


# --- the test on a real model ---


@dataclass(frozen=True)
class LrFinderResult:
    lrs: tuple[float, ...]  # the rate of each step run: the head's, i.e. what optim.lr means
    losses: tuple[float, ...]  # the raw mini-batch loss
    smoothed_losses: tuple[float, ...]
    suggestions: Suggestions
    stop_reason: StopReason
    steps: int  # steps run, at most num_steps
    window: tuple[int, int]  # the steps [first, end) the suggestions read
    start_lr: float
    end_lr: float
    num_steps: int
    diverge_factor: float
    smoothing: float
    config_lr: float  # the config's optim.lr, for comparison
    device: str

    @property
    def suggested_lr(self) -> float:
        return self.suggestions.valley


def find_lr(
    config: RunConfig,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    diverge_factor: float = 4.0,
    smoothing: float = 0.98,
) -> LrFinderResult:
    """Run the range test on the model, data and optimizer ``imgcls train`` would build from ``config``;
    nothing is written, and the model is thrown away."""
    _check_settings(start_lr, end_lr, num_steps, diverge_factor, smoothing)
    compute = set_up_compute(config)  # seeds from train.seed
    data = load_data(config, None)
    built = create_run_model(config, data)
    loaders = build_loaders(config, data, compute)
    state = build_training_state(config, built, train_label_counts(data), loaders, compute)
    if len(loaders.train) == 0:
        raise DataError("the training split has no batches; check data.path and the split fractions")
    log.info(
        "lr-find: up to %d steps from %.1e to %.1e, %d training images in %d batches per pass, on %s",
        num_steps,
        start_lr,
        end_lr,
        len(data.splits["train"]),
        len(loaders.train),
        compute.device,
    )
    lrs = exponential_lrs(start_lr, end_lr, num_steps)
    step = _step_function(config, state, compute, _batches(loaders, config.train.seed))
    result = sweep(lrs, step, diverge_factor=diverge_factor, smoothing=smoothing)
    steps = len(result.losses)
    first, end = suggestion_window(steps, result.smoothed, num_steps)
    if end - first < MIN_POINTS:
        raise ConfigError(_too_short(result, lrs, steps, first, end))
    suggestions = suggest(lrs[first:end], result.smoothed[first:end])
    log.info(
        "lr-find: %d steps (%s); valley suggests optim.lr=%s",
        steps,
        result.stop_reason,
        format_lr(suggestions.valley),
    )
    return LrFinderResult(
        lrs=tuple(float(v) for v in lrs[:steps]),
        losses=result.losses,
        smoothed_losses=result.smoothed,
        suggestions=suggestions,
        stop_reason=result.stop_reason,
        steps=steps,
        window=(first, end),
        start_lr=start_lr,
        end_lr=end_lr,
        num_steps=num_steps,
        diverge_factor=diverge_factor,
        smoothing=smoothing,
        config_lr=config.optim.lr,
        device=str(compute.device),
    )


def _check_settings(
    start_lr: float, end_lr: float, num_steps: int, diverge_factor: float, smoothing: float
) -> None:
    if not (0 < start_lr < end_lr) or not math.isfinite(end_lr):
        raise ConfigError(
            f"--start-lr ({start_lr:g}) must be positive and below --end-lr ({end_lr:g}); e.g. 1e-7 and 10"
        )
    if num_steps < _MIN_STEPS:
        raise ConfigError(f"--steps ({num_steps}) must be at least {_MIN_STEPS}; 100 is usual")
    if diverge_factor <= 1:
        raise ConfigError(f"diverge_factor ({diverge_factor:g}) must be above 1; 4 is fastai's")
    if not 0 <= smoothing < 1:
        raise ConfigError(f"smoothing ({smoothing:g}) must be in [0, 1); 0.98 is fastai's")


def _too_short(result: Sweep, lrs: np.ndarray, steps: int, first: int, end: int) -> str:
    usable = max(end - first, 0)
    if result.stop_reason == "completed":
        return f"only {usable} usable point(s) of {steps} steps; raise --steps (100 is usual)"
    what = "became non-finite" if result.stop_reason == "non_finite" else "diverged"
    return (
        f"the loss {what} after {steps} step(s), at lr {lrs[steps - 1]:.2g}, leaving {usable} usable point(s) "
        f"(at least {MIN_POINTS} needed): lower --start-lr (it is {lrs[0]:.2g}), or check the data and "
        "optim.grad_clip_norm if it diverges even there"
    )


def _batches(loaders: Loaders, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The training batches, pass after pass, each pass shuffled as ``fit`` shuffles that epoch."""
    for repeat in itertools.count():
        loaders.shuffle_generator.manual_seed(epoch_seed(seed, repeat))
        yield from loaders.train


def _step_function(
    config: RunConfig,
    state: TrainingState,
    compute: Compute,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
) -> Callable[[float], float]:
    """One optimisation step at a given rate, as ``engine.train_one_epoch`` takes it (autocast,
    channels_last, MixUp/CutMix, then ``engine.optimisation_step``: scaler and clipping), on the next
    batch. That loop owns its scheduler and iterates a whole loader, so only the step is shared."""
    model, optimizer, criterion, precision = state.model, state.optimizer, state.criterion, compute.precision
    # The scheduler built the groups at lr * warm-up factor; their base rates ("initial_lr") carry the
    # backbone's scale, which each group keeps relative to the head's rate, the one swept.
    ratios = [group.get("initial_lr", group["lr"]) / config.optim.lr for group in optimizer.param_groups]
    memory_format = torch.channels_last if compute.channels_last else torch.contiguous_format
    clip = config.optim.grad_clip_norm
    model.train()

    def step(lr: float) -> float:
        for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
            group["lr"] = lr * ratio
        images, targets = next(batches)
        images = images.to(compute.device, non_blocking=True).contiguous(memory_format=memory_format)
        targets = targets.to(compute.device, non_blocking=True)
        if state.mixer is not None:
            images, targets = state.mixer(images, targets)
        with precision.autocast():
            loss = criterion(model(images), targets)
        value = loss.item()
        if not math.isfinite(value):
            return value  # the sweep stops here: no step on a non-finite loss
        optimisation_step(loss, model, optimizer, precision, clip)
        return value

    return step


# --- outputs: lr_find.csv, lr_find.json, lr_find.png ---


def write_outputs(result: LrFinderResult, out_dir: Path) -> dict[str, Path]:
    """The curve (csv), the suggestions and settings (json) and the plot (png) in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / "lr_find.csv", "json": out_dir / "lr_find.json", "png": out_dir / "lr_find.png"}
    with paths["csv"].open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "lr", "loss", "smoothed_loss"])
        for index, row in enumerate(zip(result.lrs, result.losses, result.smoothed_losses, strict=True)):
            writer.writerow([index + 1, *(f"{v:.6g}" for v in row)])
    summary = {
        "suggested_lr": result.suggested_lr,
        "suggestion": "valley",
        "suggestions": result.suggestions.as_dict(),
        "config_lr": result.config_lr,
        "stop_reason": result.stop_reason,
        "steps": result.steps,
        "window": {"first_step": result.window[0] + 1, "last_step": result.window[1]},
        "settings": {
            "start_lr": result.start_lr,
            "end_lr": result.end_lr,
            "num_steps": result.num_steps,
            "diverge_factor": result.diverge_factor,
            "smoothing": result.smoothing,
        },
        "device": result.device,
    }
    paths["json"].write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    _plot(paths["png"], result)
    return paths


def _plot(path: Path, result: LrFinderResult) -> None:
    lrs, raw, smoothed = (
        np.asarray(v, dtype=np.float64) for v in (result.lrs, result.losses, result.smoothed_losses)
    )
    finite = np.isfinite(smoothed)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    shown = np.isfinite(raw)
    ax.plot(lrs[shown], raw[shown], color="0.8", linewidth=0.8, label="loss per batch")
    ax.plot(lrs[finite], smoothed[finite], color="C0", linewidth=2, label="smoothed loss")
    markers = {"valley": ("C3", "o"), "steepest": ("C1", "v"), "minimum": ("C2", "s"), "slide": ("C4", "D")}
    for name, lr in result.suggestions.as_dict().items():
        if lr is None:
            continue
        color, marker = markers[name]
        loss = np.interp(np.log(lr), np.log(lrs[finite]), smoothed[finite])
        label = f"{name} {format_lr(lr)}" + (" (suggested)" if name == "valley" else "")
        ax.plot([lr], [loss], marker=marker, color=color, markersize=8, linestyle="none", label=label)
    ax.axvline(result.suggested_lr, color="C3", linestyle="--", linewidth=1)
    # the raw loss spikes by orders of magnitude as it diverges: the smoothed curve sets the top
    low = min(raw[shown].min(), smoothed[finite].min())
    high = smoothed[finite].max()
    ax.set_ylim(low - 0.05 * (high - low + 1e-12), high + 0.1 * (high - low + 1e-12))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (optim.lr; log scale)")
    ax.set_ylabel("training loss")
    ax.set_title(f"lr-find: suggested optim.lr = {format_lr(result.suggested_lr)} (valley)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
