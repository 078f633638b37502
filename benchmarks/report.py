"""Result files shared by the server benchmarks: results.json, a Markdown table, a bar chart."""

from __future__ import annotations

import contextlib
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "LOAD_COLUMNS",
    "figure_line",
    "machine_line",
    "plotting_available",
    "saved_figure",
    "write_record",
    "write_table_report",
]

# (header, key) of the load columns every server table shows
LOAD_COLUMNS = (
    ("requests/s", "requests_per_s"),
    ("images/s", "images_per_s"),
    ("p50 ms", "p50_ms"),
    ("p90 ms", "p90_ms"),
    ("p99 ms", "p99_ms"),
    ("errors", "errors"),
    ("client CPU %", "client_cpu_percent"),
)


def plotting_available() -> bool:
    """Whether matplotlib is installed: it comes with the train extra, so a serving install (`pip install
    imgcls`) benchmarks and writes its tables without the figures."""
    return importlib.util.find_spec("matplotlib") is not None


def figure_line(alt: str, file_name: str) -> str:
    """The Markdown line that shows a figure, or says why there is none."""
    if plotting_available():
        return f"![{alt}]({file_name})"
    return '(no figure: matplotlib is not installed here; `pip install "imgcls[train]"` adds it)'


@contextlib.contextmanager
def saved_figure(path: Path, *, ncols: int = 1, figsize: tuple[float, float] = (7, 4.5)) -> Iterator[Any]:
    """``(figure, axes)`` from headless matplotlib, laid out and written to ``path`` when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=figsize)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def machine_line(document: dict) -> str:
    m = document["machine"]
    gpu = f", {m['cuda']}" if m.get("cuda") else ""
    return (
        f"{m['cpu']}, {m['cores']} cores{gpu}, torch {m['torch']}, Python {m['python']}, {document['date']}"
    )


def write_record(folder: Path, document: dict, lines: list[str]) -> Path:
    """A benchmark's record: ``document`` to results.json, ``lines`` to results.md (and to the
    terminal); returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(document, indent=1) + "\n")
    (folder / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {folder}")
    return folder


def _cell(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "0"
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int | float) and not isinstance(value, bool) else str(value)


def write_table_report(
    folder: Path,
    document: dict,
    *,
    title: str,
    intro: list[str],
    label_key: str,
    columns: tuple[tuple[str, str], ...],
    outro: list[str] = (),
) -> Path:
    """``document`` to results.json; ``document['rows']`` as a table in results.md; a throughput/p99 chart."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(document, indent=1) + "\n")
    rows = document["rows"]
    lines = [
        f"# {title}",
        "",
        *intro,
        "",
        "| " + " | ".join(h for h, _ in columns) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|",
        *("| " + " | ".join(_cell(row.get(key)) for _, key in columns) + " |" for row in rows),
        "",
        *outro,
        "",
        figure_line("throughput and p99", "throughput-p99.png"),
        "",
    ]
    (folder / "results.md").write_text("\n".join(lines))

    labels = [str(row[label_key]) for row in rows]
    size = (10, 0.6 * len(rows) + 2)
    if plotting_available():
        with saved_figure(folder / "throughput-p99.png", ncols=2, figsize=size) as (fig, (left, right)):
            left.barh(labels, [row.get("images_per_s") or 0 for row in rows], color="tab:blue")
            left.set(xlabel="images/s (higher is better)")
            right.barh(labels, [row.get("p99_ms") or 0 for row in rows], color="tab:orange")
            right.set(xlabel="p99 latency, ms (lower is better)")
            right.set_yticks([])
            for axis in (left, right):
                axis.invert_yaxis()
                axis.grid(axis="x", alpha=0.3)
            fig.suptitle(title, fontsize=10)
    return folder
