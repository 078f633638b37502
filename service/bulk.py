"""``imgcls predict --bundle B INPUT --out FILE``: bulk prediction in-process, no server.

The same pieces as the service, without HTTP: the bundle's runtime as ``imgcls serve`` chooses it
(calibrated or sigmoid scores as the service returns them), its :class:`~service.preprocess.Preprocessor`
on a pool of decode threads, and batches of ``batch_size`` images; the next batch decodes while the
current one infers. Every input gets one output row, in input order: its top-k (and, for a multilabel
bundle, its labels above their thresholds), or the reason it could not be read; one bad file never
stops the job.

Output formats: CSV, JSON Lines, or Parquet. CSV and JSON Lines are appended batch by batch, so a
rerun skips every row already written (a half-written last row is dropped and redone). Parquet files
cannot be appended to, so rows go to a JSON Lines journal (``OUT.journal.jsonl``) that is compacted
into the Parquet file at the end; a rerun reads both.

``--shard I/N`` keeps every N-th input from the I-th (0-based) of the sorted list, so N jobs cover the
input exactly once; ``merge_outputs`` joins their files back in input order.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls.errors import ConfigError
from imgcls.manifest import Manifest, load_manifest, verify_artifacts
from service.decisions import labels_above, top_k_indices
from service.errors import BadInputError
from service.preprocess import Preprocessor, init_decode_thread
from service.runtimes import choose_runtime
from service.settings import default_intra_op_threads, usable_cores

__all__ = [
    "OUTPUT_FORMATS",
    "BulkResult",
    "Shard",
    "list_inputs",
    "merge_outputs",
    "output_format",
    "parse_shard",
    "predict_bulk",
]

OUTPUT_FORMATS = ("csv", "jsonl", "parquet")
_COLUMNS = ("path", "label", "score", "labels", "top_k", "error")
_LIST_SUFFIXES = (".txt", ".lst", ".list")


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def take(self, items: Sequence[Path]) -> list[Path]:
        return list(items[self.index :: self.count])


@dataclass(frozen=True)
class BulkResult:
    out: Path
    written: int  # rows this call wrote
    skipped: int  # rows already in the output from an earlier call
    unreadable: int  # rows of this call with an error instead of a prediction
    seconds: float
    runtime: str

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


def parse_shard(value: str | None, environ: dict[str, str] | None = None) -> Shard:
    """``I/N``; ``N`` alone takes I from ``JOB_COMPLETION_INDEX`` (a Kubernetes Indexed Job); None: 0/1."""
    environ = dict(os.environ) if environ is None else environ
    if value is None:
        return Shard(0, 1)
    index_text, sep, count_text = value.partition("/")
    if not sep:
        index_text, count_text = environ.get("JOB_COMPLETION_INDEX", ""), value
        if not index_text:
            raise ConfigError(
                f"--shard {value}: give I/N, or run where JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job)"
            )
    try:
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise ConfigError(f"--shard {value!r}: expected I/N with integers, e.g. 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard {index}/{count}: needs 0 <= I < N")
    return Shard(index, count)


def list_inputs(source: Path) -> list[Path]:
    """The images to predict, sorted: a folder (recursively, dot-files skipped), a CSV with a ``path``
    column, or a list file (``.txt``/``.lst``/``.list``, one path per line, ``#`` comments); relative
    paths are relative to the CSV's or list's folder."""
    source = Path(source)
    if source.is_dir():
        return sorted(
            p
            for p in source.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(source).parts)
        )
    if not source.is_file():
        raise ConfigError(
            f"{source}: not found; give a folder of images, a CSV with a path column, or a list file"
        )
    if source.suffix.lower() == ".csv":
        with source.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if "path" not in (reader.fieldnames or []):
                raise ConfigError(f"{source}: no 'path' column; the first row must name the columns")
            paths = [row["path"].strip() for row in reader if (row.get("path") or "").strip()]
    elif source.suffix.lower() in _LIST_SUFFIXES:
        lines = source.read_text(encoding="utf-8").splitlines()
        paths = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    else:
        raise ConfigError(
            f"{source}: give a folder, a .csv with a path column, or a list file ({', '.join(_LIST_SUFFIXES)})"
        )
    return sorted(dict.fromkeys(source.parent / p for p in paths))


def output_format(out: Path, fmt: str | None) -> str:
    chosen = fmt or {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}.get(Path(out).suffix.lower())
    if chosen not in OUTPUT_FORMATS:
        raise ConfigError(
            f"--out {out}: name it .csv, .jsonl or .parquet, or pass --format {'|'.join(OUTPUT_FORMATS)}"
        )
    return chosen


# --- rows ---


def _rows_for(paths: Sequence[Path], scores: np.ndarray, manifest: Manifest, top_k: int) -> Iterator[dict]:
    """The rows of decoded images, ranked and decided as the v1 route answers them."""
    thresholds = np.asarray(manifest.thresholds) if manifest.thresholds is not None else None
    labels = manifest.labels
    for path, row, order in zip(paths, scores, top_k_indices(scores, min(top_k, len(labels))), strict=True):
        yield {
            "path": str(path),
            "label": labels[order[0]],
            "score": float(row[order[0]]),
            "labels": None if thresholds is None else [labels[i] for i in labels_above(row, thresholds)],
            "top_k": [{"label": labels[i], "score": float(row[i])} for i in order],
            "error": None,
        }


def _error_row(path: Path, reason: str) -> dict:
    return {"path": str(path), "label": None, "score": None, "labels": None, "top_k": None, "error": reason}


# --- output files: appendable CSV and JSON Lines; Parquet through a JSON Lines journal ---


class _LineWriter:
    """Appends rows to a CSV or JSON Lines file, flushed per batch; knows the paths already written."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path, self.fmt = path, fmt
        self.done = _read_rows_paths(path, fmt) if path.is_file() else set()
        _drop_partial_last_line(path)
        new = not path.is_file() or path.stat().st_size == 0
        self._handle = path.open("a", newline="", encoding="utf-8")
        self._csv = csv.DictWriter(self._handle, fieldnames=_COLUMNS) if fmt == "csv" else None
        if self._csv is not None and new:
            self._csv.writeheader()

    def write(self, rows: list[dict]) -> None:
        for row in rows:
            if self._csv is not None:
                self._csv.writerow({key: _csv_cell(row[key]) for key in _COLUMNS})
            else:
                self._handle.write(json.dumps(row) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def _csv_cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, list):
        return json.dumps(value)
    return value


def _drop_partial_last_line(path: Path) -> None:
    """A killed run can leave half a row: cut the file back to its last complete line."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def _read_rows(path: Path, fmt: str) -> list[dict]:
    if fmt == "parquet":
        return _parquet().read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    complete = text[: text.rfind("\n") + 1]
    if fmt == "jsonl":
        return [json.loads(line) for line in complete.splitlines() if line.strip()]
    return list(csv.DictReader(complete.splitlines()))


def _read_rows_paths(path: Path, fmt: str) -> set[str]:
    try:
        return {row["path"] for row in _read_rows(path, fmt)}
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"{path}: exists but is not an output of imgcls predict ({exc}); pass another --out"
        ) from None


def _parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(
            "Parquet output needs pyarrow: pip install 'imgcls[parquet]' (or write .csv or .jsonl)"
        ) from None
    return pq


def _write_parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa

    table = pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("path", pa.string()),
                ("label", pa.string()),
                ("score", pa.float64()),
                ("labels", pa.list_(pa.string())),
                ("top_k", pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())]))),
                ("error", pa.string()),
            ]
        ),
    )
    staging = path.with_name(f".{path.name}.partial")
    _parquet().write_table(table, staging)
    staging.replace(path)


# --- the job ---


def predict_bulk(
    bundle: Path,
    inputs: Sequence[Path],
    out: Path,
    *,
    fmt: str | None = None,
    top_k: int = 5,
    batch_size: int = 32,
    device: str = "auto",
    runtime: str = "auto",
    decode_threads: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> BulkResult:
    """Predict every input not yet in ``out`` and append its row; see the module docstring."""
    fmt = output_format(out, fmt)
    manifest = load_manifest(bundle)
    verify_artifacts(bundle, manifest)
    # half the cores decode the next batch while the other half infer this one: on 2 cores one each,
    # the in-process ceiling's best setting there (docs/serving.md, bulk prediction)
    decode_threads = decode_threads or max(1, usable_cores() // 2)
    chosen = choose_runtime(
        manifest,
        bundle,
        preference=runtime,
        device=device,
        intra_op_threads=default_intra_op_threads(decode_threads),
    )
    preprocessor = Preprocessor(manifest.preprocess)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    journal_path = out.with_name(out.name + ".journal.jsonl") if fmt == "parquet" else out
    writer = _LineWriter(journal_path, "jsonl" if fmt == "parquet" else fmt)
    finished = _read_rows_paths(out, fmt) if fmt == "parquet" and out.is_file() else set()
    done = writer.done | finished
    todo = [p for p in inputs if str(p) not in done]
    written = unreadable = 0
    started = time.perf_counter()

    def load(path: Path) -> np.ndarray | str:
        try:
            return preprocessor(path.read_bytes())
        except OSError as exc:
            return f"cannot read the file ({exc.strerror or exc})"
        except BadInputError as exc:
            return str(exc)

    try:
        with ThreadPoolExecutor(
            decode_threads, thread_name_prefix="decode", initializer=init_decode_thread
        ) as pool:
            batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
            submitted = ([pool.submit(load, p) for p in batch] for batch in batches)  # lazily, one ahead
            ahead = next(submitted, None)
            for batch in batches:
                current, ahead = ahead, next(submitted, None)  # the next batch decodes while this one infers
                decoded = [future.result() for future in current]
                good = [i for i, item in enumerate(decoded) if not isinstance(item, str)]
                predicted = {}
                if good:
                    scores = chosen.infer(np.stack([decoded[i] for i in good]))
                    rows_of_good = _rows_for([batch[i] for i in good], scores, manifest, top_k)
                    predicted = dict(zip(good, rows_of_good, strict=True))
                rows = [predicted.get(i) or _error_row(batch[i], str(decoded[i])) for i in range(len(batch))]
                writer.write(rows)
                written += len(rows)
                unreadable += len(batch) - len(good)
                if progress is not None:
                    progress(len(rows))
    finally:
        writer.close()
        chosen.close()
    seconds = time.perf_counter() - started
    if fmt == "parquet":
        previous = _read_rows(out, "parquet") if out.is_file() else []
        _write_parquet(out, previous + _read_rows(journal_path, "jsonl"))
        journal_path.unlink()
    return BulkResult(out, written, len(inputs) - len(todo), unreadable, seconds, chosen.describe())


def merge_outputs(parts: Sequence[Path], out: Path, fmt: str | None = None) -> int:
    """Join shard outputs (any of the formats) into ``out``, sorted by path, each path once."""
    rows: dict[str, dict] = {}
    for part in parts:
        part_fmt = output_format(part, None)
        for row in _read_rows(Path(part), part_fmt):
            if part_fmt == "csv":
                row = {key: _from_csv_cell(key, row.get(key, "")) for key in _COLUMNS}
            rows.setdefault(row["path"], row)
    ordered = [rows[path] for path in sorted(rows)]
    target = output_format(out, fmt)
    if Path(out).exists():
        raise ConfigError(f"{out}: already exists; merge into a new file")
    if target == "parquet":
        _write_parquet(Path(out), ordered)
    else:
        writer = _LineWriter(Path(out), target)
        try:
            writer.write(ordered)
        finally:
            writer.close()
    return len(ordered)


def _from_csv_cell(key: str, value: str) -> object:
    if value == "":
        return None
    if key in ("labels", "top_k"):
        return json.loads(value)
    if key == "score":
        return float(value)
    return value
