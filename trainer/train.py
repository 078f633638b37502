"""``imgcls train``: the whole recipe, top to bottom.

data -> splits -> model -> run directory -> loaders -> model, optimizer/schedule (or the checkpoint
resumed) -> epochs (``trainer.fit``: train, validate, checkpoint, early stop) -> test evaluation and
report. Everything the run decides is written to its run directory (``trainer.rundir``), so it can
be audited, resumed and exported.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from imgcls.errors import ConfigError, DataError
from imgcls.manifest import BaselineCheck, PreprocessSpec
from imgcls.preprocess import eval_transform
from trainer.baselines import check_against_baselines, likely_causes_of_chance
from trainer.calibrate import calibrate
from trainer.checkpoint import Progress, load_training_state
from trainer.config import RunConfig
from trainer.data import BadFile, DataSource, discover, label_matrix, scan_images
from trainer.datasets import ImageDataset, make_loader
from trainer.ema import ModelEma
from trainer.engine import MixedPrecision, predict
from trainer.fit import Compute, Loaders, TrainingState, fit
from trainer.losses import balanced_sampler, build_criterion, class_counts
from trainer.models import BuiltModel, create_model
from trainer.multilabel import evaluate_multilabel
from trainer.optim import build_optimizer, build_scheduler
from trainer.report import classification_metrics, plot_confusion_matrix, plot_curves, write_per_class_csv
from trainer.rundir import RunDir, git_sha
from trainer.splits import (
    Splits,
    read_split_file,
    resolve_splits,
    split_counts,
    split_warnings,
    write_split_file,
)
from trainer.transforms import batch_mixer, preprocess_spec, train_transform

__all__ = [
    "Data",
    "TrainResult",
    "build_loaders",
    "build_training_state",
    "create_run_model",
    "load_data",
    "prepare_data",
    "scan_data",
    "set_up_compute",
    "train",
    "train_label_counts",
]

log = logging.getLogger("imgcls.train")

_CACHE_LIMIT_BYTES = 1 << 30


@dataclass
class TrainResult:
    run_dir: Path
    test_metrics: dict
    best_epoch: int
    seconds: float
    baseline_check: BaselineCheck | None = None
    bundle_dir: Path | None = None


@dataclass(frozen=True)
class Data:
    """The classes and splits a run trains on, and how its images are preprocessed."""

    class_names: list[str]
    splits: Splits
    spec: PreprocessSpec
    decoded_bytes: int  # all usable images decoded: decides data.cache_images=auto
    source: DataSource | None = None  # what a new run found and scanned (None when resuming)
    report: dict | None = None  # data_report.json, written into a new run directory


def train(config: RunConfig, *, config_name: str = "run", resume: Path | None = None) -> TrainResult:
    """Run the recipe; with ``resume``, continue the run in that directory from its last checkpoint."""
    started = time.perf_counter()
    compute = set_up_compute(config)
    # the data and the model are validated completely before the run directory exists
    data = load_data(config, resume)
    built = create_run_model(config, data)
    run = _open_run_dir(config, config_name, data, resume)
    loaders = build_loaders(config, data, compute)
    state = build_training_state(config, built, train_label_counts(data), loaders, compute, run, resume)
    fit(config, state, loaders, compute, run)
    return _test_and_report(config, data, loaders, state, compute, run, started)


def train_label_counts(data: Data) -> np.ndarray:
    """Training images per class; for multilabel data, positive training images per label."""
    train = data.splits["train"]
    if any(s.labels is not None for s in train):
        return label_matrix(train, len(data.class_names)).sum(axis=0)
    return class_counts([s.label for s in train], len(data.class_names))


# --- set-up: threads, seeds, device ---


def set_up_compute(config: RunConfig) -> Compute:
    cfg_train = config.train
    if cfg_train.threads:
        torch.set_num_threads(cfg_train.threads)
    _seed_everything(cfg_train.seed, cfg_train.deterministic)
    device = _device(cfg_train.device)
    precision = MixedPrecision(device, cfg_train.amp)
    channels_last = cfg_train.channels_last == "on" or (
        cfg_train.channels_last == "auto" and device.type == "cuda"
    )
    return Compute(device, precision, channels_last)


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


# --- data and splits: found, scanned and split for a new run, read back from the run resumed ---


def load_data(config: RunConfig, resume: Path | None) -> Data:
    spec = preprocess_spec(config.preprocess)
    if resume is None:
        source, splits, report = prepare_data(config)
        return Data(source.class_names, splits, spec, report["decoded_bytes"], source, report)
    run = RunDir(Path(resume))
    class_names = run.read_labels()
    splits = run.read_splits(class_names)
    decoded_bytes = json.loads(run.data_report.read_text(encoding="utf-8")).get("decoded_bytes", 0)
    return Data(class_names, splits, spec, decoded_bytes)


def scan_data(config: RunConfig) -> tuple[DataSource, dict[Path, tuple[int, int, int]], list[BadFile]]:
    """Find the data ``config`` names and decode every image once: the source, the usable images with
    their sizes, and the unreadable ones (an error instead, with ``data.strict``)."""
    data = config.data
    source = discover(data.path, data.format, data.group_column, multilabel=config.task == "multilabel")
    good, bad = scan_images(s.path for s in source.all_samples())
    if bad and data.strict:
        listed = "; ".join(f"{b.path} ({b.reason})" for b in bad[:10])
        more = f"; and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise DataError(
            f"{len(bad)} unreadable file(s) and data.strict is set: {listed}{more}. "
            "Fix or remove them, or drop --strict to skip them"
        )
    return source, good, bad


def prepare_data(config: RunConfig) -> tuple[DataSource, Splits, dict]:
    """Find, scan and split the data; raises before anything is written to disk."""
    data = config.data
    source, good, bad = scan_data(config)
    candidates = source.all_samples()
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
            str(data.split_file)
            if data.split_file
            else "folders"
            if source.given_splits
            else "grouped"
            if data.group_column
            else "stratified_multilabel"
            if source.multilabel
            else "stratified"
        ),
        "split_sizes": {name: len(part) for name, part in splits.items()},
        "class_counts": split_counts(splits, source.class_names),
        "warnings": split_warnings(splits, source.class_names, data.group_share_warning),
    }
    if source.multilabel:
        combinations = Counter(s.labels for part in splits.values() for s in part)
        report["label_combinations"] = [
            {"labels": [source.class_names[i] for i in key or ()], "images": count}
            for key, count in combinations.most_common()
        ]
    if data.group_column:
        report["groups"] = {
            "column": data.group_column,
            "per_split": {name: len({s.group for s in part}) for name, part in splits.items()},
        }
    return source, splits, report


def _reuse_split(split_file: Path, source: DataSource, usable: set[Path]) -> Splits:
    """The split another run used (its split.csv), checked against the data found now."""
    splits = read_split_file(split_file, source.class_names, source.root, multilabel=source.multilabel)
    listed = {s.path for part in splits.values() for s in part}
    missing = sorted(listed - usable)
    if missing:
        raise DataError(
            f"{split_file}: {len(missing)} listed image(s) are missing or unreadable under {source.root} "
            f"(first: {missing[0]}); point data.path at the data that run used"
        )
    return splits


# --- model (built before the run directory, so that a bad model.* setting writes nothing) ---


def create_run_model(config: RunConfig, data: Data) -> BuiltModel:
    cfg_model = config.model
    return create_model(
        cfg_model.name,
        len(data.class_names),
        in_chans=data.spec.channels,
        image_size=data.spec.crop_height,
        drop_rate=cfg_model.drop_rate,
        pretrained=cfg_model.pretrained,
        weights=cfg_model.weights,
    )


# --- run directory: a new one written with what the run decided, or the one resumed ---


def _open_run_dir(config: RunConfig, config_name: str, data: Data, resume: Path | None) -> RunDir:
    if resume is not None:
        run = RunDir(Path(resume))
    else:
        run = _make_run_dir(config, config_name)
        run.write_config(config, git_sha())
        run.labels.write_text(json.dumps(data.class_names, indent=1) + "\n", encoding="utf-8")
        write_split_file(run.split, data.splits, data.class_names, data.source.root)
        run.data_report.write_text(json.dumps(data.report, indent=1) + "\n", encoding="utf-8")
        if data.report["skipped"]:
            log.warning("skipped %d unreadable file(s); see %s", len(data.report["skipped"]), run.data_report)
        for warning in data.report["warnings"]:
            log.warning("WARNING: %s (recorded in %s)", warning, run.data_report)
    log.info(
        "data: %d classes; train %d, val %d, test %d images; run dir %s",
        len(data.class_names),
        len(data.splits["train"]),
        len(data.splits["val"]),
        len(data.splits["test"]),
        run.path,
    )
    return run


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


# --- loaders: datasets, transforms, shuffling ---


def build_loaders(config: RunConfig, data: Data, compute: Compute) -> Loaders:
    cfg_train, spec, splits = config.train, data.spec, data.splits
    cache = config.data.cache_images == "on" or (
        config.data.cache_images == "auto" and data.decoded_bytes <= _CACHE_LIMIT_BYTES
    )
    eval_tf = eval_transform(spec)
    labels = len(data.class_names) if config.task == "multilabel" else None
    datasets = {
        "train": ImageDataset(
            splits["train"], spec.color_mode, train_transform(spec, config.augment), cache, labels
        ),
        "val": ImageDataset(splits["val"], spec.color_mode, eval_tf, cache, labels),
        "test": ImageDataset(splits["test"], spec.color_mode, eval_tf, cache, labels),
    }
    pin = compute.device.type == "cuda"
    shuffle_generator = torch.Generator()
    # class_balanced: the sampler draws from the same per-epoch generator, so --resume stays exact
    sampler = (
        balanced_sampler([s.label for s in splits["train"]], shuffle_generator)
        if cfg_train.sampler == "class_balanced"
        else None
    )
    train_loader = make_loader(
        datasets["train"],
        cfg_train.batch_size,
        shuffle=sampler is None,
        num_workers=config.data.num_workers,
        pin_memory=pin,
        generator=shuffle_generator,
        drop_last=len(datasets["train"]) > cfg_train.batch_size,
        sampler=sampler,
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
    return Loaders(train_loader, val_loader, test_loader, shuffle_generator)


# --- model and optimisation: device, EMA, optimizer, schedule, loss; or the checkpoint resumed ---


def build_training_state(
    config: RunConfig,
    built: BuiltModel,
    train_counts: np.ndarray,
    loaders: Loaders,
    compute: Compute,
    run: RunDir | None = None,
    resume: Path | None = None,
) -> TrainingState:
    """The model on its device, optimizer, schedule, loss, mixer and EMA; with ``resume`` (and its
    ``run``), the last checkpoint's state loaded into them."""
    cfg_train, cfg_model = config.train, config.model
    if built.weights_source:
        log.info("model: %s, pretrained weights from %s", cfg_model.name, built.weights_source)
    model = built.model.to(compute.device)
    if compute.channels_last:
        model = model.to(memory_format=torch.channels_last)
    fine_tuning = (
        cfg_model.pretrained or cfg_model.weights is not None or cfg_model.freeze_backbone_epochs > 0
    )
    optimizer = build_optimizer(
        model, config.optim, built.head_prefixes, cfg_model.backbone_lr_scale if fine_tuning else 1.0
    )
    scheduler = build_scheduler(optimizer, config.optim, cfg_train.epochs, len(loaders.train))
    num_classes = len(train_counts)
    cfg_optim = config.optim
    criterion = build_criterion(
        cfg_optim.loss,
        counts=train_counts,
        weighting=cfg_optim.class_weights,
        beta=cfg_optim.effective_number_beta,
        gamma=cfg_optim.focal_gamma,
        label_smoothing=cfg_optim.label_smoothing,
        multilabel_images=len(loaders.train.dataset) if config.task == "multilabel" else None,
        asymmetric=(
            cfg_optim.asymmetric_gamma_neg,
            cfg_optim.asymmetric_gamma_pos,
            cfg_optim.asymmetric_clip,
        ),
    ).to(compute.device)
    mixer = batch_mixer(config.augment, num_classes)
    ema = ModelEma(model, cfg_train.ema_decay) if cfg_train.ema_decay else None

    progress = Progress()
    if resume is not None and run is not None:
        progress = load_training_state(
            run.last_checkpoint, compute.device, model, optimizer, scheduler, compute.precision, ema
        )
        log.info("resumed %s after epoch %d", run.path, progress.epoch)
        run.write_config(config, git_sha())  # only once the checkpoint loaded: resume may extend train.epochs
    return TrainingState(model, built.head_prefixes, optimizer, scheduler, criterion, mixer, ema, progress)


# --- test: the best checkpoint on the test split, the baseline check, the report ---


def _test_and_report(
    config: RunConfig,
    data: Data,
    loaders: Loaders,
    state: TrainingState,
    compute: Compute,
    run: RunDir,
    started: float,
) -> TrainResult:
    model, progress, device, precision = state.model, state.progress, compute.device, compute.precision
    class_names = data.class_names
    best = torch.load(run.best_checkpoint, map_location=device, weights_only=True)
    model.load_state_dict(best["model"])
    logits, labels = predict(model, loaders.test, device, precision)
    steps = len(loaders.train) * len(progress.history)
    likely_causes = likely_causes_of_chance(config, progress, steps)
    multilabel = config.task == "multilabel"
    if multilabel:
        test, calibration, baseline_check = _evaluate_multilabel(
            model, data, loaders, compute, logits, labels, likely_causes
        )
    else:
        test = classification_metrics(logits, labels, class_names)
        calibration = calibrate(*predict(model, loaders.val, device, precision), logits, labels)
        baseline_check = check_against_baselines(
            logits.argmax(axis=1),
            labels,
            [s.label for s in data.splits["train"]],
            class_names,
            likely_causes=likely_causes,
        )
    seconds = time.perf_counter() - started
    metric_name = config.train.early_stopping_metric
    scalars = _write_test_report(
        run,
        config.task,
        test,
        class_names,
        progress,
        metric_name,
        seconds,
        device,
        precision,
        baseline_check,
        calibration,
    )
    if multilabel:
        log.info(
            "test: mAP %.4f, micro F1 %.4f, macro F1 %.4f, subset accuracy %.4f, Hamming loss %.4f "
            "(per-label thresholds tuned on val)",
            test["map"],
            test["f1_micro"],
            test["f1_macro"],
            test["subset_accuracy"],
            test["hamming_loss"],
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
    if multilabel:
        log.info("thresholds: %s", ", ".join(f"{k} {v:.3f}" for k, v in test["thresholds"].items()))
    elif calibration["temperature"] is None:
        log.info(
            "calibration: no temperature fitted (%s); scores stay softmax(logits)", calibration["skipped"]
        )
    else:
        log.info(
            "calibration: temperature %.3f fitted on validation; test ECE %.4f -> %.4f",
            calibration["temperature"],
            calibration["test_ece_before"],
            calibration["test_ece_after"],
        )
    if baseline_check.warning:
        log.warning("WARNING: %s (recorded in %s)", baseline_check.warning, run.metrics_json)
    return TrainResult(run.path, scalars, progress.best_epoch, seconds, baseline_check)


def _evaluate_multilabel(
    model: torch.nn.Module,
    data: Data,
    loaders: Loaders,
    compute: Compute,
    logits: np.ndarray,
    targets: np.ndarray,
    likely_causes: list[str],
) -> tuple[dict, dict, BaselineCheck]:
    val_logits, val_targets = predict(model, loaders.val, compute.device, compute.precision)
    train_matrix = label_matrix(data.splits["train"], len(data.class_names))
    return evaluate_multilabel(
        val_logits, val_targets, logits, targets, data.class_names, train_matrix, likely_causes
    )


def _write_test_report(
    run: RunDir,
    task: str,
    test: dict,
    class_names: list[str],
    progress: Progress,
    metric_name: str,
    seconds: float,
    device: torch.device,
    precision: MixedPrecision,
    baseline_check: BaselineCheck,
    calibration: dict,
) -> dict[str, float]:
    scalars = {k: v for k, v in test.items() if isinstance(v, int | float)}
    summary = {
        "task": task,
        "test": scalars,
        "per_class": test["per_class"],
        **({"thresholds": test["thresholds"]} if "thresholds" in test else {}),
        **({"confusion_matrix": test["confusion_matrix"]} if "confusion_matrix" in test else {}),
        "best_epoch": progress.best_epoch,
        "best_val": {metric_name: progress.best_value},
        "best_weights": progress.best_weights,
        "epochs_run": len(progress.history),
        "train_seconds": round(seconds, 2),
        "device": str(device),
        "precision": precision.name,
        "baseline_check": baseline_check.model_dump(mode="json"),
        "calibration": calibration,
        "warnings": [baseline_check.warning] if baseline_check.warning else [],
    }
    run.metrics_json.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    write_per_class_csv(run.per_class_csv, test)
    if "confusion_matrix" in test:  # multilabel runs have a per-label table instead
        plot_confusion_matrix(run.confusion_png, test["confusion_matrix"], class_names)
    plot_curves(run.curves_png, progress.history)
    return scalars
