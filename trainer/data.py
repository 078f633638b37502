"""Finding the labelled images: ImageFolder or CSV sources, and the up-front bad-data scan.

Every file is opened and fully decoded once before training, so an unreadable, truncated
or non-image file is reported (``data_report.json``) and skipped, and never crashes an epoch.
Structural problems (no such path, empty folders, one class, a malformed CSV) raise
:class:`~imgcls.errors.DataError` with the file and the fix.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from imgcls.errors import DataError

__all__ = [
    "LABEL_SEPARATOR",
    "MULTILABEL",
    "SPLIT_NAMES",
    "BadFile",
    "DataSource",
    "Sample",
    "discover",
    "label_matrix",
    "scan_images",
]

log = logging.getLogger("imgcls.data")

SPLIT_NAMES = ("train", "val", "test")


LABEL_SEPARATOR = ";"  # between the labels of one image in a multilabel CSV or split.csv


@dataclass(frozen=True, order=True)
class Sample:
    path: Path
    label: int  # the class; MULTILABEL (-1) for a multilabel image, whose labels are in ``labels``
    # data.group_column: the camera, patient or session the image came from; a group never spans two
    # splits. Not part of the ordering, which stays (path, label) with or without groups.
    group: str | None = field(default=None, compare=False)
    labels: tuple[int, ...] | None = field(default=None, compare=False)  # task: multilabel (may be empty)

    def label_indices(self) -> tuple[int, ...]:
        """Every label of the image: its class, or its labels when multilabel."""
        return self.labels if self.labels is not None else (self.label,)


MULTILABEL = -1


def label_matrix(samples: Sequence[Sample], num_classes: int) -> np.ndarray:
    """``[N, classes]`` of 0/1: one-hot for single-label samples, multi-hot for multilabel ones."""
    matrix = np.zeros((len(samples), num_classes), dtype=np.int64)
    for row, sample in enumerate(samples):
        matrix[row, list(sample.label_indices())] = 1
    return matrix


@dataclass(frozen=True)
class BadFile:
    path: Path
    reason: str


@dataclass
class DataSource:
    """What was found at ``data.path``: the class names and the samples, split or not."""

    root: Path  # paths in split.csv are written relative to this
    class_names: list[str]
    samples: list[Sample] = field(default_factory=list)  # when the data is not pre-split
    given_splits: dict[str, list[Sample]] = field(default_factory=dict)  # train/val/test folders
    multilabel: bool = False  # task: multilabel; each sample's labels are in Sample.labels

    def all_samples(self) -> list[Sample]:
        return self.samples + [s for split in self.given_splits.values() for s in split]


def _visible_files(folder: Path) -> list[Path]:
    # Dot-files (.DS_Store, editor swap files) are not data; everything else is checked.
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _class_folders(folder: Path) -> list[Path]:
    # "." folders are hidden; "_" folders are set aside, not classes (imgcls feedback export writes the
    # "none of these" flags to _unlabelled/)
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def _read_imagefolder(
    folder: Path, class_names: Sequence[str] | None = None
) -> tuple[list[str], list[Sample]]:
    class_dirs = _class_folders(folder)
    if not class_dirs:
        raise DataError(
            f"{folder}: no class folders found; expected one sub-folder per class ({folder}/<class>/<image>), "
            "or pass a CSV file with columns path,label"
        )
    names = class_names if class_names is not None else [d.name for d in class_dirs]
    index = {name: i for i, name in enumerate(names)}
    samples: list[Sample] = []
    for class_dir in class_dirs:
        if class_dir.name not in index:
            raise DataError(
                f"{class_dir}: class {class_dir.name!r} is not among the training classes {list(names)}; "
                "rename or remove the folder"
            )
        files = _visible_files(class_dir)
        if not files:
            raise DataError(f"{class_dir}: empty class folder; add images to it or remove it")
        samples.extend(Sample(path, index[class_dir.name]) for path in files)
    return list(names), samples


def _read_csv(
    csv_path: Path, group_column: str | None = None, multilabel: bool = False
) -> tuple[list[str], list[Sample]]:
    required = ("path", "label") + ((group_column,) if group_column else ())
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in required if c not in columns]
            if missing:
                found = ",".join(columns) if columns else "nothing"
                raise DataError(
                    f"{csv_path}: missing column(s) {', '.join(missing)}; the first row must be the header "
                    f"'{','.join(required)}' (found {found})"
                    + (
                        "; data.group_column names the column that holds each image's group"
                        if group_column
                        else ""
                    )
                )
            rows = [
                ({k.strip(): (v or "").strip() for k, v in row.items() if k is not None}, reader.line_num)
                for row in reader
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(
            f"{csv_path}: cannot read the CSV ({exc}); save it as UTF-8 text with a path,label header"
        ) from None
    if not rows:
        raise DataError(f"{csv_path}: no rows after the header; add one 'path,label' row per image")
    base = csv_path.parent
    missing_paths: list[tuple[int, str]] = []
    entries: dict[Path, tuple[list[str], str | None, int]] = {}  # path -> labels, group, first line
    merged_rows = 0
    for row, line in rows:
        if not row["path"] or (not row["label"] and not multilabel):
            raise DataError(f"{csv_path}: line {line}: empty path or label; every row needs both")
        group = row[group_column] if group_column else None
        if group_column and not group:
            raise DataError(
                f"{csv_path}: line {line}: empty {group_column!r} (data.group_column); every row needs its "
                "group, so that no group is split across train, val and test. An image with no group of its "
                "own can take its path as its group"
            )
        labels = _row_labels(csv_path, line, row["label"], multilabel)
        path = base / row["path"]
        if not path.is_file():
            missing_paths.append((line, row["path"]))
        if path in entries:  # multilabel: one row per label of an image works too
            known, known_group, first_line = entries[path]
            if not multilabel and known != labels:
                raise DataError(
                    f"{csv_path}: line {line}: {row['path']!r} is labelled {labels[0]!r} here but {known[0]!r} on "
                    f"line {first_line}; keep one row per image (or set task: multilabel if it has both)"
                )
            if known_group != group:
                raise DataError(
                    f"{csv_path}: line {line}: {row['path']!r} is in group {group!r} here but {known_group!r} "
                    f"on line {first_line}; an image has one group"
                )
            known.extend(label for label in labels if label not in known)
            merged_rows += 1
            continue
        entries[path] = (labels, group, line)
    if missing_paths:
        line, first = missing_paths[0]
        more = f" (and {len(missing_paths) - 1} more)" if len(missing_paths) > 1 else ""
        raise DataError(
            f"{csv_path}: line {line}: {first!r} does not exist{more}; paths are relative to the CSV's folder "
            f"({base}); fix or remove those rows"
        )
    if merged_rows:  # one image listed twice must not count twice (nor sit in two splits)
        log.info("%s: %d row(s) repeat an image listed before; merged into it", csv_path, merged_rows)
    names = sorted({label for labels, _, _ in entries.values() for label in labels})
    index = {name: i for i, name in enumerate(names)}
    if multilabel:
        return names, [
            Sample(path, MULTILABEL, group, tuple(sorted(index[label] for label in labels)))
            for path, (labels, group, _) in entries.items()
        ]
    return names, [Sample(path, index[labels[0]], group) for path, (labels, group, _) in entries.items()]


def _row_labels(csv_path: Path, line: int, cell: str, multilabel: bool) -> list[str]:
    if multilabel:  # "cat;dog", "cat", or "" for an image with none of the labels
        return list(dict.fromkeys(part.strip() for part in cell.split(LABEL_SEPARATOR) if part.strip()))
    if LABEL_SEPARATOR in cell:
        raise DataError(
            f"{csv_path}: line {line}: label {cell!r} holds several labels; for images with several labels "
            "set task: multilabel in the config (--set task=multilabel)"
        )
    return [cell]


def _merge_copies(samples: list[Sample]) -> list[Sample]:
    """Multilabel folders: an image in several label folders (the same bytes, copied or hard-linked)
    is one sample carrying all those labels, under its first path."""
    by_content: dict[str, list[Sample]] = {}
    for sample in sorted(samples):
        digest = hashlib.sha256(sample.path.read_bytes()).hexdigest()
        by_content.setdefault(digest, []).append(sample)
    return sorted(
        Sample(copies[0].path, MULTILABEL, None, tuple(sorted({c.label for c in copies})))
        for copies in by_content.values()
    )


def _check_classes(where: Path, class_names: Sequence[str], multilabel: bool = False) -> None:
    if multilabel and not class_names:  # one label is a detector: present or not, each its own sigmoid
        raise DataError(f"{where}: no labels at all; a multilabel image lists its labels ;-separated")
    if not multilabel and len(class_names) < 2:
        found = f"only {class_names[0]!r}" if class_names else "none"
        fix = "give every row one of at least 2 labels" if where.is_file() else "add a folder per class"
        raise DataError(f"{where}: a classifier needs at least 2 classes, found {found}; {fix}")


def discover(
    path: Path, fmt: str = "auto", group_column: str | None = None, multilabel: bool = False
) -> DataSource:
    """Find the classes and image files at ``path`` (an ImageFolder directory or a CSV file).

    With ``group_column`` (a CSV column), every sample carries its group. With ``multilabel``, a CSV's
    label cell holds ``;``-separated labels, and in folders one image copied into several label
    folders is one sample with all of them.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(
            f"{path}: not found; point data.path at an image folder or CSV "
            "(for the embedded digits: imgcls data digits --out data/digits)"
        )
    if fmt == "auto":
        fmt = "csv" if path.is_file() else "imagefolder"
    if group_column and fmt != "csv":
        raise DataError(
            f"{path}: data.group_column={group_column!r} needs a CSV source (columns path,label,{group_column}); "
            "list the images in a CSV, or drop data.group_column"
        )
    if fmt == "csv":
        if not path.is_file():
            raise DataError(f"{path}: data.format is csv but this is not a file; pass the CSV file itself")
        names, samples = _read_csv(path, group_column, multilabel)
        _check_classes(path, names, multilabel)
        return DataSource(root=path.parent, class_names=names, samples=samples, multilabel=multilabel)
    if not path.is_dir():
        raise DataError(
            f"{path}: not a directory; pass an ImageFolder directory, or a .csv file with data.format=csv"
        )
    present = {name: path / name for name in SPLIT_NAMES if (path / name).is_dir()}
    subfolders = {p.name for p in _class_folders(path)}
    if "train" in present and subfolders <= set(SPLIT_NAMES):  # only split folders: train/[val/][test/]
        names, train = _read_imagefolder(present["train"])
        _check_classes(present["train"], names)
        splits = {"train": train}
        for name in ("val", "test"):
            if name in present:
                splits[name] = _read_imagefolder(present[name], names)[1]
        if multilabel:
            splits = {name: _merge_copies(items) for name, items in splits.items()}
        return DataSource(root=path, class_names=names, given_splits=splits, multilabel=multilabel)
    names, samples = _read_imagefolder(path)
    _check_classes(path, names)
    if multilabel:
        samples = _merge_copies(samples)
    return DataSource(root=path, class_names=names, samples=samples, multilabel=multilabel)


def _check_image(path: Path) -> tuple[Path, str | None, tuple[int, int, int] | None]:
    """(path, reason it is bad or None, (width, height, bands) when good)."""
    try:
        with Image.open(path) as image:
            image.verify()  # structure and checksums (PNG CRCs)
        with Image.open(path) as image:
            image.load()  # a full decode: catches truncated data that verify() passes
            return path, None, (image.width, image.height, len(image.getbands()))
    except UnidentifiedImageError:
        return path, "not an image (unrecognised format)", None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return path, f"unreadable: {reason}", None


def scan_images(
    paths: Iterable[Path], threads: int = 4
) -> tuple[dict[Path, tuple[int, int, int]], list[BadFile]]:
    """Open and decode every file; return the good ones' sizes and the bad ones with reasons."""
    good: dict[Path, tuple[int, int, int]] = {}
    bad: list[BadFile] = []
    with ThreadPoolExecutor(max_workers=threads) as pool:  # Pillow releases the GIL while decoding
        for path, reason, size in pool.map(_check_image, paths):
            if reason is None and size is not None:
                good[path] = size
            else:
                bad.append(BadFile(path, reason or "unreadable"))
    return good, sorted(bad, key=lambda b: b.path)
