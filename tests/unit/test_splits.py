from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from imgcls.errors import DataError
from trainer.data import DataSource, Sample
from trainer.splits import read_split_file, resolve_splits, stratified_split, write_split_file


def _samples(per_class: dict[int, int]) -> list[Sample]:
    return [
        Sample(Path(f"/d/c{label}/{i:03d}.png"), label) for label, n in per_class.items() for i in range(n)
    ]


def test_stratified_split_keeps_class_proportions_in_every_split():
    samples = _samples({0: 100, 1: 50, 2: 20})
    splits = stratified_split(samples, ["a", "b", "c"], val_fraction=0.1, test_fraction=0.2, seed=0)
    for name, expected in {"test": {0: 20, 1: 10, 2: 4}, "val": {0: 10, 1: 5, 2: 2}}.items():
        assert Counter(s.label for s in splits[name]) == expected
    assert Counter(s.label for s in splits["train"]) == {0: 70, 1: 35, 2: 14}


def test_stratified_split_partitions_the_samples_without_overlap():
    samples = _samples({0: 30, 1: 30})
    splits = stratified_split(samples, ["a", "b"], 0.2, 0.2, seed=3)
    paths = [s.path for part in splits.values() for s in part]
    assert sorted(paths) == sorted(s.path for s in samples)
    assert len(set(paths)) == len(paths)


def test_same_seed_gives_the_same_split_regardless_of_input_order():
    samples = _samples({0: 40, 1: 25})
    first = stratified_split(samples, ["a", "b"], 0.1, 0.2, seed=7)
    second = stratified_split(list(reversed(samples)), ["a", "b"], 0.1, 0.2, seed=7)
    assert first == second


def test_different_seeds_give_different_splits():
    samples = _samples({0: 40, 1: 40})
    assert stratified_split(samples, ["a", "b"], 0.1, 0.2, seed=1) != stratified_split(
        samples, ["a", "b"], 0.1, 0.2, seed=2
    )


def test_every_nonzero_split_gets_at_least_one_image_of_each_class():
    splits = stratified_split(_samples({0: 3, 1: 50}), ["rare", "common"], 0.1, 0.1, seed=0)
    for name in ("train", "val", "test"):
        assert {s.label for s in splits[name]} == {0, 1}


def test_class_with_too_few_images_names_the_class_and_the_minimum():
    with pytest.raises(DataError, match=r"class 'rare' has 2 usable image\(s\).*at least 3 per class"):
        stratified_split(_samples({0: 2, 1: 50}), ["rare", "common"], 0.1, 0.2, seed=0, where="data/x")


def test_zero_val_fraction_leaves_val_empty():
    splits = stratified_split(_samples({0: 10, 1: 10}), ["a", "b"], 0.0, 0.2, seed=0)
    assert splits["val"] == []
    assert len(splits["test"]) == 4


def test_given_train_and_test_folders_carve_val_from_train_only():
    train = _samples({0: 20, 1: 20})
    test = [Sample(Path(f"/d/test/{i}.png"), i % 2) for i in range(6)]
    source = DataSource(root=Path("/d"), class_names=["a", "b"], given_splits={"train": train, "test": test})
    usable = {s.path for s in train + test}
    splits = resolve_splits(source, usable, val_fraction=0.25, test_fraction=0.5, seed=0)
    assert splits["test"] == sorted(test)
    assert len(splits["val"]) == 10 and len(splits["train"]) == 30


def test_unusable_files_are_left_out_of_every_split():
    samples = _samples({0: 10, 1: 10})
    bad = samples[0].path
    source = DataSource(root=Path("/d"), class_names=["a", "b"], samples=samples)
    splits = resolve_splits(source, {s.path for s in samples} - {bad}, 0.2, 0.2, seed=0)
    assert bad not in {s.path for part in splits.values() for s in part}


def test_split_file_round_trips(tmp_path: Path):
    root = tmp_path / "data"
    samples = [Sample(root / f"c{label}" / f"{i}.png", label) for label in (0, 1) for i in range(10)]
    splits = stratified_split(samples, ["cat", "dog"], 0.2, 0.2, seed=0)
    write_split_file(tmp_path / "split.csv", splits, ["cat", "dog"], root)
    assert (tmp_path / "split.csv").read_text().splitlines()[0] == "path,label,split"
    assert read_split_file(tmp_path / "split.csv", ["cat", "dog"], root) == splits
