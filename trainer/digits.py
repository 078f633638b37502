"""The embedded datasets: scikit-learn's handwritten digits, as an ImageFolder (``write_digits``) and
as a multilabel set of 2×2 grids of digits (``write_digit_grid``).

The 1,797 8×8 images ship inside the scikit-learn wheel (``sklearn/datasets/data``), so the
demo needs no download. Pixel values 0–16 are scaled to 0–255 grayscale PNGs.
"""

from __future__ import annotations

import csv
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["write_digit_grid", "write_digits"]


def _digit_pixels() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8), digits.target


def _staging(out_dir: Path, overwrite: bool) -> Path:
    from imgcls.errors import DataError

    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise DataError(
            f"{out_dir}: already exists and is not empty; pass --overwrite or choose another --out"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))


def _move_into_place(staging: Path, out_dir: Path) -> None:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)


def write_digit_grid(
    out_dir: Path, *, overwrite: bool = False, seed: int = 0, blank_share: float = 0.05
) -> dict[str, int]:
    """A multilabel dataset: ``out_dir/images/<n>.png``, 16×16 grids of 2×2 cells each holding a digit
    or nothing, and ``out_dir/labels.csv`` (``path,label`` with the digits present, ``;``-separated;
    empty for the ``blank_share`` of images with no digit). Every source digit appears in exactly one
    grid, so no handwriting leaks between splits. Returns the image count per label (and ``(none)``).
    """
    out_dir = Path(out_dir)
    pixels, targets = _digit_pixels()
    rng = np.random.default_rng(seed)
    sources = list(rng.permutation(len(pixels)))
    staging = _staging(out_dir, overwrite)
    counts: dict[str, int] = {}
    rows: list[tuple[str, str]] = []
    try:
        (staging / "images").mkdir()
        while sources:
            grid = np.zeros((16, 16), dtype=np.uint8)
            present: set[int] = set()
            if rng.random() >= blank_share:
                cells = [cell for cell in range(4) if rng.random() < 0.5] or [int(rng.integers(4))]
                for cell in cells:
                    if not sources:
                        break
                    source = sources.pop()
                    row, column = divmod(cell, 2)
                    grid[row * 8 : row * 8 + 8, column * 8 : column * 8 + 8] = pixels[source]
                    present.add(int(targets[source]))
            name = f"images/{len(rows):04d}.png"
            Image.fromarray(grid).save(staging / name)
            label = ";".join(str(d) for d in sorted(present))
            rows.append((name, label))
            for key in [str(d) for d in sorted(present)] or ["(none)"]:
                counts[key] = counts.get(key, 0) + 1
        with (staging / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "label"])
            writer.writerows(rows)
        _move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dict(sorted(counts.items()))


def write_digits(out_dir: Path, *, overwrite: bool = False) -> dict[str, int]:
    """Write ``out_dir/<digit>/<index>.png`` and return the image count per class.

    The folder is written beside ``out_dir`` and renamed into place, so an interrupted run
    never leaves a partial dataset that a later ``imgcls train`` would silently use.
    """
    out_dir = Path(out_dir)
    pixels, targets = _digit_pixels()
    staging = _staging(out_dir, overwrite)
    counts: dict[str, int] = {}
    try:
        for index, (image, target) in enumerate(zip(pixels, targets, strict=True)):
            label = str(int(target))
            class_dir = staging / label
            class_dir.mkdir(exist_ok=True)
            Image.fromarray(image).save(class_dir / f"{index:04d}.png")
            counts[label] = counts.get(label, 0) + 1
        _move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dict(sorted(counts.items()))
