"""Stratified train/val/test splits, and the ``split.csv`` that records the one a run used.

Splitting is per class: each class's files are sorted, shuffled with the seed, and cut by the
fractions, so every class appears in every split and the same seed gives the same split on any
machine and any filesystem order. With groups (``data.group_column``: the camera, patient or session
an image came from) whole groups go to one split each, so near-duplicates of one source never sit on
both sides; classes are then balanced across splits as far as the groups allow.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np

from imgcls.errors import DataError
from trainer.data import LABEL_SEPARATOR, MULTILABEL, SPLIT_NAMES, DataSource, Sample, label_matrix

__all__ = [
    "Splits",
    "group_split",
    "read_split_file",
    "resolve_splits",
    "split_counts",
    "split_samples",
    "split_warnings",
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


def group_split(
    samples: list[Sample],
    class_names: list[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    where: Path | str = "data",
) -> Splits:
    """Whole groups to each split, per-class counts as close to the fractions as the groups allow.

    Largest groups first (they are the hardest to place; equal sizes in a seeded random order). Each
    goes to the split whose per-class counts it brings closest to their targets (fraction x class
    total), every class's error relative to its size so that a rare class counts as much as a common
    one. The last groups fill any split still empty.
    """
    by_group: dict[str, list[Sample]] = {}
    for sample in sorted(samples):  # without groups (multilabel data), every image is its own group
        key = sample.group if sample.group is not None else f"\0{sample.path}"
        by_group.setdefault(key, []).append(sample)
    fractions = {"train": 1.0 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}
    active = [name for name in SPLIT_NAMES if fractions[name] > 0]
    if len(by_group) < len(active):
        grouped = any(s.group is not None for s in samples)
        what, fix = (
            ("group(s)", "Add groups, or drop data.group_column") if grouped else ("image(s)", "Add images")
        )
        raise DataError(
            f"{where}: {len(by_group)} {what} cannot fill the {len(active)} splits {', '.join(active)}"
            f"{': a group never spans two splits' if grouped else ''}. {fix}, or set data.val_fraction or "
            "data.test_fraction to 0 and provide that split elsewhere"
        )
    # per-class counts plus one column for the images themselves, so that images with none of the
    # labels (multilabel) are spread by the fractions too
    num_classes = len(class_names) + 1
    vectors = {group: _count_vector(members, len(class_names)) for group, members in by_group.items()}
    totals = sum(vectors.values(), np.zeros(num_classes))
    scale = np.maximum(totals, 1.0)
    targets = {name: fractions[name] * totals for name in active}
    counts = {name: np.zeros(num_classes) for name in active}
    rng = np.random.default_rng(seed)
    names = sorted(by_group)
    order = [names[i] for i in rng.permutation(len(names))]
    order.sort(key=lambda group: -len(by_group[group]))  # stable: equal sizes keep the seeded order
    placed: dict[str, list[str]] = {name: [] for name in active}
    for position, group in enumerate(order):
        group_counts = vectors[group]

        def cost_increase(name: str, group_counts: np.ndarray = group_counts) -> float:
            before = ((counts[name] - targets[name]) / scale) ** 2
            after = ((counts[name] + group_counts - targets[name]) / scale) ** 2
            return float((after - before).sum())

        empty = [name for name in active if not placed[name]]
        candidates = empty if len(order) - position <= len(empty) else active
        chosen = min(candidates, key=cost_increase)
        counts[chosen] += group_counts
        placed[chosen].append(group)
    return {
        name: sorted(s for group in placed.get(name, []) for s in by_group[group]) for name in SPLIT_NAMES
    }


def _count_vector(members: list[Sample], num_classes: int) -> np.ndarray:
    vector = np.zeros(num_classes + 1)
    vector[:num_classes] = label_matrix(members, num_classes).sum(axis=0)
    vector[num_classes] = len(members)
    return vector


def split_samples(
    samples: list[Sample],
    class_names: list[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    where: Path | str = "data",
) -> Splits:
    """A stratified split by class, or a group split when the samples carry groups or several labels
    (then every image is its own group, and each label is stratified as far as the others allow)."""
    grouped = any(s.group is not None or s.labels is not None for s in samples)
    split = group_split if grouped else stratified_split
    return split(samples, class_names, val_fraction, test_fraction, seed, where)


def split_warnings(splits: Splits, class_names: list[str], group_share_warning: float) -> list[str]:
    """What makes a split's metrics less than they seem: a missing class, one group holding too much."""
    warnings = []
    for name in SPLIT_NAMES:
        items = splits.get(name) or []
        if not items:
            continue
        present = {label for s in items for label in s.label_indices()}
        absent = [class_names[label] for label in range(len(class_names)) if label not in present]
        if absent:
            listed = ", ".join(repr(c) for c in absent[:10]) + (" ..." if len(absent) > 10 else "")
            warnings.append(
                f"the {name} split has no images of {len(absent)} class(es) ({listed}): its metrics say "
                "nothing about them; with data.group_column, their groups all landed in other splits"
            )
        groups = Counter(s.group for s in items if s.group is not None)
        if groups:
            group, count = groups.most_common(1)[0]
            share = count / len(items)
            if share > group_share_warning:
                warnings.append(
                    f"group {group!r} holds {count} of the {len(items)} {name} images ({share:.0%}, above "
                    f"data.group_share_warning={group_share_warning}): the {name} metrics mostly measure "
                    "that one group; add groups or split it if it is not one source"
                )
    return warnings


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
        return split_samples(
            keep(source.samples), source.class_names, val_fraction, test_fraction, seed, source.root
        )
    given = {name: keep(items) for name, items in source.given_splits.items()}
    carve_val = 0.0 if "val" in given else val_fraction
    carve_test = 0.0 if "test" in given else test_fraction
    if carve_val or carve_test:
        carved = split_samples(
            given["train"], source.class_names, carve_val, carve_test, seed, source.root / "train"
        )
        given = {**carved, **{k: v for k, v in given.items() if k != "train"}}
    for name in SPLIT_NAMES:
        if not given.get(name):
            raise DataError(f"{source.root / name}: no usable images in the {name} split; add images to it")
    return {name: given[name] for name in SPLIT_NAMES}


def split_counts(splits: Splits, class_names: list[str]) -> dict[str, dict[str, int]]:
    return {
        name: {
            class_names[label]: count
            for label, count in sorted(Counter(label for s in items for label in s.label_indices()).items())
        }
        for name, items in splits.items()
    }


def write_split_file(path: Path, splits: Splits, class_names: list[str], root: Path) -> None:
    """``split.csv``: one row per image (path relative to the data root where it lies inside it, label,
    split, and the group when the data has groups)."""
    grouped = any(s.group is not None for part in splits.values() for s in part)
    multilabel = any(s.labels is not None for part in splits.values() for s in part)
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        # multilabel: a "labels" column of ;-separated names (empty for none), so a reader can tell
        writer.writerow(
            ["path", "labels" if multilabel else "label", "split"] + (["group"] if grouped else [])
        )
        for name in SPLIT_NAMES:
            for sample in splits[name]:
                path = sample.path.relative_to(root) if sample.path.is_relative_to(root) else sample.path
                label = LABEL_SEPARATOR.join(class_names[i] for i in sample.label_indices())
                row = [path.as_posix(), label, name]
                writer.writerow(row + ([sample.group] if grouped else []))


def read_split_file(path: Path, class_names: list[str], root: Path, multilabel: bool | None = None) -> Splits:
    """Read a ``split.csv`` back (``--resume``, ``imgcls export``, and ``data.split_file``); with
    ``multilabel`` given, refuse a file written for the other task."""
    index = {name: i for i, name in enumerate(class_names)}
    splits: Splits = {name: [] for name in SPLIT_NAMES}
    try:
        with Path(path).open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            written_multilabel = "labels" in (reader.fieldnames or [])
            if multilabel is not None and written_multilabel != multilabel:
                theirs, ours = (
                    ("multilabel", "multiclass") if written_multilabel else ("multiclass", "multilabel")
                )
                raise DataError(
                    f"{path}: a split of a {theirs} run (column {'labels' if written_multilabel else 'label'}), "
                    f"and this run has task: {ours}; reuse a split.csv of a {ours} run, or drop data.split_file"
                )
            for row in reader:
                group = row.get("group") or None
                if "labels" in row:
                    names = [n for n in row["labels"].split(LABEL_SEPARATOR) if n]
                    labels = tuple(sorted(index[n] for n in names))
                    splits[row["split"]].append(Sample(root / row["path"], MULTILABEL, group, labels))
                else:
                    splits[row["split"]].append(Sample(root / row["path"], index[row["label"]], group))
    except KeyError as exc:
        raise DataError(
            f"{path}: unknown split or class {exc} (classes here: {class_names}); is it a split.csv from a run on this data?"
        ) from None
    except (OSError, csv.Error) as exc:
        raise DataError(
            f"{path}: cannot read the split file ({exc}); pass a split.csv written by a run"
        ) from None
    return splits
