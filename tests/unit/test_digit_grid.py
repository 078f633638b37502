"""The embedded multilabel dataset: grids of digits labelled with the digits they hold."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls.errors import DataError
from trainer.data import discover
from trainer.digits import write_digit_grid


def test_every_digit_is_used_once_and_labels_name_the_digits_present(tmp_path: Path):
    counts = write_digit_grid(tmp_path / "grid")
    with (tmp_path / "grid" / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(list((tmp_path / "grid" / "images").iterdir()))
    filled_cells = 0
    for row in rows:
        image = np.asarray(Image.open(tmp_path / "grid" / row["path"]))
        assert image.shape == (16, 16)
        cells = [image[r : r + 8, c : c + 8] for r in (0, 8) for c in (0, 8)]
        filled_cells += sum(cell.any() for cell in cells)
        assert (row["label"] == "") == (not image.any())  # blank grids, and only they, have no label
    assert filled_cells == 1797  # each of scikit-learn's digits in exactly one grid
    assert counts["(none)"] == sum(row["label"] == "" for row in rows) > 0


def test_the_grid_reads_as_multilabel_data(tmp_path: Path):
    write_digit_grid(tmp_path / "grid")
    source = discover(tmp_path / "grid" / "labels.csv", multilabel=True)
    assert source.class_names == [str(d) for d in range(10)]
    assert any(len(s.labels) >= 2 for s in source.samples) and any(s.labels == () for s in source.samples)


def test_an_existing_folder_is_not_overwritten_without_asking(tmp_path: Path):
    (tmp_path / "grid").mkdir()
    (tmp_path / "grid" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="already exists and is not empty; pass --overwrite"):
        write_digit_grid(tmp_path / "grid")
