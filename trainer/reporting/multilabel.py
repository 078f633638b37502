"""The evaluation report of a multilabel run (``task: multilabel``).

The model scores each label with a sigmoid; a label is predicted at its threshold (tuned on
validation, from the run's metrics.json or the bundle's manifest). The report gives the label-set
metrics with 95 % bootstrap intervals (images resampled), the per-label table (precision, recall,
F1, average precision, threshold, support), the most frequent label combinations in the data and in
the predictions, and the images with the most wrong label decisions. ``index.html`` opens from
disk; ``metrics.json`` holds the same data (``task: multilabel``); ``model_card.md`` summarises it.

Calibration, corruption robustness, the Grad-CAM gallery, subgroups and ``--compare`` of the
single-label report are not computed for multilabel runs: the page says so instead of showing
single-label numbers.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from scipy.special import expit

import imgcls
from trainer.data import Sample, label_matrix
from trainer.multilabel import multilabel_metrics, predict_sets

__all__ = ["SET_METRICS", "multilabel_report"]

# (key in multilabel_metrics, name on the page), the headline metrics with bootstrap intervals
SET_METRICS = (
    ("map", "mAP"),
    ("f1_micro", "micro F1"),
    ("f1_macro", "macro F1"),
    ("subset_accuracy", "subset accuracy"),
    ("hamming_loss", "Hamming loss"),
)


def _bootstrap(
    point: dict,
    scores: np.ndarray,
    targets: np.ndarray,
    thresholds: np.ndarray,
    labels: Sequence[str],
    rounds: int,
    seed: int,
) -> dict[str, dict[str, float]]:
    """``point``'s headline metrics with their 95 % intervals over ``rounds`` resamples of the images."""
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {key: [] for key, _ in SET_METRICS}
    for _ in range(rounds):
        index = rng.integers(0, len(targets), len(targets))
        metrics = multilabel_metrics(scores[index], targets[index], labels, thresholds)
        for key, _ in SET_METRICS:
            draws[key].append(metrics[key])
    return {
        key: {
            "value": round(float(point[key]), 6),
            "low": round(float(np.percentile(draws[key], 2.5)), 6),
            "high": round(float(np.percentile(draws[key], 97.5)), 6),
        }
        for key, _ in SET_METRICS
    }


def _combinations(matrix: np.ndarray, labels: Sequence[str], k: int = 10) -> list[dict]:
    counts = Counter(tuple(np.flatnonzero(row)) for row in matrix)
    return [{"labels": [labels[i] for i in key], "images": count} for key, count in counts.most_common(k)]


def multilabel_report(
    *,
    out: Path,
    samples: list[Sample],
    logits: np.ndarray,
    labels: list[str],
    thresholds: np.ndarray,
    evaluated: str,
    model: str,
    run_path: Path,
    config_digest: str,
    rounds: int,
    seed: int,
    mistakes: int = 12,
) -> Path:
    """Write ``index.html``, ``metrics.json`` and ``model_card.md`` into ``out``; returns the page."""
    targets = label_matrix(samples, len(labels))
    scores = expit(logits.astype(np.float64))
    predicted = predict_sets(scores, thresholds)
    point = multilabel_metrics(scores, targets, labels, thresholds)
    summary = _bootstrap(point, scores, targets, thresholds, labels, rounds, seed)
    wrong = (predicted != targets).sum(axis=1)
    worst = [int(i) for i in np.argsort(-wrong, kind="stable")[:mistakes] if wrong[i] > 0]
    report = {
        "schema_version": 1,
        "task": "multilabel",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "imgcls_version": imgcls.__version__,
        "run": str(run_path),
        "model": model,
        "config_digest": config_digest,
        "evaluated": evaluated,
        "images": len(samples),
        "summary": summary,
        "bootstrap": {"rounds": rounds, "seed": seed, "confidence": 0.95, "resampled": "images"},
        "per_label": [{"label": name, **row} for name, row in point["per_class"].items()],
        "combinations": {
            "true": _combinations(targets, labels),
            "predicted": _combinations(predicted, labels),
        },
        "most_wrong": [
            {
                "path": str(samples[i].path),
                "true": [labels[j] for j in np.flatnonzero(targets[i])],
                "predicted": [labels[j] for j in np.flatnonzero(predicted[i])],
                "wrong_decisions": int(wrong[i]),
            }
            for i in worst
        ],
        "not_computed": "calibration, corruption robustness, the Grad-CAM gallery, subgroups and the comparison "
        "with another run are single-label sections",
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out / "model_card.md").write_text(_card(report), encoding="utf-8")
    page = out / "index.html"
    page.write_text(_page(report), encoding="utf-8")
    return page


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _card(report: dict) -> str:
    lines = [
        f"# Model card: {report['model']}",
        "",
        f"Multilabel classifier (a sigmoid per label, per-label thresholds tuned on validation), evaluated on "
        f"{report['evaluated']} ({report['images']} images).",
        "",
        "| metric | value | 95 % interval |",
        "|---|---:|---:|",
    ]
    for key, name in SET_METRICS:
        row = report["summary"][key]
        lines.append(f"| {name} | {row['value']:.4f} | {row['low']:.4f} – {row['high']:.4f} |")
    weakest = sorted(report["per_label"], key=lambda r: r["f1"])[:3]
    lines += ["", "Weakest labels by F1: " + ", ".join(f"{r['label']} ({r['f1']:.3f})" for r in weakest), ""]
    return "\n".join(lines)


def _page(report: dict) -> str:
    esc = html.escape
    summary_rows = "".join(
        f"<tr><td>{esc(name)}</td><td>{report['summary'][key]['value']:.4f}</td>"
        f"<td>{report['summary'][key]['low']:.4f} – {report['summary'][key]['high']:.4f}</td></tr>"
        for key, name in SET_METRICS
    )
    label_rows = "".join(
        f"<tr><td>{esc(r['label'])}</td><td>{_fmt(r['precision'])}</td><td>{_fmt(r['recall'])}</td>"
        f"<td>{_fmt(r['f1'])}</td><td>{_fmt(r['average_precision'])}</td><td>{r['threshold']:.3f}</td>"
        f"<td>{r['support']}</td></tr>"
        for r in report["per_label"]
    )

    def combos(rows: list[dict]) -> str:
        return "".join(
            f"<tr><td>{esc('; '.join(r['labels']) or '(none)')}</td><td>{r['images']}</td></tr>" for r in rows
        )

    wrong_rows = "".join(
        f"<tr><td>{esc(r['path'])}</td><td>{esc('; '.join(r['true']) or '(none)')}</td>"
        f"<td>{esc('; '.join(r['predicted']) or '(none)')}</td><td>{r['wrong_decisions']}</td></tr>"
        for r in report["most_wrong"]
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Report: {esc(report["model"])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style>
</head><body>
<h1>Multilabel evaluation: {esc(report["model"])}</h1>
<p>{esc(report["evaluated"])}, {report["images"]} images; run <code>{esc(report["run"])}</code>. A label is
predicted when its sigmoid score reaches its threshold (tuned on the validation split to maximise its F1).</p>
<h2>Summary</h2>
<table><tr><th>metric</th><th>value</th><th>95 % bootstrap interval</th></tr>{summary_rows}</table>
<h2>Per label</h2>
<table><tr><th>label</th><th>precision</th><th>recall</th><th>F1</th><th>average precision</th><th>threshold</th>
<th>support</th></tr>{label_rows}</table>
<h2>Label combinations</h2>
<table><tr><th>true combination</th><th>images</th></tr>{combos(report["combinations"]["true"])}</table>
<table><tr><th>predicted combination</th><th>images</th></tr>{combos(report["combinations"]["predicted"])}</table>
<h2>Most wrong label decisions</h2>
<table><tr><th>image</th><th>true</th><th>predicted</th><th>wrong decisions</th></tr>{wrong_rows}</table>
<p>Not computed for multilabel runs: {esc(report["not_computed"])}.</p>
</body></html>
"""
