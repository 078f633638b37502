"""``imgcls report``: everything a reviewer asks before shipping a model, in one folder.

Reads a finished run (and optionally the bundle exported from it, another labelled dataset, and
another run's report to compare with), evaluates the model on one split, and writes ``index.html``
(opens from disk), ``metrics.json`` (schema in docs/report.md), ``model_card.md`` and the figures.
Steps, in the order of the page: predictions, summary with bootstrap intervals, per class, confusion,
calibration, mistakes with Grad-CAM, robustness, subgroups, baselines, comparison, model card.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, f1_score

import imgcls
from imgcls.errors import ConfigError, DataError
from trainer.calibrate import MIN_VALIDATION_IMAGES
from trainer.config import RunConfig, config_digest
from trainer.data import Sample, discover
from trainer.reporting import figures
from trainer.reporting.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from trainer.reporting.classical import logistic_regression_baseline
from trainer.reporting.compare import compare_runs
from trainer.reporting.gallery import confused_pair_strips, mistakes_gallery
from trainer.reporting.model_card import card_markdown
from trainer.reporting.multilabel import multilabel_report
from trainer.reporting.page import render_page
from trainer.reporting.predictions import ModelUnderReview, decode_crops, logits_of
from trainer.reporting.robustness import robustness_table
from trainer.reporting.stats import most_confused_pairs, per_class_table, roc_pr_curves, summary_metrics
from trainer.reporting.subgroups import subgroup_table
from trainer.rundir import RunDir
from trainer.transforms import preprocess_spec

__all__ = ["REPORT_SCHEMA_VERSION", "ReportOptions", "write_report"]

log = logging.getLogger("imgcls.report")

REPORT_SCHEMA_VERSION = 1
ECE_BINS = 15
CLASSICAL_TRAIN_IMAGES = 5000  # the logistic regression's training images, at most (seeded subset)


@dataclass(frozen=True)
class ReportOptions:
    bundle: Path | None = None  # review the bundle's eager weights (and its temperature) instead of the run's
    data: Path | None = None  # evaluate on this labelled folder or CSV instead of a split of the run
    split: str = "test"
    compare: Path | None = None  # another run (or its report folder) to put beside this one
    out: Path | None = None  # default: RUN/report
    max_images: int = 1000  # bounds robustness and the mistakes gallery on large sets
    mistakes: int = 12
    bootstrap_rounds: int = 1000
    seed: int = 0


@dataclass
class _Timer:
    seconds: dict[str, float] = field(default_factory=dict)

    def step(self, name: str, started: float) -> float:
        now = time.perf_counter()
        self.seconds[name] = round(now - started, 3)
        return now


def _csv_attributes(csv_path: Path, samples: list[Sample]) -> dict[str, list[str]]:
    """The extra columns of a CSV dataset (anything beside path and label), one value per sample."""
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or [] if c and c.strip() not in ("path", "label")]
        by_path = {(csv_path.parent / (row.get("path") or "").strip()).resolve(): row for row in reader}
    attributes: dict[str, list[str]] = {}
    for column in columns:
        values = []
        for sample in samples:
            row = by_path.get(Path(sample.path).resolve(), {})
            values.append((row.get(column) or "").strip())
        attributes[column] = values
    return attributes


def _eval_samples(
    run: RunDir, config: RunConfig, labels: list[str], options: ReportOptions
) -> tuple[str, list[Sample], dict[str, list[str]], str]:
    """(what is evaluated, its samples, its CSV attributes, the data source)."""
    if options.data is not None:
        multilabel = config.task == "multilabel"
        source = discover(Path(options.data), multilabel=multilabel)
        unknown = [name for name in source.class_names if name not in labels]
        if unknown:
            raise DataError(
                f"{options.data}: class(es) {', '.join(unknown[:5])} are not classes of this model ({', '.join(labels[:10])}"
                f"{' ...' if len(labels) > 10 else ''}); evaluate on data labelled with the model's classes"
            )
        index = {name: labels.index(name) for name in source.class_names}
        samples = [
            Sample(s.path, s.label, None, tuple(sorted(index[source.class_names[i]] for i in s.labels)))
            if multilabel and s.labels is not None
            else Sample(s.path, index[source.class_names[s.label]])
            for s in source.all_samples()
        ]
        attributes = _csv_attributes(Path(options.data), samples) if Path(options.data).is_file() else {}
        return str(options.data), samples, attributes, str(options.data)
    splits = run.read_splits(labels)
    if options.split not in splits:
        raise ConfigError(f"--split {options.split!r}: choose train, val or test")
    samples = splits[options.split]
    if not samples:
        raise DataError(f"{run.split}: the {options.split} split is empty; choose another with --split")
    data_path = Path(config.data.path)
    attributes = _csv_attributes(data_path, samples) if data_path.is_file() else {}
    return f"{options.split} split", samples, attributes, str(data_path)


def _model_under_review(
    run: RunDir, config: RunConfig, labels: list[str], bundle: Path | None
) -> ModelUnderReview:
    if bundle is not None:
        from imgcls.explain.bundle import load_explainer
        from imgcls.manifest import load_manifest

        manifest = load_manifest(bundle)
        if list(manifest.labels) != labels:
            raise ConfigError(
                f"--bundle {bundle}: its labels differ from the run's; was it exported from {run.path}?"
            )
        explainer = load_explainer(bundle, manifest)
        return ModelUnderReview(
            explainer.model,
            manifest.architecture,
            f"bundle {manifest.name} v{manifest.version} ({bundle})",
            manifest.temperature,
            f"{manifest.name} v{manifest.version}",
        )
    from trainer.export import load_eager_model

    model = load_eager_model(run, config, labels)
    summary = json.loads(run.metrics_json.read_text(encoding="utf-8")) if run.metrics_json.is_file() else {}
    temperature = (summary.get("calibration") or {}).get("temperature")
    kept = summary.get("best_weights", "live")
    return ModelUnderReview(
        model, config.model.name, f"best checkpoint of {run.path} ({kept} weights)", temperature, None
    )


def _stratified_subset(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """At most ``count`` indices, each class in proportion, seeded; all of them when there are fewer."""
    if len(labels) <= count:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        take = max(1, round(count * len(members) / len(labels)))
        chosen.append(rng.choice(members, size=min(take, len(members)), replace=False))
    return np.sort(np.concatenate(chosen))[:count]


def _other_report(path: Path) -> dict:
    candidates = [path / "metrics.json", path / "report" / "metrics.json"]
    for candidate in candidates:
        if candidate.is_file():
            data = json.loads(candidate.read_text(encoding="utf-8"))
            if data.get("schema_version") == REPORT_SCHEMA_VERSION and "summary" in data:
                return data
    raise ConfigError(
        f"--compare {path}: no report found there (looked for {candidates[1]}); write it first with "
        f"imgcls report --run {path}"
    )


def _thresholds(run: RunDir, labels: list[str], bundle: Path | None) -> np.ndarray:
    """A multilabel model's per-label thresholds: the bundle's, else the run's (metrics.json)."""
    if bundle is not None:
        from imgcls.manifest import load_manifest

        manifest = load_manifest(bundle)
        if manifest.thresholds is not None:
            return np.asarray(manifest.thresholds)
    recorded = json.loads(run.metrics_json.read_text(encoding="utf-8")).get("thresholds") or {}
    if any(label not in recorded for label in labels):
        raise ConfigError(
            f"{run.metrics_json}: no per-label thresholds; the run did not finish its evaluation"
        )
    return np.array([recorded[label] for label in labels])


def write_report(run_path: Path, options: ReportOptions = ReportOptions()) -> Path:
    """Write the report of the run at ``run_path``; returns the path of its ``index.html``."""
    timer = _Timer()
    begun = started = time.perf_counter()
    run = RunDir(Path(run_path))
    other = _other_report(Path(options.compare)) if options.compare is not None else None
    config = run.read_config()
    if other is not None and (other.get("task", "multiclass") == "multilabel") != (
        config.task == "multilabel"
    ):
        raise ConfigError(
            f"--compare {options.compare}: a report of a {other.get('task', 'multiclass')} run, and {run.path} is "
            f"{config.task}; compare runs of the same task"
        )
    if other is not None and config.task == "multilabel":
        raise ConfigError(
            f"--compare: the multilabel report has no comparison yet; put the two runs' {run.path.name}/report/"
            "model_card.md (or metrics.json summaries) side by side"
        )
    labels = run.read_labels()
    spec = preprocess_spec(config.preprocess)
    out = Path(options.out) if options.out is not None else run.path / "report"
    figures_dir = out / "figures"
    if figures_dir.is_dir():
        shutil.rmtree(figures_dir)  # no figure of an earlier report may survive into this one
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(options.seed)

    split_name, samples, attributes, source = _eval_samples(run, config, labels, options)
    reviewed = _model_under_review(run, config, labels, options.bundle)
    model = reviewed.model.cpu().eval()
    crops = decode_crops(samples, spec, what=f"decode {split_name}")
    logits = logits_of(model, crops, spec)
    started = timer.step("predict", started)
    if config.task == "multilabel":
        return multilabel_report(
            out=out,
            samples=samples,
            logits=logits,
            labels=labels,
            thresholds=_thresholds(run, labels, options.bundle),
            evaluated=split_name,
            model=reviewed.described_as,
            run_path=run.path,
            config_digest=config_digest(config),
            rounds=options.bootstrap_rounds,
            seed=options.seed,
            mistakes=options.mistakes,
        )
    y = np.array([s.label for s in samples])

    temperature, fitted_on = reviewed.temperature, "val"
    if temperature is None:
        val = run.read_splits(labels)["val"]
        if len(val) >= MIN_VALIDATION_IMAGES:
            val_logits = logits_of(model, decode_crops(val, spec, what="decode val"), spec)
            temperature = float(fit_temperature(val_logits, np.array([s.label for s in val])))
            fitted_on = "val (fitted by the report: the model under review carries none)"
        else:
            temperature = 1.0
            fitted_on = (
                f"not fitted: only {len(val)} validation images (at least {MIN_VALIDATION_IMAGES} needed)"
            )
    probabilities = apply_temperature(logits, temperature)
    raw = apply_temperature(logits, 1.0)
    predictions = probabilities.argmax(axis=1)
    started = timer.step("calibration", started)

    summary = {
        k: v.to_json()
        for k, v in summary_metrics(
            y, probabilities, rounds=options.bootstrap_rounds, seed=options.seed
        ).items()
    }
    per_class = per_class_table(y, probabilities, labels)
    confusion = confusion_matrix(y, predictions, labels=range(len(labels)))
    pairs = most_confused_pairs(confusion, labels, k=5)
    confused_pair_strips(pairs, samples, predictions, y, labels, figures_dir)
    figure_paths = {
        "confusion": figures.plot_confusion(confusion, labels, figures_dir / "confusion.png"),
        "roc_pr": figures.plot_roc_pr(roc_pr_curves(y, probabilities, labels), figures_dir / "roc_pr.png"),
    }
    started = timer.step("metrics", started)

    calibration = {
        "method": "temperature scaling",
        "temperature": round(float(temperature), 6),
        "fitted_on": fitted_on,
        "bins": ECE_BINS,
        "ece_before": round(float(expected_calibration_error(raw, y, bins=ECE_BINS)), 6),
        "ece_after": round(float(expected_calibration_error(probabilities, y, bins=ECE_BINS)), 6),
        "reliability_before": reliability_bins(raw, y, bins=ECE_BINS),
        "reliability_after": reliability_bins(probabilities, y, bins=ECE_BINS),
    }
    figure_paths["reliability"] = figures.plot_reliability(
        calibration["reliability_before"], calibration["reliability_after"], figures_dir / "reliability.png"
    )

    subset = _stratified_subset(y, options.max_images, options.seed)
    gallery_rows = mistakes_gallery(
        model,
        reviewed.architecture,
        spec,
        [samples[i] for i in subset],
        probabilities[subset],
        y[subset],
        labels,
        figures_dir,
        count=options.mistakes,
    )
    started = timer.step("mistakes", started)
    robustness = robustness_table(model, crops[subset], y[subset], spec, seed=options.seed)
    figure_paths["robustness"] = figures.plot_robustness(robustness, figures_dir / "robustness.png")
    started = timer.step("robustness", started)

    subgroups = (
        subgroup_table(
            y, predictions, attributes, len(labels), seed=options.seed, rounds=options.bootstrap_rounds
        )
        if attributes
        else {}
    )
    train_samples = run.read_splits(labels)["train"]
    train_y = np.array([s.label for s in train_samples])
    majority = int(np.bincount(train_y, minlength=len(labels)).argmax()) if len(train_y) else 0
    majority_predictions = np.full_like(y, majority)
    classical_subset = _stratified_subset(train_y, CLASSICAL_TRAIN_IMAGES, options.seed)
    train_crops = decode_crops(
        [train_samples[i] for i in classical_subset], spec, what="decode train (baseline)"
    )
    baselines = {
        "majority": {
            "class": labels[majority],
            "accuracy": round(float((y == majority).mean()), 6),
            "f1_macro": round(
                float(
                    f1_score(
                        y, majority_predictions, labels=range(len(labels)), average="macro", zero_division=0
                    )
                ),
                6,
            ),
        },
        "logistic_regression": logistic_regression_baseline(
            train_crops, train_y[classical_subset], crops, y, len(labels), seed=options.seed
        ),
    }
    started = timer.step("subgroups_and_baselines", started)

    report: dict = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "run": str(run.path),
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "imgcls_version": imgcls.__version__,
        "model": {
            "name": config.export.name or run.path.name,
            "architecture": reviewed.architecture,
            "described_as": reviewed.described_as,
            "bundle_version": reviewed.bundle_version,
            "config_digest": config_digest(config),
        },
        "data": {
            "source": source,
            "split": split_name,
            "images": len(samples),
            "classes": labels,
            "counts": {name: int((y == i).sum()) for i, name in enumerate(labels)},
            "train_images": len(train_samples),
        },
        "bootstrap": {
            "rounds": options.bootstrap_rounds,
            "seed": options.seed,
            "confidence": 0.95,
            "resampling": "within each class",
        },
        "summary": summary,
        "per_class": per_class,
        "confusion": {"labels": labels, "counts": confusion.tolist(), "most_confused": pairs},
        "calibration": calibration,
        "mistakes": gallery_rows,
        "robustness": robustness,
        "subgroups": subgroups,
        "baselines": baselines,
        "comparison": None
        if other is None
        else compare_runs({"run": str(run.path), "summary": summary, "per_class": per_class}, other),
        "figures": figure_paths,
    }
    report["timings_s"] = timer.seconds
    (out / "model_card.md").write_text(card_markdown(report), encoding="utf-8")
    (out / "index.html").write_text(render_page(report), encoding="utf-8")
    report["timings_s"]["total"] = round(time.perf_counter() - begun, 3)
    (out / "metrics.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return out / "index.html"
