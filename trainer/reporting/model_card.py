"""The model card (Mitchell et al., 2019), filled in from the report: what the model is for, what it
was trained and evaluated on, how well it does with what uncertainty, and where it fails.

Written as blocks that render both to Markdown (``model_card.md``) and into the HTML page.
"""

from __future__ import annotations

import html

__all__ = ["card_blocks", "card_html", "card_markdown"]

Block = tuple[str, object]  # ("h2", str) | ("p", str) | ("ul", list[str])


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _interval(entry: dict) -> str:
    return f"{_pct(entry['value'])} (95 % CI {_pct(entry['low'])} to {_pct(entry['high'])})"


def card_blocks(report: dict) -> list[Block]:
    model, data, summary = report["model"], report["data"], report["summary"]
    blocks: list[Block] = [
        ("h1", f"Model card: {model['name']}"),
        ("h2", "Intended use"),
        (
            "p",
            f"Classifies an image into one of {len(data['classes'])} classes ({', '.join(data['classes'][:12])}"
            f"{', ...' if len(data['classes']) > 12 else ''}). Trained for images like those of the training "
            "data below; it has no 'none of these' answer, so it must not be shown images of other kinds.",
        ),
        ("h2", "Model"),
        (
            "ul",
            [
                f"architecture: {model['architecture']}",
                f"weights: {model['described_as']}",
                f"config digest: {model['config_digest'][:12]}",
                f"scores: softmax(logits / {report['calibration']['temperature']:.3f}) "
                "(temperature fitted on the validation split)",
            ],
        ),
        ("h2", "Data"),
        (
            "ul",
            [
                f"source: {data['source']}",
                f"evaluated on: {data['split']} ({data['images']} images)",
                "images per class (evaluated): "
                + ", ".join(f"{name} {count}" for name, count in list(data["counts"].items())[:20]),
            ]
            + ([f"training split: {data['train_images']} images"] if data.get("train_images") else []),
        ),
        ("h2", "Metrics"),
        (
            "ul",
            [
                f"{name.replace('_', ' ')}: {_interval(entry)}"
                for name, entry in summary.items()
                if name != "log_loss"
            ],
        ),
    ]
    weakest = sorted(report["per_class"], key=lambda row: row["f1"])[:3]
    blocks += [
        ("h2", "Weakest classes"),
        (
            "ul",
            [
                f"{row['class']}: F1 {row['f1']:.3f}, recall {row['recall']:.3f} ({row['support']} images)"
                for row in weakest
            ],
        ),
    ]
    robustness = report.get("robustness")
    if robustness:
        worst = sorted(
            ((name, entry["accuracy"][-1]) for name, entry in robustness["corruptions"].items()),
            key=lambda x: x[1],
        )[:3]
        blocks += [
            ("h2", "Corruptions"),
            (
                "p",
                f"Mean accuracy under 10 corruptions at 5 severities: {_pct(robustness['mean_corruption_accuracy'])}, "
                f"{_pct(robustness['relative_to_clean'])} of clean. Hardest at severity 5: "
                + ", ".join(f"{name} {_pct(acc)}" for name, acc in worst)
                + ".",
            ),
        ]
    flagged = [
        f"{column} = {row['group']}: accuracy {_pct(row['accuracy']['value'])} ({row['support']} images)"
        for column, rows in (report.get("subgroups") or {}).items()
        for row in rows
        if row["flagged"]
    ]
    if report.get("subgroups"):
        blocks += [("h2", "Subgroups"), ("ul", flagged or ["no group is significantly below the rest"])]
    baselines = report["baselines"]
    limitations = [
        f"Measured on {data['images']} images; the intervals above show how much that leaves uncertain.",
        f"A majority-class guess scores {_pct(baselines['majority']['accuracy'])} and a logistic regression on "
        f"thumbnails {_pct(baselines['logistic_regression']['accuracy'])} on the same images.",
    ]
    if report["calibration"]["ece_after"] > 0.05:
        limitations.append(
            f"Scores are not well calibrated even after temperature scaling (ECE {report['calibration']['ece_after']:.3f})."
        )
    if robustness and robustness["relative_to_clean"] is not None and robustness["relative_to_clean"] < 0.8:
        limitations.append("Accuracy falls substantially on corrupted images (see Corruptions).")
    blocks += [("h2", "Limitations"), ("ul", limitations)]
    return blocks


def card_markdown(report: dict) -> str:
    lines: list[str] = []
    for kind, content in card_blocks(report):
        if kind == "h1":
            lines += [f"# {content}", ""]
        elif kind == "h2":
            lines += [f"## {content}", ""]
        elif kind == "p":
            lines += [str(content), ""]
        else:
            lines += [f"- {item}" for item in content] + [""]  # type: ignore[union-attr]
    return "\n".join(lines)


def card_html(report: dict) -> str:
    parts = []
    for kind, content in card_blocks(report):
        if kind == "h1":
            continue  # the page has its own title
        if kind == "h2":
            parts.append(f"<h3>{html.escape(str(content))}</h3>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(str(content))}</p>")
        else:
            items = "".join(f"<li>{html.escape(item)}</li>" for item in content)  # type: ignore[union-attr]
            parts.append(f"<ul>{items}</ul>")
    return "\n".join(parts)
