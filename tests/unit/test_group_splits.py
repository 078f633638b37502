"""Group-aware splits (data.group_column): no group in two splits, classes balanced as far as groups allow."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from imgcls.errors import DataError
from trainer.config import load_config
from trainer.data import Sample, discover
from trainer.splits import group_split, read_split_file, split_samples, split_warnings, write_split_file


def _grouped(num_groups: int, per_group: int, num_classes: int, seed: int = 0) -> list[Sample]:
    """Groups of mixed sizes whose images lean towards one class each, like photos from one camera."""
    rng = np.random.default_rng(seed)
    samples = []
    for g in range(num_groups):
        size = int(rng.integers(1, 2 * per_group))
        main = g % num_classes
        for i in range(size):
            label = main if rng.random() < 0.8 else int(rng.integers(num_classes))
            samples.append(Sample(Path(f"/d/g{g:03d}_{i:03d}.png"), label, f"camera-{g}"))
    return samples


def _groups_of(items: list[Sample]) -> set[str | None]:
    return {s.group for s in items}


def test_group_split_never_puts_one_group_in_two_splits():
    samples = _grouped(60, 10, 4)
    splits = group_split(samples, ["a", "b", "c", "d"], 0.1, 0.2, seed=0)
    train, val, test = (_groups_of(splits[n]) for n in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert sorted(s.path for part in splits.values() for s in part) == sorted(s.path for s in samples)


def test_group_split_keeps_class_proportions_close_to_the_fractions():
    samples = _grouped(200, 8, 3, seed=1)
    totals = Counter(s.label for s in samples)
    splits = group_split(samples, ["a", "b", "c"], 0.15, 0.25, seed=0)
    for name, fraction in (("train", 0.6), ("val", 0.15), ("test", 0.25)):
        counts = Counter(s.label for s in splits[name])
        for label, total in totals.items():
            assert counts[label] / total == pytest.approx(fraction, abs=0.04), (name, label)


def test_group_split_is_deterministic_for_a_seed_and_differs_across_seeds():
    samples = _grouped(40, 5, 2)
    first = group_split(samples, ["a", "b"], 0.1, 0.2, seed=3)
    again = group_split(list(reversed(samples)), ["a", "b"], 0.1, 0.2, seed=3)
    other = group_split(samples, ["a", "b"], 0.1, 0.2, seed=4)
    assert first == again
    assert first != other


def test_group_split_fills_every_split_even_with_few_groups():
    samples = [Sample(Path(f"/d/{g}_{i}.png"), i % 2, g) for g in ("big", "mid", "small") for i in range(10)]
    splits = group_split(samples, ["a", "b"], 0.1, 0.2, seed=0)
    assert all(splits[name] for name in ("train", "val", "test"))


def test_group_split_refuses_fewer_groups_than_splits_with_the_fix():
    samples = [Sample(Path(f"/d/{g}_{i}.png"), i % 2, g) for g in ("a", "b") for i in range(10)]
    with pytest.raises(DataError, match="2 group\\(s\\) cannot fill the 3 splits"):
        group_split(samples, ["a", "b"], 0.1, 0.2, seed=0)


def test_split_samples_uses_groups_only_when_the_samples_carry_them():
    plain = [Sample(Path(f"/d/{i}.png"), i % 2) for i in range(40)]
    grouped = [Sample(s.path, s.label, f"g{i // 4}") for i, s in enumerate(plain)]
    assert all(
        s.group is None for part in split_samples(plain, ["a", "b"], 0.1, 0.2, 0).values() for s in part
    )
    split = split_samples(grouped, ["a", "b"], 0.1, 0.2, 0)
    assert not (_groups_of(split["train"]) & _groups_of(split["test"]))


def test_a_dominant_group_is_warned_about_per_split():
    samples = [Sample(Path(f"/d/big_{i}.png"), i % 2, "big") for i in range(50)]
    samples += [Sample(Path(f"/d/s{g}_{i}.png"), i % 2, f"s{g}") for g in range(30) for i in range(2)]
    splits = group_split(samples, ["a", "b"], 0.1, 0.2, seed=0)
    warnings = split_warnings(splits, ["a", "b"], group_share_warning=0.25)
    holder = next(name for name in ("train", "val", "test") if "big" in _groups_of(splits[name]))
    assert any(f"group 'big' holds 50 of the {len(splits[holder])} {holder} images" in w for w in warnings)
    assert not split_warnings(splits, ["a", "b"], group_share_warning=1.0)


def test_a_class_missing_from_a_split_is_warned_about():
    samples = [
        Sample(Path(f"/d/{g}_{i}.png"), 0 if g != "rare" else 1, g) for g in "abcdefgh" for i in range(5)
    ]
    samples += [Sample(Path(f"/d/rare_{i}.png"), 1, "rare") for i in range(3)]
    splits = group_split(samples, ["common", "rare"], 0.2, 0.2, seed=0)
    warnings = split_warnings(splits, ["common", "rare"], group_share_warning=1.0)
    assert sum("has no images of 1 class(es) ('rare')" in w for w in warnings) == 2


def test_split_file_records_and_reads_back_the_groups(tmp_path: Path):
    samples = [Sample(tmp_path / f"{g}_{i}.png", i % 2, g) for g in "abcdef" for i in range(4)]
    splits = group_split(samples, ["x", "y"], 0.2, 0.2, seed=0)
    write_split_file(tmp_path / "split.csv", splits, ["x", "y"], tmp_path)
    with (tmp_path / "split.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert set(rows[0]) == {"path", "label", "split", "group"}
    back = read_split_file(tmp_path / "split.csv", ["x", "y"], tmp_path)
    assert {n: [(s.path, s.label, s.group) for s in part] for n, part in back.items()} == {
        n: [(s.path, s.label, s.group) for s in part] for n, part in splits.items()
    }


def test_csv_group_column_is_read_into_the_samples(tmp_path: Path):
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "data.csv").write_text("path,label,camera\na.png,cat,c1\nb.png,dog,c1\nc.png,dog,c2\n")
    source = discover(tmp_path / "data.csv", group_column="camera")
    assert [(s.path.name, s.group) for s in source.samples] == [
        ("a.png", "c1"),
        ("b.png", "c1"),
        ("c.png", "c2"),
    ]


def test_csv_without_the_group_column_names_the_missing_column(tmp_path: Path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "data.csv").write_text("path,label\na.png,cat\n")
    with pytest.raises(DataError, match=r"missing column\(s\) camera; .*'path,label,camera'"):
        discover(tmp_path / "data.csv", group_column="camera")


def test_csv_row_with_an_empty_group_is_refused_with_its_line(tmp_path: Path):
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "data.csv").write_text("path,label,camera\na.png,cat,c1\nb.png,dog,\n")
    with pytest.raises(DataError, match="line 3: empty 'camera'"):
        discover(tmp_path / "data.csv", group_column="camera")


def test_group_column_on_an_image_folder_is_refused(tmp_path: Path):
    (tmp_path / "cat").mkdir()
    with pytest.raises(DataError, match="needs a CSV source"):
        discover(tmp_path, group_column="camera")


def test_config_refuses_path_or_label_as_the_group_column():
    from imgcls.errors import ConfigError

    with pytest.raises(ConfigError, match="group_column must name a CSV column other than path and label"):
        load_config(None, ["data.group_column=label"])
