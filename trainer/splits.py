"""Stratified train/val/test splits, and the ``split.csv`` that records the one a run used.

Splitting is per class: each class's files are sorted, shuffled with the seed, and cut by the
fractions, so every class appears in every split and the same seed gives the same split on any
machine and any filesystem order.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np

from imgcls.errors import DataError
from trainer.data import SPLIT_NAMES, DataSource, Sample

__all__ = [
    "Splits",
    "read_split_file",
    "resolve_splits",
    "split_counts",
    "stratified_split",
    "write_split_file",
]

Splits = dict[str, list[Sample]]


def _min_per_class(val_fraction: float, test_fraction: float) -> int:
    """The smallest class that still puts at least one image in each non-empty split and in train."""
    n = 1
    while True:
        n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
        n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
        if n - n_val - n_test >= 1:
            return n
        n += 1


def stratified_split(
    samples: list[Sample],
    class_names: list[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    where: Path | str = "data",
) -> Splits:
    """Split per class with the given fractions; every non-zero fraction gets at least one image per class."""
    by_class: dict[int, list[Sample]] = {}
    for sample in sorted(samples):
        by_class.setdefault(sample.label, []).append(sample)
    needed = _min_per_class(val_fraction, test_fraction)
    for label, name in enumerate(class_names):
        have = len(by_class.get(label, []))
        if have < needed:
            raise DataError(
                f"{where}: class {name!r} has {have} usable image(s); a stratified split with "
                f"val_fraction={val_fraction} and test_fraction={test_fraction} needs at least {needed} per class. "
                "Add images, lower the fractions, or provide train/, val/ and test/ folders"
            )
    rng = np.random.default_rng(seed)
    splits: Splits = {name: [] for name in SPLIT_NAMES}
    for label in sorted(by_class):
        members = by_class[label]
        order = rng.permutation(len(members))
        n = len(members)
        n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
        n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
        shuffled = [members[i] for i in order]
        splits["test"].extend(shuffled[:n_test])
        splits["val"].extend(shuffled[n_test : n_test + n_val])
        splits["train"].extend(shuffled[n_test + n_val :])
    return {name: sorted(items) for name, items in splits.items()}


def resolve_splits(
    source: DataSource,
    usable: set[Path],
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> Splits:
    """The splits to train with: the given folders (carving missing ones from train), or a stratified split."""

    def keep(items: list[Sample]) -> list[Sample]:
        return [s for s in items if s.path in usable]

    if not source.given_splits:
        return stratified_split(
            keep(source.samples), source.class_names, val_fraction, test_fraction, seed, source.root
        )
    given = {name: keep(items) for name, items in source.given_splits.items()}
    carve_val = 0.0 if "val" in given else val_fraction
    carve_test = 0.0 if "test" in given else test_fraction
    if carve_val or carve_test:
        carved = stratified_split(
            given["train"], source.class_names, carve_val, carve_test, seed, source.root / "train"
        )
        given = {**carved, **{k: v for k, v in given.items() if k != "train"}}
    for name in SPLIT_NAMES:
        if not given.get(name):
            raise DataError(f"{source.root / name}: no usable images in the {name} split; add images to it")
    return {name: given[name] for name in SPLIT_NAMES}


def split_counts(splits: Splits, class_names: list[str]) -> dict[str, dict[str, int]]:
    return {
        name: {class_names[label]: count for label, count in sorted(Counter(s.label for s in items).items())}
        for name, items in splits.items()
    }


def write_split_file(path: Path, splits: Splits, class_names: list[str], root: Path) -> None:
    """``split.csv``: one row per image (path relative to the data root where it lies inside it, label, split)."""
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        for name in SPLIT_NAMES:
            for sample in splits[name]:
                path = sample.path.relative_to(root) if sample.path.is_relative_to(root) else sample.path
                writer.writerow([path.as_posix(), class_names[sample.label], name])


def read_split_file(path: Path, class_names: list[str], root: Path) -> Splits:
    """Read a ``split.csv`` back (``--resume``, ``imgcls export``, and ``data.split_file``)."""
    index = {name: i for i, name in enumerate(class_names)}
    splits: Splits = {name: [] for name in SPLIT_NAMES}
    try:
        with Path(path).open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                splits[row["split"]].append(Sample(root / row["path"], index[row["label"]]))
    except KeyError as exc:
        raise DataError(
            f"{path}: unknown split or class {exc} (classes here: {class_names}); is it a split.csv from a run on this data?"
        ) from None
    except (OSError, csv.Error) as exc:
        raise DataError(
            f"{path}: cannot read the split file ({exc}); pass a split.csv written by a run"
        ) from None
    return splits
