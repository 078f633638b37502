from __future__ import annotations

from pathlib import Path

import pytest

from imgcls.errors import DataError
from tests.conftest import make_image
from trainer.data import discover, scan_images


def _write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_imagefolder_classes_are_sorted_and_dot_files_ignored(make_imagefolder):
    root = make_imagefolder(classes=3, per_class=2)
    (root / "class_1" / ".DS_Store").write_bytes(b"junk")
    source = discover(root)
    assert source.class_names == ["class_0", "class_1", "class_2"]
    assert len(source.samples) == 6
    assert all(not s.path.name.startswith(".") for s in source.samples)


def test_train_val_test_folders_are_used_as_given(tmp_path: Path):
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        for label in (0, 1):
            for i in range(n):
                make_image(tmp_path / split / f"c{label}" / f"{i}.png", label, i)
    source = discover(tmp_path)
    assert set(source.given_splits) == {"train", "val", "test"}
    assert len(source.given_splits["val"]) == 4 and source.samples == []


def test_missing_path_says_how_to_get_the_default_data(tmp_path: Path):
    with pytest.raises(DataError, match=r"nope: not found.*imgcls data digits"):
        discover(tmp_path / "nope")


def test_folder_without_class_folders_is_an_error(tmp_path: Path):
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(DataError, match="no class folders found"):
        discover(tmp_path)


def test_empty_class_folder_is_named(make_imagefolder):
    root = make_imagefolder(classes=2, per_class=2)
    (root / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: empty class folder"):
        discover(root)


def test_single_class_is_an_error(make_imagefolder):
    root = make_imagefolder(classes=1, per_class=3)
    with pytest.raises(DataError, match=r"at least 2 classes, found only 'class_0'"):
        discover(root)


def test_val_folder_with_an_unknown_class_is_an_error(tmp_path: Path):
    for split in ("train", "val"):
        for label in (0, 1):
            make_image(tmp_path / split / f"c{label}" / "0.png", label, 0)
    make_image(tmp_path / "val" / "c9" / "0.png", 0, 0)
    with pytest.raises(DataError, match=r"class 'c9' is not among the training classes"):
        discover(tmp_path)


def test_csv_paths_are_relative_to_the_csv(tmp_path: Path):
    make_image(tmp_path / "img" / "a.png", 0, 0)
    make_image(tmp_path / "img" / "b.png", 1, 0)
    csv_path = _write_csv(tmp_path / "labels.csv", "path,label\nimg/a.png,cat\nimg/b.png,dog\n")
    source = discover(csv_path)
    assert source.class_names == ["cat", "dog"]
    assert [(s.path, s.label) for s in source.samples] == [
        (tmp_path / "img/a.png", 0),
        (tmp_path / "img/b.png", 1),
    ]


def test_csv_missing_column_names_the_columns_found(tmp_path: Path):
    csv_path = _write_csv(tmp_path / "x.csv", "file,label\na.png,cat\n")
    with pytest.raises(DataError, match=r"x.csv: missing column\(s\) path.*found file,label"):
        discover(csv_path)


def test_csv_path_that_does_not_exist_names_the_line_and_counts_the_rest(tmp_path: Path):
    make_image(tmp_path / "a.png", 0, 0)
    csv_path = _write_csv(tmp_path / "x.csv", "path,label\na.png,cat\nmissing.png,dog\ngone.png,dog\n")
    with pytest.raises(DataError, match=r"line 3: 'missing.png' does not exist \(and 1 more\)"):
        discover(csv_path)


def test_csv_with_no_rows_is_an_error(tmp_path: Path):
    with pytest.raises(DataError, match="no rows after the header"):
        discover(_write_csv(tmp_path / "x.csv", "path,label\n"))


def test_scan_reports_truncated_empty_and_non_image_files(tmp_path: Path):
    make_image(tmp_path / "good.png", 0, 0)
    make_image(tmp_path / "whole.jpg", 1, 0)
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a picture")
    paths = sorted(tmp_path.iterdir())
    good, bad = scan_images(paths)
    assert set(good) == {tmp_path / "good.png", tmp_path / "whole.jpg"}
    reasons = {b.path.name: b.reason for b in bad}
    assert set(reasons) == {"truncated.jpg", "empty.png", "notes.txt"}
    assert reasons["notes.txt"].startswith("not an image")
    assert "truncated" in reasons["truncated.jpg"].lower()
    assert good[tmp_path / "good.png"] == (20, 20, 3)
