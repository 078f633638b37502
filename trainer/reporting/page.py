"""``index.html``: the report as one page that opens from disk with no network.

No scripts, no fonts or styles from elsewhere; images are PNG files beside the page. Every value
comes from the report dict that is also written to ``metrics.json``, escaped.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from trainer.reporting.model_card import card_html

__all__ = ["render_page"]

_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 72em; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f4f4f4; } .flag { background: #fde2e1; } .muted { color: #666; }
img { max-width: 100%; border: 1px solid #eee; } nav a { margin-right: 1em; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; }
"""

SECTIONS = (
    ("summary", "Summary"),
    ("per-class", "Per class"),
    ("confusion", "Confusion"),
    ("calibration", "Calibration"),
    ("mistakes", "Mistakes"),
    ("robustness", "Robustness"),
    ("subgroups", "Subgroups"),
    ("baselines", "Baselines"),
    ("comparison", "Comparison"),
    ("model-card", "Model card"),
)


def _e(value: object) -> str:
    return html.escape(str(value))


def _num(value: object, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return _e(value)


def _table(
    header: Sequence[str], rows: Sequence[Sequence[object]], flags: Sequence[bool] | None = None
) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        css = ' class="flag"' if flags and flags[i] else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{_num(v)}</td>" for v in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(src: str | None, caption: str) -> str:
    if not src:
        return ""
    return f'<figure><img src="{_e(src)}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>'


def _interval(entry: dict) -> str:
    return f"{entry['value']:.4f} [{entry['low']:.4f}, {entry['high']:.4f}]"


def _summary(report: dict) -> str:
    model, data = report["model"], report["data"]
    facts = _table(
        ["", ""],
        [
            ["model", model["architecture"]],
            ["weights", model["described_as"]],
            ["bundle version", model["bundle_version"] or "none"],
            ["config digest", model["config_digest"][:16]],
            ["evaluated on", f"{data['split']} ({data['images']} images, {len(data['classes'])} classes)"],
        ],
    )
    metrics = _table(
        ["metric", "value [95 % CI]"],
        [[name.replace("_", " "), _interval(entry)] for name, entry in report["summary"].items()],
    )
    boot = report["bootstrap"]
    note = (
        f'<p class="muted">Intervals: {boot["rounds"]} bootstrap resamples within each class (seed '
        f"{boot['seed']}). Scores are temperature-scaled (see Calibration).</p>"
    )
    return facts + metrics + note


def _per_class(report: dict) -> str:
    rows = [
        [r["class"], r["precision"], r["recall"], r["f1"], r["support"], r["auroc"], r["average_precision"]]
        for r in report["per_class"]
    ]
    table = _table(["class", "precision", "recall", "F1", "support", "AUROC", "AP"], rows)
    return table + _figure(report["figures"].get("roc_pr"), "one-vs-rest ROC and precision-recall curves")


def _confusion(report: dict) -> str:
    parts = [_figure(report["figures"].get("confusion"), "confusion matrix: counts and row-normalised")]
    pairs = report["confusion"]["most_confused"]
    if not pairs:
        return parts[0] + "<p>No confusions: every image of this split is classified correctly.</p>"
    parts.append(
        _table(
            ["true", "predicted as", "images", "share of the true class"],
            [[p["true"], p["predicted"], p["count"], p["rate"]] for p in pairs],
        )
    )
    for pair in pairs:
        parts.append(_figure(pair.get("figure"), f"{pair['true']} taken for {pair['predicted']}"))
    return "".join(parts)


def _calibration(report: dict) -> str:
    c = report["calibration"]
    table = _table(
        ["", "ECE (15 bins)"],
        [["softmax(logits)", c["ece_before"]], [f"softmax(logits / {c['temperature']:.3f})", c["ece_after"]]],
    )
    text = (
        f"<p>Temperature {c['temperature']:.4f} ({_e(c['fitted_on'])}); the bundle's manifest carries "
        "a fitted temperature and the service returns the scaled scores.</p>"
    )
    return text + table + _figure(report["figures"].get("reliability"), "reliability diagram")


def _mistakes(report: dict) -> str:
    rows = report["mistakes"]
    if not rows:
        return "<p>No mistakes on this split.</p>"
    method = {"gradcam": "Grad-CAM", "rollout": "gradient-weighted attention rollout"}.get(
        rows[0].get("method", "gradcam"), rows[0].get("method", "")
    )
    parts = [
        f"<p>The most confident errors; each shows the image, {_e(method)} for the predicted class, "
        "and for the true class.</p>"
    ]
    for row in rows:
        caption = f"{row['path']}: true {row['true']}, predicted {row['predicted']} ({row['confidence']:.3f})"
        parts.append(_figure(row["figure"], caption))
    return "".join(parts)


def _robustness(report: dict) -> str:
    r = report.get("robustness")
    if not r:
        return "<p>Not computed.</p>"
    rows = [[name, *entry["accuracy"]] for name, entry in r["corruptions"].items()]
    table = _table(["corruption", "severity 1", "2", "3", "4", "5"], rows)
    text = (
        f"<p>{r['images']} images; clean accuracy {r['clean_accuracy']:.4f}; mean corruption accuracy "
        f"{r['mean_corruption_accuracy']:.4f} ({_num(r['relative_to_clean'], 3)} of clean).</p>"
    )
    return (
        text + table + _figure(report["figures"].get("robustness"), "accuracy under corruption by severity")
    )


def _subgroups(report: dict) -> str:
    groups = report.get("subgroups")
    if not groups:
        return "<p>No subgroup columns: give a CSV with extra columns (camera, site, ...) to see per-group results.</p>"
    parts = []
    for column, rows in groups.items():
        parts.append(f"<h3>{_e(column)}</h3>")
        parts.append(
            _table(
                ["group", "images", "accuracy [95 % CI]", "macro F1", "p (below the rest)"],
                [
                    [r["group"], r["support"], _interval(r["accuracy"]), r["f1_macro"], r["p_value"]]
                    for r in rows
                ],
                [r["flagged"] for r in rows],
            )
        )
    return (
        "".join(parts)
        + '<p class="muted">Highlighted: significantly below the other images (Holm-corrected).</p>'
    )


def _baselines(report: dict) -> str:
    b = report["baselines"]
    accuracy = report["summary"]["accuracy"]
    return _table(
        ["model", "accuracy", "macro F1"],
        [
            ["this model", accuracy["value"], report["summary"]["f1_macro"]["value"]],
            [f"always {b['majority']['class']}", b["majority"]["accuracy"], b["majority"]["f1_macro"]],
            [
                b["logistic_regression"]["model"],
                b["logistic_regression"]["accuracy"],
                b["logistic_regression"]["f1_macro"],
            ],
        ],
    )


def _comparison(report: dict) -> str:
    c = report.get("comparison")
    if not c:
        return "<p>No comparison (imgcls report --compare OTHER_RUN).</p>"
    summary = _table(
        ["metric", "this run", "other run", "difference"],
        [[r["metric"], r["current"], r["other"], r["difference"]] for r in c["summary"]],
        [r["flagged"] for r in c["summary"]],
    )
    per_class = _table(
        ["class", "F1 this run", "F1 other", "difference"],
        [[r["class"], r["current"], r["other"], r["difference"]] for r in c["per_class_f1"]],
        [r["flagged"] for r in c["per_class_f1"]],
    )
    return (
        f"<p>Against {_e(c['other_run'])}. Highlighted: the other run's value lies outside this run's 95 % "
        "interval (metrics), or F1 moved by more than 0.05 (classes).</p>" + summary + per_class
    )


def render_page(report: dict) -> str:
    bodies = {
        "summary": _summary,
        "per-class": _per_class,
        "confusion": _confusion,
        "calibration": _calibration,
        "mistakes": _mistakes,
        "robustness": _robustness,
        "subgroups": _subgroups,
        "baselines": _baselines,
        "comparison": _comparison,
        "model-card": card_html,
    }
    nav = "".join(f'<a href="#{key}">{_e(title)}</a>' for key, title in SECTIONS)
    sections = "".join(
        f'<section id="{key}"><h2>{_e(title)}</h2>{bodies[key](report)}</section>' for key, title in SECTIONS
    )
    title = f"Evaluation report: {report['model']['name']}"
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{_e(title)}</h1>"
        f'<p class="muted">Run {_e(report["run"])}, written {_e(report["generated_at"])} by imgcls '
        f"{_e(report['imgcls_version'])}.</p><nav>{nav}</nav>{sections}</body></html>\n"
    )
