"""The flagged images as a labelled folder for the next ``imgcls train``: one sub-folder per correct
label, ``_unlabelled/`` for "none of these" (folders starting with ``_`` are not classes to the
trainer), and ``feedback.csv`` with every record's provenance.

An image flagged with the same correct label several times is written once; flagged with different
labels, once under each (the CSV shows the disagreement).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from service.feedback.store import FeedbackStore

__all__ = ["UNLABELLED", "ExportSummary", "export_folder", "list_rows"]

UNLABELLED = "_unlabelled"
CSV_NAME = "feedback.csv"
CSV_COLUMNS = (
    "path",
    "label",
    "model",
    "version",
    "predicted_label",
    "scores",
    "note",
    "request_id",
    "created_at",
    "image_sha256",
    "flag_count",
    "record_id",
)
_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif"}


@dataclass(frozen=True)
class ExportSummary:
    records: int
    images: int  # files written
    labels: dict[str, int]  # records per correct label (UNLABELLED for none)


def _folder_name(label: str | None) -> str:
    if label is None:
        return UNLABELLED
    # a label is a folder name: nothing that climbs out or hides (labels are checked against the model's)
    safe = label.replace("/", "_").replace("\\", "_").strip()
    if safe in ("", ".", "..") or safe.startswith((".", "_")):
        safe = f"label-{safe.lstrip('._') or 'empty'}"
    return safe


def list_rows(store: FeedbackStore, model: str | None = None) -> list[dict]:
    """Every record (of ``model``), oldest first, as the CSV's columns without ``path``."""
    rows = []
    for record, image in store.records(model):
        rows.append(
            {
                "label": record.correct_label,
                "model": record.model,
                "version": record.version,
                "predicted_label": record.predicted_label,
                "scores": record.scores,
                "note": record.note,
                "request_id": record.request_id,
                "created_at": record.created_at.isoformat(),
                "image_sha256": record.image_sha256,
                "flag_count": image.flag_count,
                "record_id": record.id,
                "image_format": image.image_format,
            }
        )
    return rows


def export_folder(store: FeedbackStore, out: Path, *, model: str | None = None) -> ExportSummary:
    """Write the labelled folder and ``feedback.csv`` into ``out`` (created; existing files with the same
    names are replaced)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = list_rows(store, model)
    paths: dict[tuple[str, str], str] = {}  # (folder, sha256) -> relative path
    for row in rows:
        folder = _folder_name(row["label"])
        suffix = _SUFFIXES.get(row["image_format"], ".img")
        paths.setdefault((folder, row["image_sha256"]), f"{folder}/{row['image_sha256'][:16]}{suffix}")
    wanted: dict[str, list[str]] = {}
    for (_, digest), relative in paths.items():
        wanted.setdefault(digest, []).append(relative)
    for digest, content in store.image_bytes(list(wanted)):
        for relative in wanted[digest]:
            target = out / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    labels: dict[str, int] = {}
    with (out / CSV_NAME).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            folder = _folder_name(row["label"])
            labels[row["label"] or UNLABELLED] = labels.get(row["label"] or UNLABELLED, 0) + 1
            scores = json.loads(row["scores"]) if row["scores"] else None
            writer.writerow(
                {
                    **row,
                    "path": paths[(folder, row["image_sha256"])],
                    "label": row["label"] or "",
                    "scores": json.dumps(scores, separators=(",", ":")) if scores else "",
                }
            )
    return ExportSummary(records=len(rows), images=len(paths), labels=labels)
