"""``imgcls cv``: K-fold cross-validation, one complete training run per fold.

Folds are stratified by class (scikit-learn's ``StratifiedKFold``), and by group as well with
``data.group_column`` (``StratifiedGroupKFold``: no group in two folds). Fold k's images are its test
split; the other folds are split into train and val by ``data.val_fraction`` (group-aware too), and
``imgcls train``'s recipe runs on them unchanged through ``data.split_file``. One folder holds it all::

    <out>/plan.json        what was cross-validated: the recipe's digest, K, the seed, the data
    <out>/folds.csv        path,label (multilabel: labels),fold[,group]: the assignment, written once
    <out>/fold-<k>/        a complete run directory (config, split.csv, metrics.json, checkpoints)
    <out>/cv.json, cv.md   per-fold test metrics, mean ± sd and a 95 % interval

A rerun with the same recipe and K skips the folds that finished, resumes a fold from its last
checkpoint, and refuses another recipe or K in the same folder, so results never mix.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from imgcls.errors import ConfigError, DataError
from trainer.config import RunConfig, config_digest
from trainer.data import LABEL_SEPARATOR, DataSource, Sample, label_matrix
from trainer.rundir import RunDir
from trainer.splits import Splits, split_samples, write_split_file
from trainer.train import scan_data, train

__all__ = [
    "CV_METRICS",
    "CrossValidation",
    "assign_folds",
    "cross_validate",
    "fold_splits",
    "render_markdown",
    "summarize",
]

log = logging.getLogger("imgcls.cv")

# (key in a run's metrics.json "test", name in the table): balanced accuracy is the macro recall
CV_METRICS = (
    ("accuracy", "accuracy"),  # subset accuracy for multilabel runs
    ("f1_macro", "macro F1"),
    ("recall_macro", "balanced accuracy"),
    ("top5_accuracy", "top-5 accuracy"),
    ("map", "mAP"),  # multilabel only, as the two below
    ("f1_micro", "micro F1"),
    ("hamming_loss", "Hamming loss"),
)


@dataclass(frozen=True)
class CrossValidation:
    out_dir: Path
    folds: list[dict]  # one row per fold: sizes, best epoch, seconds, and the test metrics
    summary: dict[str, dict[str, float]]  # metric -> mean, sd, ci95_low, ci95_high
    trained: list[int]  # the folds this call trained or resumed (the rest had finished before)

    @property
    def json_path(self) -> Path:
        return self.out_dir / "cv.json"

    @property
    def markdown_path(self) -> Path:
        return self.out_dir / "cv.md"


def _stratification_keys(samples: list[Sample], num_classes: int) -> np.ndarray:
    """The class of each sample; for multilabel samples their rarest label (-1 for none), so that each
    label's few positives spread over the folds (the usual stand-in for iterative stratification)."""
    if not any(s.labels is not None for s in samples):
        return np.array([s.label for s in samples])
    positives = label_matrix(samples, num_classes).sum(axis=0)
    return np.array([min(s.labels, key=lambda i: (positives[i], i)) if s.labels else -1 for s in samples])


def assign_folds(samples: list[Sample], num_folds: int, seed: int, class_names: list[str]) -> list[int]:
    """The fold (0-based) of each sample, stratified by class (multilabel: by each image's rarest
    label), and by group when the samples have groups."""
    labels = _stratification_keys(samples, len(class_names))
    counts = Counter(label for s in samples for label in s.label_indices())
    scarce = [class_names[label] for label, count in sorted(counts.items()) if count < num_folds]
    if scarce:
        raise DataError(
            f"{len(scarce)} class(es) have fewer images than the {num_folds} folds ({', '.join(scarce[:10])}), "
            "so some test folds would miss them; lower --folds or add images"
        )
    features = np.zeros((len(samples), 1))
    if any(s.group is not None for s in samples):
        groups = np.array([str(s.group) for s in samples])
        if len(set(groups.tolist())) < num_folds:
            raise DataError(
                f"{len(set(groups.tolist()))} group(s) cannot fill {num_folds} folds: a group never spans two "
                "folds; lower --folds or add groups"
            )
        splitter = StratifiedGroupKFold(n_splits=num_folds, shuffle=True, random_state=seed)
        parts = splitter.split(features, labels, groups)
    else:
        parts = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed).split(features, labels)
    folds = [-1] * len(samples)
    for fold, (_, test_index) in enumerate(parts):
        for i in test_index:
            folds[i] = fold
    return folds


def fold_splits(
    samples: list[Sample],
    folds: list[int],
    fold: int,
    class_names: list[str],
    val_fraction: float,
    seed: int,
) -> Splits:
    """Fold ``fold`` as the test split; train and val carved from the other folds."""
    rest = [s for s, f in zip(samples, folds, strict=True) if f != fold]
    splits = split_samples(rest, class_names, val_fraction, 0.0, seed, where=f"fold {fold + 1}")
    splits["test"] = sorted(s for s, f in zip(samples, folds, strict=True) if f == fold)
    return splits


def summarize(values: list[float], bounds: tuple[float, float] = (0.0, 1.0)) -> dict[str, float]:
    """Mean, sample standard deviation and the two-sided 95 % Student-t interval of the mean, the
    interval clipped to the metric's ``bounds`` (every metric here is a share)."""
    n = len(values)
    mean = float(np.mean(values))
    sd = float(np.std(values, ddof=1)) if n > 1 else 0.0
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n) if n > 1 else 0.0
    low, high = max(bounds[0], mean - half), min(bounds[1], mean + half)
    return {"mean": mean, "sd": sd, "ci95_low": low, "ci95_high": high, "folds": n}


def cross_validate(
    config: RunConfig, *, num_folds: int, out_dir: Path, config_name: str = "run"
) -> CrossValidation:
    """Train one run per fold in ``out_dir`` (skipping finished ones), then write cv.json and cv.md."""
    if num_folds < 2:
        raise ConfigError(f"--folds {num_folds}: cross-validation needs at least 2 folds")
    if config.data.split_file is not None:
        raise ConfigError(
            f"data.split_file={config.data.split_file} fixes one split, and cross-validation makes one per "
            "fold; drop data.split_file"
        )
    seed = config.data.split_seed if config.data.split_seed is not None else config.train.seed
    out_dir = Path(out_dir)
    plan = _check_plan(out_dir, config, num_folds, seed)
    source, good, bad = scan_data(config)
    if bad:
        log.warning("skipping %d unreadable file(s), first %s (%s)", len(bad), bad[0].path, bad[0].reason)
    if source.given_splits:
        log.info("%s has train/val/test folders: cross-validation pools them", source.root)
    samples = sorted(s for s in source.all_samples() if s.path in good)
    if plan is not None:  # a new folder: the plan is fixed once the data is found and readable
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "plan.json").write_text(json.dumps(plan, indent=1) + "\n", encoding="utf-8")
    folds = _load_or_assign_folds(out_dir, samples, num_folds, seed, source.class_names, source.root)

    rows: list[dict] = []
    trained: list[int] = []
    for fold in range(num_folds):
        run = RunDir(out_dir / f"fold-{fold + 1}")
        if not run.metrics_json.is_file():
            trained.append(fold + 1)
            _train_fold(config, run, samples, folds, fold, source, seed, config_name)
        else:
            log.info("fold %d/%d finished before: %s", fold + 1, num_folds, run.path)
        rows.append(_fold_row(run, fold + 1))
    summary = {
        key: summarize([row[key] for row in rows])
        for key, _ in CV_METRICS
        if all(row.get(key) is not None for row in rows)
    }
    result = CrossValidation(out_dir, rows, summary, trained)
    _write_results(result, config, num_folds, seed)
    return result


# --- the plan and the fold assignment, fixed the first time a folder is used ---


def _check_plan(out_dir: Path, config: RunConfig, num_folds: int, seed: int) -> dict | None:
    """None when ``out_dir`` holds this same plan; the plan to write when it is a new folder."""
    plan = {
        "config_digest": config_digest(config),
        "folds": num_folds,
        "seed": seed,
        "data": str(config.data.path),
    }
    path = out_dir / "plan.json"
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        changed = [key for key in plan if previous.get(key) != plan[key]]
        if changed:
            raise ConfigError(
                f"{out_dir}: cross-validated before with a different {', '.join(changed)}; results would mix. "
                "Pass another --out, or delete that folder to start over"
            )
        return None
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir}: exists and is not a cross-validation folder; pass another --out")
    return plan


def _load_or_assign_folds(
    out_dir: Path, samples: list[Sample], num_folds: int, seed: int, class_names: list[str], root: Path
) -> list[int]:
    path = out_dir / "folds.csv"
    if path.is_file():
        with path.open(newline="", encoding="utf-8") as handle:
            recorded = {row["path"]: int(row["fold"]) - 1 for row in csv.DictReader(handle)}
        keys = [_relative(s.path, root) for s in samples]
        if set(keys) != set(recorded):
            raise DataError(
                f"{path}: the images under {root} changed since the folds were assigned "
                f"({len(recorded)} recorded, {len(keys)} now); pass another --out to start over"
            )
        return [recorded[key] for key in keys]
    folds = assign_folds(samples, num_folds, seed, class_names)
    grouped = any(s.group is not None for s in samples)
    multilabel = any(s.labels is not None for s in samples)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        label_column = "labels" if multilabel else "label"  # as in split.csv
        writer.writerow(["path", label_column, "fold"] + (["group"] if grouped else []))
        for sample, fold in zip(samples, folds, strict=True):
            label = LABEL_SEPARATOR.join(class_names[i] for i in sample.label_indices())
            row = [_relative(sample.path, root), label, fold + 1]
            writer.writerow(row + ([sample.group] if grouped else []))
    return folds


def _relative(path: Path, root: Path) -> str:
    return (path.relative_to(root) if path.is_relative_to(root) else path).as_posix()


# --- one fold: a run of the whole recipe on its own split.csv ---


def _train_fold(
    config: RunConfig,
    run: RunDir,
    samples: list[Sample],
    folds: list[int],
    fold: int,
    source: DataSource,
    seed: int,
    config_name: str,
) -> None:
    num_folds = max(folds) + 1
    if run.last_checkpoint.is_file():
        log.info("fold %d/%d: resuming %s", fold + 1, num_folds, run.path)
        train(run.resume_config(), config_name=config_name, resume=run.path)
        return
    if run.path.exists():  # stopped before its first epoch ended: nothing worth keeping
        if not run.config.is_file():
            raise ConfigError(f"{run.path}: exists but is not a run directory; move it away and rerun")
        shutil.rmtree(run.path)
    splits = fold_splits(samples, folds, fold, source.class_names, config.data.val_fraction, seed)
    split_file = run.path.parent / "splits" / f"fold-{fold + 1}.csv"
    split_file.parent.mkdir(exist_ok=True)
    write_split_file(split_file, splits, source.class_names, source.root)
    fold_config = config.model_copy(deep=True)
    fold_config.runs_dir = run.path.parent
    fold_config.run_name = run.path.name
    fold_config.data.split_file = split_file
    fold_config.export.enabled = False
    log.info(
        "fold %d/%d: train %d, val %d, test %d images",
        fold + 1,
        num_folds,
        len(splits["train"]),
        len(splits["val"]),
        len(splits["test"]),
    )
    train(fold_config, config_name=config_name)


def _fold_row(run: RunDir, fold: int) -> dict:
    summary = json.loads(run.metrics_json.read_text(encoding="utf-8"))
    report = json.loads(run.data_report.read_text(encoding="utf-8"))
    sizes = report.get("split_sizes") or {  # runs before split_sizes: single-label, one class per image
        name: sum(counts.values()) for name, counts in report["class_counts"].items()
    }
    test = summary["test"]
    row = {
        "fold": fold,
        "train_images": sizes.get("train", 0),
        "val_images": sizes.get("val", 0),
        "test_images": test["samples"],
        "best_epoch": summary["best_epoch"],
        "epochs_run": summary["epochs_run"],
        "train_seconds": summary["train_seconds"],
        "run": run.path.name,
    }
    row.update({key: test.get(key) for key, _ in CV_METRICS})
    if summary.get("task") == "multilabel":
        row["recall_macro"] = None  # a mean recall over labels, not the balanced accuracy of classes
    return row


# --- results ---


def _write_results(result: CrossValidation, config: RunConfig, num_folds: int, seed: int) -> None:
    payload = {
        "folds": num_folds,
        "seed": seed,
        "data": str(config.data.path),
        "group_column": config.data.group_column,
        "config_digest": config_digest(config),
        "per_fold": result.folds,
        "summary": result.summary,
        "interval": "two-sided 95 % Student-t interval of the mean over folds (folds share training data, "
        "so it is optimistic; compare models on the same folds)",
    }
    result.json_path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    result.markdown_path.write_text(render_markdown(result, config, num_folds, seed), encoding="utf-8")


def render_markdown(result: CrossValidation, config: RunConfig, num_folds: int, seed: int) -> str:
    metrics = [(key, name) for key, name in CV_METRICS if key in result.summary]
    grouping = f", group-aware on `{config.data.group_column}`" if config.data.group_column else ""
    lines = [
        f"# {num_folds}-fold cross-validation",
        "",
        f"Data `{config.data.path}`, stratified folds{grouping}, seed {seed}; model `{config.model.name}`, "
        f"{config.train.epochs} epochs; every fold's val split is `data.val_fraction`={config.data.val_fraction} "
        "of the other folds. Test metrics of each fold's best checkpoint.",
        "",
        "| fold | train | val | test | best epoch | " + " | ".join(name for _, name in metrics) + " |",
        "|---:|---:|---:|---:|---:|" + "---:|" * len(metrics),
    ]
    for row in result.folds:
        cells = [
            str(row["fold"]),
            str(row["train_images"]),
            str(row["val_images"]),
            str(row["test_images"]),
            f"{row['best_epoch']}/{row['epochs_run']}",
        ] + [f"{row[key]:.4f}" for key, _ in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    mean_cells = [
        f"**{result.summary[key]['mean']:.4f} ± {result.summary[key]['sd']:.4f}**" for key, _ in metrics
    ]
    ci_cells = [
        f"{result.summary[key]['ci95_low']:.4f} – {result.summary[key]['ci95_high']:.4f}"
        for key, _ in metrics
    ]
    lines.append("| mean ± sd | | | | | " + " | ".join(mean_cells) + " |")
    lines.append("| 95 % interval | | | | | " + " | ".join(ci_cells) + " |")
    lines += [
        "",
        "The interval is Student's t over the folds' means. Folds share most of their training images, so it "
        "understates the real spread (Bengio & Grandvalet, 2004): compare two recipes on the same folds.",
        "",
    ]
    return "\n".join(lines)
