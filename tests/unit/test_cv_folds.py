"""Cross-validation pieces: fold assignment, each fold's splits, the summary statistics."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from imgcls.errors import DataError
from trainer.cv import assign_folds, fold_splits, summarize
from trainer.data import Sample

NAMES = ["a", "b", "c"]


def _samples(per_class: dict[int, int], group_size: int | None = None) -> list[Sample]:
    samples = [
        Sample(
            Path(f"/d/c{label}/{i:03d}.png"),
            label,
            None if group_size is None else f"c{label}g{i // group_size}",
        )
        for label, n in per_class.items()
        for i in range(n)
    ]
    return sorted(samples)


def test_every_sample_is_in_exactly_one_fold_and_folds_are_stratified():
    samples = _samples({0: 50, 1: 30, 2: 20})
    folds = assign_folds(samples, 5, seed=0, class_names=NAMES)
    assert sorted(Counter(folds)) == [0, 1, 2, 3, 4]
    for fold in range(5):
        counts = Counter(s.label for s, f in zip(samples, folds, strict=True) if f == fold)
        assert counts == {0: 10, 1: 6, 2: 4}


def test_fold_assignment_is_deterministic_for_a_seed():
    samples = _samples({0: 40, 1: 40})
    assert assign_folds(samples, 4, 7, NAMES) == assign_folds(samples, 4, 7, NAMES)
    assert assign_folds(samples, 4, 7, NAMES) != assign_folds(samples, 4, 8, NAMES)


def test_group_aware_folds_never_split_a_group():
    samples = _samples({0: 60, 1: 60, 2: 30}, group_size=3)
    folds = assign_folds(samples, 5, seed=0, class_names=NAMES)
    fold_of_group: dict[str | None, set[int]] = {}
    for sample, fold in zip(samples, folds, strict=True):
        fold_of_group.setdefault(sample.group, set()).add(fold)
    assert all(len(found) == 1 for found in fold_of_group.values())
    assert len(set(folds)) == 5


def test_a_class_smaller_than_the_fold_count_is_refused_with_the_fix():
    samples = _samples({0: 20, 1: 3})
    with pytest.raises(
        DataError, match=r"1 class\(es\) have fewer images than the 5 folds \(b\).*lower --folds"
    ):
        assign_folds(samples, 5, 0, NAMES)


def test_fewer_groups_than_folds_is_refused():
    samples = _samples({0: 10, 1: 10}, group_size=5)
    with pytest.raises(DataError, match="4 group\\(s\\) cannot fill 5 folds"):
        assign_folds(samples, 5, 0, NAMES)


def test_fold_splits_test_on_the_fold_and_carve_val_from_the_rest():
    samples = _samples({0: 50, 1: 50})
    folds = assign_folds(samples, 5, 0, NAMES[:2])
    splits = fold_splits(samples, folds, 2, NAMES[:2], val_fraction=0.1, seed=0)
    assert set(splits["test"]) == {s for s, f in zip(samples, folds, strict=True) if f == 2}
    assert len(splits["val"]) == 8 and len(splits["train"]) == 72
    assert not set(splits["val"]) & set(splits["train"])
    assert not set(splits["test"]) & (set(splits["train"]) | set(splits["val"]))


def test_fold_splits_keep_groups_out_of_val_and_train_at_once():
    samples = _samples({0: 60, 1: 60}, group_size=4)
    folds = assign_folds(samples, 3, 0, NAMES[:2])
    splits = fold_splits(samples, folds, 0, NAMES[:2], val_fraction=0.2, seed=0)
    groups = {name: {s.group for s in part} for name, part in splits.items()}
    assert not groups["train"] & groups["val"]
    assert not groups["test"] & (groups["train"] | groups["val"])


def test_summary_is_the_mean_sample_sd_and_the_student_t_interval():
    values = [0.99, 0.995, 1.0, 0.985, 0.99]
    summary = summarize(values)
    assert summary["mean"] == pytest.approx(np.mean(values))
    assert summary["sd"] == pytest.approx(np.std(values, ddof=1))
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert (summary["ci95_low"], summary["ci95_high"]) == pytest.approx((low, high))
    assert summary["folds"] == 5
