"""``imgcls train``: the whole recipe, top to bottom.

data -> splits -> loaders -> model -> optimizer/schedule -> epochs (train, validate,
checkpoint, early stop) -> test evaluation -> bundle export. Everything the run decides is
written to its run directory (``trainer.rundir``), so it can be audited, resumed and exported.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imgcls.errors import ConfigError, DataError
from imgcls.manifest import BaselineCheck
from imgcls.preprocess import eval_transform
from trainer.baselines import check_against_baselines
from trainer.checkpoint import Progress, load_training_state, save_best, save_training_state
from trainer.config import RunConfig
from trainer.data import DataSource, discover, scan_images
from trainer.datasets import ImageDataset, make_loader
from trainer.ema import ModelEma
from trainer.engine import MixedPrecision, evaluate, predict, train_one_epoch
from trainer.models import create_model
from trainer.optim import build_optimizer, build_scheduler, set_backbone_trainable
from trainer.report import classification_metrics, plot_confusion_matrix, plot_curves, write_per_class_csv
from trainer.rundir import RunDir, git_sha
from trainer.splits import Splits, read_split_file, resolve_splits, split_counts, write_split_file
from trainer.transforms import batch_mixer, preprocess_spec, train_transform

__all__ = ["TrainResult", "train"]

log = logging.getLogger("imgcls.train")

_CACHE_LIMIT_BYTES = 1 << 30
_METRIC_COLUMNS = [
    "epoch",
    "lr",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "val_f1_macro",
    "ema_val_loss",
    "ema_val_accuracy",
    "ema_val_f1_macro",
    "kept",
    "seconds",
]


@dataclass
class TrainResult:
    run_dir: Path
    test_metrics: dict
    best_epoch: int
    seconds: float
    baseline_check: BaselineCheck | None = None
    bundle_dir: Path | None = None


def _seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def _device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is available; use train.device=auto or cpu")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def _prepare_data(config: RunConfig) -> tuple[DataSource, Splits, dict]:
    """Find, scan and split the data; raises before anything is written to disk."""
    data = config.data
    source = discover(data.path, data.format)
    candidates = source.all_samples()
    good, bad = scan_images(s.path for s in candidates)
    if bad and data.strict:
        listed = "; ".join(f"{b.path} ({b.reason})" for b in bad[:10])
        more = f"; and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise DataError(
            f"{len(bad)} unreadable file(s) and data.strict is set: {listed}{more}. "
            "Fix or remove them, or drop --strict to skip them"
        )
    seed = data.split_seed if data.split_seed is not None else config.train.seed
    if data.split_file is not None:
        splits = _reuse_split(data.split_file, source, set(good))
    else:
        splits = resolve_splits(source, set(good), data.val_fraction, data.test_fraction, seed)
    decoded_bytes = sum(w * h * c for w, h, c in good.values())
    report = {
        "data_path": str(data.path),
        "data_root": str(source.root),
        "scanned": len(candidates),
        "usable": len(good),
        "skipped": [{"path": str(b.path), "reason": b.reason} for b in bad],
        "decoded_bytes": decoded_bytes,
        "split_seed": seed,
        "split_source": (
            str(data.split_file) if data.split_file else "folders" if source.given_splits else "stratified"
        ),
        "class_counts": split_counts(splits, source.class_names),
    }
    return source, splits, report


def _reuse_split(split_file: Path, source: DataSource, usable: set[Path]) -> Splits:
    """The split another run used (its split.csv), checked against the data found now."""
    splits = read_split_file(split_file, source.class_names, source.root)
    listed = {s.path for part in splits.values() for s in part}
    missing = sorted(listed - usable)
    if missing:
        raise DataError(
            f"{split_file}: {len(missing)} listed image(s) are missing or unreadable under {source.root} "
            f"(first: {missing[0]}); point data.path at the data that run used"
        )
    return splits


def _make_run_dir(config: RunConfig, config_name: str) -> RunDir:
    name = config.run_name or f"{config_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    path = config.runs_dir / name
    if path.exists():
        raise ConfigError(
            f"{path}: run directory already exists; continue it with --resume {path} or pick another --run-name"
        )
    path.mkdir(parents=True)
    (path / "checkpoints").mkdir()
    return RunDir(path)


def _write_metrics_csv(path: Path, history: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=_METRIC_COLUMNS)
        writer.writeheader()
        for row in history:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def _better_weights(metric: str, live: dict[str, float], ema: dict[str, float] | None) -> str:
    """Which weights scored better on ``metric`` this epoch: "live" or "ema" (ties: lower loss, then EMA)."""
    if ema is None:
        return "live"
    sign = 1.0 if metric == "loss" else -1.0  # compare as "lower is better"
    live_key = (sign * live[metric], live["loss"])
    ema_key = (sign * ema[metric], ema["loss"])
    return "ema" if ema_key <= live_key else "live"


def _improved(metric: str, value: float, best: float | None, min_delta: float) -> bool:
    if best is None:
        return True
    return value < best - min_delta if metric == "loss" else value > best + min_delta


def _write_test_report(
    run: RunDir,
    test: dict,
    class_names: list[str],
    progress: Progress,
    metric_name: str,
    seconds: float,
    device: torch.device,
    precision: MixedPrecision,
    baseline_check: BaselineCheck,
) -> dict[str, float]:
    scalars = {k: v for k, v in test.items() if isinstance(v, int | float)}
    summary = {
        "test": scalars,
        "per_class": test["per_class"],
        "confusion_matrix": test["confusion_matrix"],
        "best_epoch": progress.best_epoch,
        "best_val": {metric_name: progress.best_value},
        "best_weights": progress.best_weights,
        "epochs_run": len(progress.history),
        "train_seconds": round(seconds, 2),
        "device": str(device),
        "precision": precision.name,
        "baseline_check": baseline_check.model_dump(mode="json"),
        "warnings": [baseline_check.warning] if baseline_check.warning else [],
    }
    run.metrics_json.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    write_per_class_csv(run.per_class_csv, test)
    plot_confusion_matrix(run.confusion_png, test["confusion_matrix"], class_names)
    plot_curves(run.curves_png, progress.history)
    return scalars


def _likely_causes(config: RunConfig, progress: Progress, steps: int) -> list[str]:
    """What most often makes a run end at chance, judged from this run, most likely first."""
    cfg_train = config.train
    causes = []
    last = progress.history[-1] if progress.history else {}
    if progress.best_weights == "ema":
        causes.append(
            f"the averaged weights kept (train.ema_decay={cfg_train.ema_decay}) lag after {steps} optimiser "
            "steps; lower train.ema_decay or set it to null"
        )
    if steps < 100:
        causes.append(f"only {steps} optimiser steps in all; raise train.epochs or lower train.batch_size")
    train_accuracy = last.get("train_accuracy")
    if train_accuracy is not None and train_accuracy >= 0.9:
        causes.append(
            f"training accuracy reached {train_accuracy:.2f}: the model memorises the training split "
            "(more data, stronger augment.preset, model.drop_rate) or the splits differ"
        )
    else:
        causes.append(
            f"the learning rate (optim.lr={config.optim.lr}) is too high or too low for this model; "
            "try 3x and 1/3 of it"
        )
    return causes


def train(config: RunConfig, *, config_name: str = "run", resume: Path | None = None) -> TrainResult:
    """Run the recipe; with ``resume``, continue the run in that directory from its last checkpoint."""
    started = time.perf_counter()
    cfg_train, cfg_model = config.train, config.model
    if cfg_train.threads:
        torch.set_num_threads(cfg_train.threads)
    _seed_everything(cfg_train.seed, cfg_train.deterministic)
    device = _device(cfg_train.device)
    precision = MixedPrecision(device, cfg_train.amp)
    channels_last = cfg_train.channels_last == "on" or (
        cfg_train.channels_last == "auto" and device.type == "cuda"
    )
    spec = preprocess_spec(config.preprocess)

    # --- data and model: validated completely before the run directory exists ---
    if resume is None:
        source, splits, report = _prepare_data(config)
        class_names = source.class_names
        decoded_bytes = report["decoded_bytes"]
    else:
        run = RunDir(Path(resume))
        class_names = run.read_labels()
        splits = run.read_splits(class_names)
        decoded_bytes = json.loads(run.data_report.read_text(encoding="utf-8")).get("decoded_bytes", 0)
    built = create_model(
        cfg_model.name,
        len(class_names),
        in_chans=spec.channels,
        image_size=spec.crop_height,
        drop_rate=cfg_model.drop_rate,
        pretrained=cfg_model.pretrained,
        weights=cfg_model.weights,
    )
    if resume is None:
        run = _make_run_dir(config, config_name)
        run.write_config(config, git_sha())
        run.labels.write_text(json.dumps(class_names, indent=1) + "\n", encoding="utf-8")
        write_split_file(run.split, splits, class_names, source.root)
        run.data_report.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        if report["skipped"]:
            log.warning("skipped %d unreadable file(s); see %s", len(report["skipped"]), run.data_report)
    log.info(
        "data: %d classes; train %d, val %d, test %d images; run dir %s",
        len(class_names),
        len(splits["train"]),
        len(splits["val"]),
        len(splits["test"]),
        run.path,
    )

    cache = config.data.cache_images == "on" or (
        config.data.cache_images == "auto" and decoded_bytes <= _CACHE_LIMIT_BYTES
    )
    eval_tf = eval_transform(spec)
    datasets = {
        "train": ImageDataset(splits["train"], spec.color_mode, train_transform(spec, config.augment), cache),
        "val": ImageDataset(splits["val"], spec.color_mode, eval_tf, cache),
        "test": ImageDataset(splits["test"], spec.color_mode, eval_tf, cache),
    }
    pin = device.type == "cuda"
    shuffle_generator = torch.Generator()
    train_loader = make_loader(
        datasets["train"],
        cfg_train.batch_size,
        shuffle=True,
        num_workers=config.data.num_workers,
        pin_memory=pin,
        generator=shuffle_generator,
        drop_last=len(datasets["train"]) > cfg_train.batch_size,
    )
    # Each pass over a loader draws its workers' base seed from its generator. Evaluation gets its own,
    # so how often the run validates (the averaged weights too, with EMA) never shifts the random
    # stream that augmentation draws from: with and without EMA, the live weights train identically.
    val_loader, test_loader = (
        make_loader(
            datasets[s],
            cfg_train.eval_batch_size,
            shuffle=False,
            num_workers=config.data.num_workers,
            pin_memory=pin,
            generator=torch.Generator().manual_seed(cfg_train.seed),
        )
        for s in ("val", "test")
    )

    # --- model and optimisation ---
    if built.weights_source:
        log.info("model: %s, pretrained weights from %s", cfg_model.name, built.weights_source)
    model = built.model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fine_tuning = (
        cfg_model.pretrained or cfg_model.weights is not None or cfg_model.freeze_backbone_epochs > 0
    )
    optimizer = build_optimizer(
        model, config.optim, built.head_prefixes, cfg_model.backbone_lr_scale if fine_tuning else 1.0
    )
    scheduler = build_scheduler(optimizer, config.optim, cfg_train.epochs, len(train_loader))
    criterion = nn.CrossEntropyLoss(label_smoothing=config.optim.label_smoothing)
    mixer = batch_mixer(config.augment, len(class_names))
    ema = ModelEma(model, cfg_train.ema_decay) if cfg_train.ema_decay else None

    progress = Progress()
    if resume is not None:
        progress = load_training_state(
            run.last_checkpoint, device, model, optimizer, scheduler, precision, ema
        )
        log.info("resumed %s after epoch %d", run.path, progress.epoch)
        run.write_config(config, git_sha())  # only once the checkpoint loaded: resume may extend train.epochs

    from torch.utils.tensorboard import SummaryWriter

    metric_name = cfg_train.early_stopping_metric
    purge_step = progress.epoch + 1 if progress.epoch else None
    with SummaryWriter(str(run.tensorboard), purge_step=purge_step) as writer:
        for epoch in range(progress.epoch, cfg_train.epochs):
            epoch_started = time.perf_counter()
            frozen = epoch < cfg_model.freeze_backbone_epochs
            set_backbone_trainable(model, built.head_prefixes, not frozen)
            shuffle_generator.manual_seed(cfg_train.seed * 1000 + epoch)  # order depends on the epoch alone
            train_stats = train_one_epoch(
                model,
                train_loader,
                optimizer,
                scheduler,
                criterion,
                device,
                precision,
                mixer=mixer,
                grad_clip_norm=config.optim.grad_clip_norm,
                ema=ema,
                channels_last=channels_last,
                progress=f"epoch {epoch + 1}/{cfg_train.epochs}",
            )
            # Both the live and the averaged weights are validated, and the better one is the
            # epoch's candidate: an average that lags (too few steps for its decay) can never make
            # a run worse than training without it.
            live_stats = evaluate(model, val_loader, device, precision)
            ema_stats = evaluate(ema.module, val_loader, device, precision) if ema is not None else None
            kept = _better_weights(metric_name, live_stats, ema_stats)
            val_stats = ema_stats if kept == "ema" and ema_stats is not None else live_stats
            row = {
                "epoch": epoch + 1,
                "lr": max(g["lr"] for g in optimizer.param_groups),
                "train_loss": train_stats["loss"],
                "train_accuracy": train_stats["accuracy"],
                "val_loss": live_stats["loss"],
                "val_accuracy": live_stats["accuracy"],
                "val_f1_macro": live_stats["f1_macro"],
                **(
                    {f"ema_val_{key}": ema_stats[key] for key in ("loss", "accuracy", "f1_macro")}
                    if ema_stats is not None
                    else {}
                ),
                "kept": kept,
                "seconds": time.perf_counter() - epoch_started,
            }
            progress.epoch = epoch + 1
            progress.history.append(row)
            for key, value in row.items():
                if key not in ("epoch", "kept"):
                    writer.add_scalar(key.replace("_", "/", 1), value, epoch + 1)
            value = val_stats[metric_name]
            improved = _improved(metric_name, value, progress.best_value, cfg_train.early_stopping_min_delta)
            if improved:
                progress.best_value, progress.best_epoch, progress.stale_epochs = value, epoch + 1, 0
                progress.best_weights = kept
                save_best(
                    run.best_checkpoint, ema.module if kept == "ema" and ema else model, epoch + 1, kept
                )
            else:
                progress.stale_epochs += 1
            save_training_state(run.last_checkpoint, model, optimizer, scheduler, precision, ema, progress)
            _write_metrics_csv(run.metrics_csv, progress.history)
            ema_part = (
                f" | ema val loss {ema_stats['loss']:.4f} acc {ema_stats['accuracy']:.4f} "
                f"f1 {ema_stats['f1_macro']:.4f} | kept {kept}"
                if ema_stats is not None
                else ""
            )
            log.info(
                "epoch %3d/%d  train loss %.4f acc %.4f | val loss %.4f acc %.4f f1 %.4f%s | lr %.2e | %.1fs%s%s",
                epoch + 1,
                cfg_train.epochs,
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
            patience = cfg_train.early_stopping_patience
            if patience is not None and progress.stale_epochs >= patience:
                log.info(
                    "early stop: val %s has not improved for %d epochs (best %.4f at epoch %d)",
                    metric_name,
                    patience,
                    progress.best_value,
                    progress.best_epoch,
                )
                break

    # --- evaluation of the best checkpoint on the test split ---
    best = torch.load(run.best_checkpoint, map_location=device, weights_only=True)
    model.load_state_dict(best["model"])
    logits, labels = predict(model, test_loader, device, precision)
    test = classification_metrics(logits, labels, class_names)
    steps = len(train_loader) * len(progress.history)
    baseline_check = check_against_baselines(
        logits.argmax(axis=1),
        labels,
        [s.label for s in splits["train"]],
        class_names,
        likely_causes=_likely_causes(config, progress, steps),
    )
    seconds = time.perf_counter() - started
    scalars = _write_test_report(
        run, test, class_names, progress, metric_name, seconds, device, precision, baseline_check
    )
    log.info(
        "test: accuracy %.4f, macro F1 %.4f on %d images (best epoch %d, %s weights, %.1fs)",
        test["accuracy"],
        test["f1_macro"],
        test["samples"],
        progress.best_epoch,
        progress.best_weights,
        seconds,
    )
    if baseline_check.warning:
        log.warning("WARNING: %s (recorded in %s)", baseline_check.warning, run.metrics_json)
    return TrainResult(run.path, scalars, progress.best_epoch, seconds, baseline_check)
