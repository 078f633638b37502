"""Checkpoints: the best weights, and the full training state that ``--resume`` continues from.

The last checkpoint holds the model, optimizer, schedule, gradient scaler, EMA, the progress
of early stopping, and every RNG state, so a resumed run continues bit-for-bit.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imgcls.errors import ConfigError
from trainer.ema import ModelEma
from trainer.engine import MixedPrecision

__all__ = ["Progress", "load_training_state", "rng_state", "save_best", "save_training_state"]


def rng_state() -> dict:
    """This process's RNG states: Python's, NumPy's, torch's (and CUDA's)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Progress:
    """Where a run stands after ``epoch`` epochs: what early stopping and --resume need."""

    epoch: int = 0
    best_value: float | None = None
    best_epoch: int = 0
    best_weights: str = "live"  # "live" or "ema": which of the two scored best_value
    stale_epochs: int = 0
    history: list[dict] = field(default_factory=list)


def save_training_state(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    precision: MixedPrecision,
    ema: ModelEma | None,
    progress: Progress,
    rng_by_rank: list[dict] | None = None,
) -> None:
    """Everything --resume needs to continue bit-for-bit, RNG states included (with several
    processes, every rank's: ``rng_by_rank``, from :func:`rng_state` on each)."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": precision.scaler.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "progress": asdict(progress),
        "rng": rng_by_rank[0] if rng_by_rank else rng_state(),
        "rng_by_rank": rng_by_rank,
    }
    staging = path.with_suffix(".tmp")
    torch.save(state, staging)
    staging.replace(path)  # a crash mid-save keeps the previous checkpoint intact


def load_training_state(
    path: Path,
    device: torch.device,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    precision: MixedPrecision,
    ema: ModelEma | None,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> Progress:
    """The last checkpoint's state loaded into the pieces, and this rank's RNG states restored. Run
    with another number of processes than saved it, ranks above 0 get fresh augmentation streams
    (seeded by rank and epoch): the data order and the global batch are unchanged."""
    if not path.is_file():
        raise ConfigError(f"{path}: nothing to resume (no checkpoint yet); start a new run")
    state = torch.load(path, map_location="cpu", weights_only=False)  # RNG states must stay on the CPU
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    precision.scaler.load_state_dict(state["scaler"])
    if ema is not None and state.get("ema") is not None:
        ema.load_state_dict(state["ema"])
    by_rank = state.get("rng_by_rank")
    progress = Progress(**state["progress"])
    if by_rank and len(by_rank) == world_size:
        _restore_rng(by_rank[rank])
    elif rank == 0:
        _restore_rng(state["rng"])
    else:
        seed = torch.initial_seed() + 1_000_003 * rank + progress.epoch
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
    return progress


def save_best(path: Path, model: nn.Module, epoch: int, weights: str = "live") -> None:
    """The weights that scored best on validation, live or averaged (``weights``): what export reads."""
    staging = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "epoch": epoch, "weights": weights}, staging)
    staging.replace(path)
