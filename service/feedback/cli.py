"""``imgcls feedback list|export``: read the flags the service stored, and turn them into a labelled
folder for ``imgcls train``. Libraries are imported when a command runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["app"]

app = typer.Typer(
    name="feedback",
    help="The mistakes people flagged through the service: list them, or export a labelled folder.",
    no_args_is_help=True,
)

DB_HELP = (
    "Feedback database URL (the service's IMGCLS_FEEDBACK_DB_URL, e.g. postgresql://user:pw@host/db). "
    "Default: the service's default SQLite file, IMGCLS_FEEDBACK_DIR/feedback.db (./feedback)."
)


def _open(db: str | None):
    import os

    from service.feedback.store import default_url, open_store

    url = (
        db
        or os.environ.get("IMGCLS_FEEDBACK_DB_URL")
        or default_url(Path(os.environ.get("IMGCLS_FEEDBACK_DIR", "feedback")))
    )
    return open_store(url)


@app.command("list")
def list_flags(
    db: Annotated[str | None, typer.Option(help=DB_HELP, show_default=False)] = None,
    model: Annotated[str | None, typer.Option(help="Only this model's flags.")] = None,
) -> None:
    """One line per flag, oldest first: id, time, model and version, predicted -> correct label, note."""
    store = _open(db)
    try:
        from service.feedback.export import UNLABELLED, list_rows

        rows = list_rows(store, model)
    finally:
        store.close()
    if not rows:
        typer.echo("no flags" + (f" for model {model}" if model else ""))
        return
    for row in rows:
        correct = row["label"] if row["label"] is not None else f"({UNLABELLED}: none of these)"
        note = f"  note: {row['note']}" if row["note"] else ""
        typer.echo(
            f"{row['record_id']:>6}  {row['created_at'][:19]}  {row['model']} v{row['version']}  "
            f"{row['predicted_label'] or '?'} -> {correct}  image {row['image_sha256'][:12]} "
            f"(flagged {row['flag_count']}x){note}"
        )


@app.command("export")
def export(
    out: Annotated[Path, typer.Option(help="Folder to write: <label>/<image>, _unlabelled/, feedback.csv.")],
    db: Annotated[str | None, typer.Option(help=DB_HELP, show_default=False)] = None,
    model: Annotated[str | None, typer.Option(help="Only this model's flags.")] = None,
) -> None:
    """Write the flagged images as a labelled folder (one sub-folder per correct label; "none of these"
    in _unlabelled/, which training ignores) and feedback.csv with each record's provenance. Train on
    it with imgcls train --data OUT, or merge it into your dataset."""
    from service.feedback.export import export_folder

    store = _open(db)
    try:
        summary = export_folder(store, out, model=model)
    finally:
        store.close()
    per_label = ", ".join(f"{label}: {count}" for label, count in sorted(summary.labels.items())) or "none"
    typer.echo(
        f"{summary.records} flags, {summary.images} image files -> {out} ({per_label}); provenance in {out / 'feedback.csv'}"
    )
