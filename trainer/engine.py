"""The training loop: two plain functions, as in torchvision's classification reference."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from trainer.ema import ModelEma

__all__ = ["MixedPrecision", "apply_gradients", "evaluate", "optimisation_step", "predict", "train_one_epoch"]


class MixedPrecision:
    """Autocast dtype and gradient scaler for one device (mixed precision only on CUDA)."""

    def __init__(self, device: torch.device, amp: str) -> None:
        self.device = device
        if device.type != "cuda" or amp == "none":
            self.dtype = None
        elif amp == "auto":
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            self.dtype = torch.bfloat16 if amp == "bf16" else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self):
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


def optimisation_step(
    loss: torch.Tensor,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    precision: MixedPrecision,
    grad_clip_norm: float | None = None,
) -> None:
    """Backward through the gradient scaler, clip the unscaled gradients, step, update the scaler."""
    optimizer.zero_grad(set_to_none=True)
    precision.scaler.scale(loss).backward()
    apply_gradients(model, optimizer, precision, grad_clip_norm)


def apply_gradients(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    precision: MixedPrecision,
    grad_clip_norm: float | None = None,
) -> None:
    """Clip the unscaled gradients, step, update the scaler: the second half of an optimisation step."""
    if grad_clip_norm is not None:
        precision.scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
    precision.scaler.step(optimizer)
    precision.scaler.update()


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    criterion: nn.Module,
    device: torch.device,
    precision: MixedPrecision,
    *,
    mixer: Callable | None = None,
    grad_clip_norm: float | None = None,
    ema: ModelEma | None = None,
    channels_last: bool = False,
    progress: str | None = None,
    accumulation_steps: int = 1,
) -> dict[str, float]:
    """One pass over ``loader``, one optimizer step per ``accumulation_steps`` batches; returns the mean
    loss, the training accuracy and the images seen.

    ``model`` may be wrapped in DistributedDataParallel: its gradients are averaged over the processes
    once per step (not on the accumulating batches before it); ``ema`` follows the model inside.
    """
    model.train()
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    total_loss, correct, seen = 0.0, 0, 0
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    bar = tqdm(
        loader,
        desc=progress,
        leave=False,
        disable=None if progress else True,  # None: only on a terminal
        unit="batch",
        dynamic_ncols=True,
    )
    optimizer.zero_grad(set_to_none=True)
    for index, (images, targets) in enumerate(bar):
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        targets = targets.to(device, non_blocking=True)
        hard_targets = targets
        if mixer is not None:
            images, targets = mixer(images, targets)
        steps_now = (index + 1) % accumulation_steps == 0
        # DDP averages gradients on every backward unless told not to: only the step's last one syncs
        accumulating = model.no_sync() if not steps_now and inner is not model else nullcontext()
        with accumulating:
            with precision.autocast():
                logits = model(images)
                loss = criterion(logits, targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss is {loss.item()}; lower optim.lr or enable optim.grad_clip_norm"
                )
            precision.scaler.scale(loss / accumulation_steps).backward()
        if steps_now:
            apply_gradients(model, optimizer, precision, grad_clip_norm)
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if ema is not None:
                ema.update(inner)
        batch = images.shape[0]
        total_loss += loss.item() * batch
        if hard_targets.ndim == 2:  # multilabel: the whole label set right at 0.5
            correct += ((logits > 0) == (hard_targets > 0.5)).all(dim=1).sum().item()
        else:
            correct += (logits.argmax(dim=1) == hard_targets).sum().item()
        seen += batch
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", refresh=False)
    return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1), "images": seen}


Gather = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@torch.inference_mode()
def predict(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    precision: MixedPrecision | None = None,
    gather: Gather | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (float32, ``[N, classes]``) and labels for every item in ``loader``; with ``gather``
    (several processes, each with its share of the split), for every item of the whole split."""
    model.eval()
    all_logits, all_labels = [], []
    context = precision.autocast() if precision is not None else nullcontext()
    for images, labels in loader:
        with context:
            logits = model(images.to(device, non_blocking=True))
        all_logits.append(logits.float().cpu())
        all_labels.append(labels)
    logits, labels = torch.cat(all_logits).numpy(), torch.cat(all_labels).numpy()
    return gather(logits, labels) if gather is not None else (logits, labels)


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    precision: MixedPrecision | None = None,
    gather: Gather | None = None,
) -> dict[str, float]:
    """Loss, accuracy, balanced accuracy (mean per-class recall) and macro F1 on ``loader`` (used on
    the validation split every epoch); for multilabel targets :func:`trainer.multilabel.validation_scores`."""
    from sklearn.metrics import f1_score, recall_score

    logits, labels = predict(model, loader, device, precision, gather)
    if labels.ndim == 2:
        from trainer.multilabel import validation_scores

        return validation_scores(logits, labels)
    loss = nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item()
    predictions = logits.argmax(axis=1)
    return {
        "loss": loss,
        "accuracy": float((predictions == labels).mean()),
        "f1_macro": float(f1_score(labels, predictions, average="macro", zero_division=0)),
        # over the classes present in the split (sklearn's balanced_accuracy_score, without its warning)
        "balanced_accuracy": float(
            recall_score(labels, predictions, average="macro", labels=np.unique(labels), zero_division=0)
        ),
    }
