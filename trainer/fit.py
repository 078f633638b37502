"""The epochs of a run: train, validate the live and the averaged weights, keep the better one.

Each epoch trains once over the training split, validates the live weights and (with EMA) the
averaged ones, keeps the better as the epoch's candidate for the best checkpoint, writes the
training state that ``--resume`` continues from, appends a row to ``metrics.csv`` and TensorBoard,
and stops early once the validation metric has not improved for ``train.early_stopping_patience``
epochs. ``trainer.train`` builds what this module takes (:class:`Loaders`, :class:`TrainingState`).
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from trainer.checkpoint import Progress, rng_state, save_best, save_training_state
from trainer.config import RunConfig
from trainer.distributed import Distributed
from trainer.ema import ModelEma
from trainer.engine import MixedPrecision, evaluate, train_one_epoch
from trainer.optim import set_backbone_trainable
from trainer.rundir import RunDir

__all__ = ["Compute", "Loaders", "TrainingState", "epoch_seed", "fit"]

log = logging.getLogger("imgcls.train")

_METRIC_COLUMNS = [
    "epoch",
    "lr",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "val_f1_macro",
    "val_balanced_accuracy",
    "ema_val_loss",
    "ema_val_accuracy",
    "ema_val_f1_macro",
    "ema_val_balanced_accuracy",
    "kept",
    "seconds",
]


@dataclass(frozen=True)
class Compute:
    """Where and how the run computes."""

    device: torch.device
    precision: MixedPrecision  # autocast dtype and gradient scaler (the scaler is checkpointed)
    channels_last: bool


@dataclass(frozen=True)
class Loaders:
    """The three splits' loaders; under torchrun, this rank's share of each."""

    train: DataLoader
    val: DataLoader
    test: DataLoader
    shuffle_generator: torch.Generator  # the train loader's; reseeded every epoch
    grad_accumulation_steps: int = 1  # train loader batches per optimizer step
    # the whole split's predictions from every rank's share (Distributed.gather_predictions)
    gather: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None

    @property
    def optimizer_steps_per_epoch(self) -> int:
        return max(1, len(self.train) // self.grad_accumulation_steps)


@dataclass
class TrainingState:
    """What the epochs update, and what the last checkpoint holds (with the gradient scaler)."""

    model: nn.Module
    head_prefixes: tuple[str, ...]  # the parameters trained while the backbone is frozen
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: nn.Module
    mixer: Callable | None  # MixUp/CutMix over a batch
    ema: ModelEma | None
    progress: Progress
    step_model: nn.Module | None = None  # what trains: the model in DistributedDataParallel, or None

    @property
    def training_model(self) -> nn.Module:
        return self.step_model if self.step_model is not None else self.model


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of the training split's shuffle (and sampler) in ``epoch``: the same on a resume."""
    return seed * 1000 + epoch


def fit(
    config: RunConfig,
    state: TrainingState,
    loaders: Loaders,
    compute: Compute,
    run: RunDir,
    dist: Distributed | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> None:
    """Train from ``state.progress.epoch`` to ``train.epochs``, or until early stopping. ``on_epoch``
    hears each epoch's number and the validation scores of the weights it kept, once the epoch is
    checkpointed (a search prunes a trial from there by raising).

    Under torchrun every rank runs the epochs and reaches the same decisions from the same gathered
    validation scores; rank 0 alone writes checkpoints, metrics and TensorBoard.
    """
    from torch.utils.tensorboard import SummaryWriter

    progress, dist = state.progress, dist or Distributed()
    purge_step = progress.epoch + 1 if progress.epoch else None
    writer = SummaryWriter(str(run.tensorboard), purge_step=purge_step) if dist.is_main else None
    with writer or nullcontext():
        for epoch in range(progress.epoch, config.train.epochs):
            row, val_stats = _train_and_validate(config, state, loaders, compute, epoch, dist)
            progress.epoch = epoch + 1
            progress.history.append(row)
            improved = _keep_if_best(config, state, run, val_stats, row["kept"], epoch + 1, dist.is_main)
            rng_by_rank = dist.all_gather(rng_state()) if dist.enabled else None
            if writer is not None:
                for key, value in row.items():
                    if key not in ("epoch", "kept"):
                        writer.add_scalar(key.replace("_", "/", 1), value, epoch + 1)
                save_training_state(
                    run.last_checkpoint,
                    state.model,
                    state.optimizer,
                    state.scheduler,
                    compute.precision,
                    state.ema,
                    progress,
                    rng_by_rank,
                )
                _write_metrics_csv(run.metrics_csv, progress.history)
            _log_epoch(config, row, improved)
            if on_epoch is not None:
                on_epoch(epoch + 1, val_stats)
            if _patience_ran_out(config, progress):
                break
    dist.barrier()  # the best checkpoint is on disk before any rank reads it back


def _train_and_validate(
    config: RunConfig, state: TrainingState, loaders: Loaders, compute: Compute, epoch: int, dist: Distributed
) -> tuple[dict, dict[str, float]]:
    """The epoch's metrics.csv row, and the validation scores of the weights it kept."""
    cfg_train = config.train
    model, ema, device, precision = state.model, state.ema, compute.device, compute.precision
    epoch_started = time.perf_counter()
    frozen = epoch < config.model.freeze_backbone_epochs
    set_backbone_trainable(model, state.head_prefixes, not frozen)
    loaders.shuffle_generator.manual_seed(
        epoch_seed(cfg_train.seed, epoch)
    )  # order depends on the epoch alone
    train_stats = train_one_epoch(
        state.training_model,
        loaders.train,
        state.optimizer,
        state.scheduler,
        state.criterion,
        device,
        precision,
        mixer=state.mixer,
        grad_clip_norm=config.optim.grad_clip_norm,
        ema=ema,
        channels_last=compute.channels_last,
        progress=f"epoch {epoch + 1}/{cfg_train.epochs}" if dist.is_main else None,
        accumulation_steps=loaders.grad_accumulation_steps,
    )
    train_stats = dist.mean({k: train_stats[k] for k in ("loss", "accuracy")}, weight=train_stats["images"])
    # Both the live and the averaged weights are validated, and the better one is the
    # epoch's candidate: an average that lags (too few steps for its decay) can never make
    # a run worse than training without it.
    live_stats = evaluate(model, loaders.val, device, precision, loaders.gather)
    ema_stats = (
        evaluate(ema.module, loaders.val, device, precision, loaders.gather) if ema is not None else None
    )
    kept = _better_weights(cfg_train.early_stopping_metric, live_stats, ema_stats)
    val_stats = ema_stats if kept == "ema" and ema_stats is not None else live_stats
    row = {
        "epoch": epoch + 1,
        "lr": max(g["lr"] for g in state.optimizer.param_groups),
        "train_loss": train_stats["loss"],
        "train_accuracy": train_stats["accuracy"],
        "val_loss": live_stats["loss"],
        "val_accuracy": live_stats["accuracy"],
        "val_f1_macro": live_stats["f1_macro"],
        "val_balanced_accuracy": live_stats["balanced_accuracy"],
        **({"val_map": live_stats["map"]} if "map" in live_stats else {}),
        **({f"ema_val_{key}": value for key, value in ema_stats.items()} if ema_stats is not None else {}),
        "kept": kept,
        "seconds": time.perf_counter() - epoch_started,
    }
    return row, val_stats


def _better_weights(metric: str, live: dict[str, float], ema: dict[str, float] | None) -> str:
    """Which weights scored better on ``metric`` this epoch: "live" or "ema" (ties: lower loss, then EMA)."""
    if ema is None:
        return "live"
    sign = 1.0 if metric == "loss" else -1.0  # compare as "lower is better"
    live_key = (sign * live[metric], live["loss"])
    ema_key = (sign * ema[metric], ema["loss"])
    return "ema" if ema_key <= live_key else "live"


def _keep_if_best(
    config: RunConfig,
    state: TrainingState,
    run: RunDir,
    val_stats: dict[str, float],
    kept: str,
    epoch: int,
    write: bool = True,
) -> bool:
    """Save the kept weights as the best checkpoint (with ``write``) if they improved on the best so far."""
    progress, ema = state.progress, state.ema
    value = val_stats[config.train.early_stopping_metric]
    if not _improved(
        config.train.early_stopping_metric, value, progress.best_value, config.train.early_stopping_min_delta
    ):
        progress.stale_epochs += 1
        return False
    progress.best_value, progress.best_epoch, progress.stale_epochs = value, epoch, 0
    progress.best_weights = kept
    if write:
        save_best(run.best_checkpoint, ema.module if kept == "ema" and ema else state.model, epoch, kept)
    return True


def _improved(metric: str, value: float, best: float | None, min_delta: float) -> bool:
    if best is None:
        return True
    return value < best - min_delta if metric == "loss" else value > best + min_delta


def _write_metrics_csv(path: Path, history: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        multilabel = any("val_map" in row for row in history)
        columns = _METRIC_COLUMNS + (["val_map", "ema_val_map"] if multilabel else [])
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in history:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def _log_epoch(config: RunConfig, row: dict, improved: bool) -> None:
    ema_part = (
        f" | ema val loss {row['ema_val_loss']:.4f} acc {row['ema_val_accuracy']:.4f} "
        f"f1 {row['ema_val_f1_macro']:.4f} | kept {row['kept']}"
        if "ema_val_loss" in row
        else ""
    )
    frozen = row["epoch"] - 1 < config.model.freeze_backbone_epochs
    if "val_map" in row:  # multilabel: accuracy is the share of whole label sets right at 0.5
        ema_part = f" | ema val mAP {row['ema_val_map']:.4f}{ema_part}" if "ema_val_map" in row else ema_part
        ema_part = f" mAP {row['val_map']:.4f}{ema_part}"
    log.info(
        "epoch %3d/%d  train loss %.4f acc %.4f | val loss %.4f acc %.4f f1 %.4f%s | lr %.2e | %.1fs%s%s",
        row["epoch"],
        config.train.epochs,
        row["train_loss"],
        row["train_accuracy"],
        row["val_loss"],
        row["val_accuracy"],
        row["val_f1_macro"],
        ema_part,
        row["lr"],
        row["seconds"],
        " (backbone frozen)" if frozen else "",
        "  *best*" if improved else "",
    )


def _patience_ran_out(config: RunConfig, progress: Progress) -> bool:
    patience = config.train.early_stopping_patience
    if patience is None or progress.stale_epochs < patience:
        return False
    log.info(
        "early stop: val %s has not improved for %d epochs (best %.4f at epoch %d)",
        config.train.early_stopping_metric,
        patience,
        progress.best_value,
        progress.best_epoch,
    )
    return True
