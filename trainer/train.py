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
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import RandomSampler, Subset

from imgcls.errors import ConfigError, DataError
from imgcls.manifest import BaselineCheck, PreprocessSpec
from imgcls.preprocess import eval_transform
from trainer.baselines import check_against_baselines, likely_causes_of_chance
from trainer.calibrate import calibrate
from trainer.checkpoint import Progress, load_training_state
from trainer.config import DistributedRecord, RunConfig
from trainer.data import BadFile, DataSource, discover, label_matrix, scan_images
from trainer.datasets import ImageDataset, make_loader
from trainer.distributed import Distributed, RankSlice, join, micro_batch_size, seed_worker
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


def train(
    config: RunConfig,
    *,
    config_name: str = "run",
    resume: Path | None = None,
    resume_if_exists: bool = False,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult | None:
    """Run the recipe; with ``resume``, continue the run in that directory from its last checkpoint.
    With ``resume_if_exists``, continue ``runs_dir/run_name`` if it has a checkpoint, so that the same
    command can simply be rerun (a restarted pod). ``on_epoch`` is :func:`trainer.fit.fit`'s.

    Under torchrun, every process runs this and trains its share (``trainer.distributed``); rank 0
    alone finds the data, writes the run directory and returns the result, the others return None.
    """
    started = time.perf_counter()
    dist = join(config.train.device)
    try:
        compute = set_up_compute(config, dist)
        # the data and the model are validated completely before the run directory exists
        config, data, run_path, resume, built = _on_rank_zero(
            dist,
            lambda: _prepare_run(config, config_name, resume, resume_if_exists, dist),
            shared=lambda prepared: prepared[:4],
        )
        run = RunDir(run_path)
        built = built or create_run_model(config, data)  # the other ranks' copy: DDP syncs it from rank 0
        loaders = build_loaders(config, data, compute, dist)
        state = build_training_state(
            config, built, train_label_counts(data), loaders, compute, run, resume, dist
        )
        fit(config, state, loaders, compute, run, dist, on_epoch)
        return _test_and_report(config, data, loaders, state, compute, run, started, dist)
    finally:
        dist.leave()


def _prepare_run(
    config: RunConfig,
    config_name: str,
    resume: Path | None,
    resume_if_exists: bool,
    dist: Distributed,
) -> tuple[RunConfig, Data, Path, Path | None, BuiltModel]:
    """Rank 0's part of the set-up: the config to train (the run's own, when continuing one), its data
    and splits, the run directory, and the model."""
    if resume_if_exists and resume is None:
        resume = _resumable_run(config)
        if resume is not None:
            config = RunDir(resume).continuing_config(config)
            log.info("continuing %s from its last checkpoint (--resume-if-exists)", resume)
    cfg_train = config.train
    micro = micro_batch_size(cfg_train.batch_size, dist.world_size, cfg_train.grad_accumulation_steps)
    record = DistributedRecord(
        world_size=dist.world_size,
        backend=dist.backend,
        micro_batch_size=micro,
        global_batch_size=cfg_train.batch_size,
    )
    config = config.model_copy(update={"distributed": record})
    data = load_data(config, resume)
    built = create_run_model(config, data)  # a bad model.* setting fails here, before the run dir exists
    run = _open_run_dir(config, config_name, data, resume)
    # the other ranks get the splits, not the scan's findings (those are in data_report.json)
    return config, replace(data, source=None, report=None), run.path, resume, built


def _resumable_run(config: RunConfig) -> Path | None:
    """``runs_dir/run_name`` when it has a checkpoint to continue; None for a new run. A folder left by
    a run killed before its first checkpoint is started afresh; a finished run is refused."""
    if config.run_name is None:
        raise ConfigError("--resume-if-exists needs a run name to look for: add --run-name NAME")
    run = RunDir(config.runs_dir / config.run_name)
    if not run.path.exists():
        return None
    if run.metrics_json.is_file():
        raise ConfigError(
            f"{run.path} has already finished training (metrics.json is there); "
            "pick another --run-name to train again"
        )
    if run.last_checkpoint.is_file():
        return run.path
    if not run.config.is_file():
        raise ConfigError(f"{run.path} exists and is not a run directory; pick another --run-name")
    log.warning("%s stopped before its first checkpoint: starting it again", run.path)
    shutil.rmtree(run.path)
    return None


def _on_rank_zero(dist: Distributed, work: Callable[[], tuple], shared: Callable[[tuple], tuple]) -> tuple:
    """``work()`` on rank 0; the other ranks get its ``shared`` part, padded with None. If it fails,
    rank 0 raises the error and the others exit with its exit code: the user reads the message once."""
    if not dist.enabled:
        return work()
    if dist.is_main:
        try:
            result = work()
        except BaseException as exc:
            dist.broadcast((None, getattr(exc, "exit_code", 1)))
            raise
        dist.broadcast((shared(result), None))
        return result
    part, exit_code = dist.broadcast((None, None))
    if exit_code is not None:
        # Rank 0 prints the error as it exits. Leaving first would have the launcher stop it, perhaps
        # before its message is out: wait in a barrier it never joins, which ends when it is gone.
        dist.wait_for_exit_of_rank_zero()
        raise SystemExit(exit_code)
    return (*part, None)


def train_label_counts(data: Data) -> np.ndarray:
    """Training images per class; for multilabel data, positive training images per label."""
    train = data.splits["train"]
    if any(s.labels is not None for s in train):
        return label_matrix(train, len(data.class_names)).sum(axis=0)
    return class_counts([s.label for s in train], len(data.class_names))


# --- set-up: threads, seeds, device ---


def set_up_compute(config: RunConfig, dist: Distributed | None = None) -> Compute:
    cfg_train, dist = config.train, dist or Distributed()
    if cfg_train.threads:
        torch.set_num_threads(cfg_train.threads)
    # The same seed everywhere: the model starts alike in every process (DDP checks it, from rank 0's
    # broadcast); build_training_state moves each rank's augmentation stream apart afterwards.
    _seed_everything(cfg_train.seed, cfg_train.deterministic)
    device = dist.device(_device(cfg_train.device))
    if cfg_train.sync_batchnorm and dist.enabled and device.type != "cuda":
        raise ConfigError(
            "train.sync_batchnorm needs CUDA (torch's SyncBatchNorm has no CPU kernel); on CPU each process "
            "normalises over its own share of the batch: drop train.sync_batchnorm"
        )
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


def build_loaders(
    config: RunConfig, data: Data, compute: Compute, dist: Distributed | None = None
) -> Loaders:
    """The three loaders; under torchrun, this rank's share of each (``trainer.distributed``)."""
    cfg_train, spec, splits, dist = config.train, data.spec, data.splits, dist or Distributed()
    cache = config.data.cache_images == "on" or (
        config.data.cache_images == "auto" and data.decoded_bytes <= _CACHE_LIMIT_BYTES
    )
    eval_tf = eval_transform(spec)
    labels = len(data.class_names) if config.task == "multilabel" else None
    train_set = ImageDataset(
        splits["train"], spec.color_mode, train_transform(spec, config.augment), cache, labels
    )
    pin = compute.device.type == "cuda"
    shuffle_generator = torch.Generator()
    # class_balanced: the sampler draws from the same per-epoch generator, so --resume stays exact
    sampler = (
        balanced_sampler([s.label for s in splits["train"]], shuffle_generator)
        if cfg_train.sampler == "class_balanced"
        else None
    )
    accumulation = cfg_train.grad_accumulation_steps
    worker_init = partial(seed_worker, dist.rank) if dist.enabled else None
    if dist.enabled or accumulation > 1:
        # Whole global batches only, each cut into world_size x accumulation micro-batches
        steps = len(train_set) // cfg_train.batch_size
        if steps == 0:
            raise ConfigError(
                f"the training split has {len(train_set)} images, fewer than one global batch "
                f"(train.batch_size={cfg_train.batch_size}); lower train.batch_size"
            )
        base = sampler or RandomSampler(train_set, generator=shuffle_generator)
        per_rank = steps * cfg_train.batch_size // dist.world_size
        sampler = RankSlice(base, dist.rank, dist.world_size, per_rank)
    train_loader = make_loader(
        train_set,
        micro_batch_size(cfg_train.batch_size, dist.world_size, accumulation),
        shuffle=sampler is None,
        num_workers=config.data.num_workers,
        pin_memory=pin,
        generator=shuffle_generator,
        drop_last=len(train_set) > cfg_train.batch_size,
        sampler=sampler,
        worker_init_fn=worker_init,
    )
    # Each pass over a loader draws its workers' base seed from its generator. Evaluation gets its own,
    # so how often the run validates (the averaged weights too, with EMA) never shifts the random
    # stream that augmentation draws from: with and without EMA, the live weights train identically.
    val_loader, test_loader = (
        make_loader(
            Subset(
                ImageDataset(splits[s], spec.color_mode, eval_tf, cache, labels), dist.shard(len(splits[s]))
            )
            if dist.enabled
            else ImageDataset(splits[s], spec.color_mode, eval_tf, cache, labels),
            cfg_train.eval_batch_size,
            shuffle=False,
            num_workers=config.data.num_workers,
            pin_memory=pin,
            generator=torch.Generator().manual_seed(cfg_train.seed),
        )
        for s in ("val", "test")
    )
    return Loaders(
        train_loader,
        val_loader,
        test_loader,
        shuffle_generator,
        accumulation,
        dist.gather_predictions if dist.enabled else None,
    )


# --- model and optimisation: device, EMA, optimizer, schedule, loss; or the checkpoint resumed ---


def build_training_state(
    config: RunConfig,
    built: BuiltModel,
    train_counts: np.ndarray,
    loaders: Loaders,
    compute: Compute,
    run: RunDir | None = None,
    resume: Path | None = None,
    dist: Distributed | None = None,
) -> TrainingState:
    """The model on its device, optimizer, schedule, loss, mixer and EMA; with ``resume`` (and its
    ``run``), the last checkpoint's state loaded into them. Under torchrun the model trains wrapped in
    DistributedDataParallel (``TrainingState.step_model``)."""
    cfg_train, cfg_model, dist = config.train, config.model, dist or Distributed()
    if built.weights_source:
        log.info("model: %s, pretrained weights from %s", cfg_model.name, built.weights_source)
    model = built.model
    if cfg_train.sync_batchnorm and dist.enabled:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(compute.device)
    if compute.channels_last:
        model = model.to(memory_format=torch.channels_last)
    fine_tuning = (
        cfg_model.pretrained or cfg_model.weights is not None or cfg_model.freeze_backbone_epochs > 0
    )
    optimizer = build_optimizer(
        model, config.optim, built.head_prefixes, cfg_model.backbone_lr_scale if fine_tuning else 1.0
    )
    scheduler = build_scheduler(optimizer, config.optim, cfg_train.epochs, loaders.optimizer_steps_per_epoch)
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
    # Frozen-backbone epochs leave parameters without gradients, which DDP must be told to expect.
    step_model = dist.wrap(model, compute.device, find_unused_parameters=cfg_model.freeze_backbone_epochs > 0)
    ema = ModelEma(model, cfg_train.ema_decay) if cfg_train.ema_decay else None  # of rank 0's weights

    progress = Progress()
    if resume is not None and run is not None:
        progress = load_training_state(
            run.last_checkpoint,
            compute.device,
            model,
            optimizer,
            scheduler,
            compute.precision,
            ema,
            rank=dist.rank,
            world_size=dist.world_size,
        )
        log.info("resumed %s after epoch %d", run.path, progress.epoch)
        if dist.is_main:  # only once the checkpoint loaded: resume may extend train.epochs
            run.write_config(config, git_sha())
    elif dist.rank > 0:
        # every rank starts from the same seed (the same model); from here each augments differently,
        # rank 0 exactly as one process would
        _seed_everything(cfg_train.seed + dist.rank, cfg_train.deterministic)
    return TrainingState(
        model, built.head_prefixes, optimizer, scheduler, criterion, mixer, ema, progress, step_model
    )


# --- test: the best checkpoint on the test split, the baseline check, the report ---


def _test_and_report(
    config: RunConfig,
    data: Data,
    loaders: Loaders,
    state: TrainingState,
    compute: Compute,
    run: RunDir,
    started: float,
    dist: Distributed,
) -> TrainResult | None:
    """The best weights on the test split (every rank predicts its share); rank 0 writes the results."""
    model, progress, device, precision = state.model, state.progress, compute.device, compute.precision
    class_names = data.class_names
    best = torch.load(run.best_checkpoint, map_location=device, weights_only=True)
    model.load_state_dict(best["model"])
    logits, labels = predict(model, loaders.test, device, precision, loaders.gather)
    val_predictions = predict(model, loaders.val, device, precision, loaders.gather)
    if not dist.is_main:
        return None
    steps = loaders.optimizer_steps_per_epoch * len(progress.history)
    likely_causes = likely_causes_of_chance(config, progress, steps)
    multilabel = config.task == "multilabel"
    if multilabel:
        train_matrix = label_matrix(data.splits["train"], len(class_names))
        test, calibration, baseline_check = evaluate_multilabel(
            *val_predictions, logits, labels, class_names, train_matrix, likely_causes
        )
    else:
        test = classification_metrics(logits, labels, class_names)
        calibration = calibrate(*val_predictions, logits, labels)
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
