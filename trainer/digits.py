"""The embedded default dataset: scikit-learn's handwritten digits, written as an ImageFolder.

The 1,797 8×8 images ship inside the scikit-learn wheel (``sklearn/datasets/data``), so the
demo needs no download. Pixel values 0–16 are scaled to 0–255 grayscale PNGs.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["write_digits"]


def write_digits(out_dir: Path, *, overwrite: bool = False) -> dict[str, int]:
    """Write ``out_dir/<digit>/<index>.png`` and return the image count per class.

    The folder is written beside ``out_dir`` and renamed into place, so an interrupted run
    never leaves a partial dataset that a later ``imgcls train`` would silently use.
    """
    from sklearn.datasets import load_digits

    from imgcls.errors import DataError

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise DataError(
            f"{out_dir}: already exists and is not empty; pass --overwrite or choose another --out"
        )
    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    counts: dict[str, int] = {}
    try:
        for index, (image, target) in enumerate(zip(pixels, digits.target, strict=True)):
            label = str(int(target))
            class_dir = staging / label
            class_dir.mkdir(exist_ok=True)
            Image.fromarray(image).save(class_dir / f"{index:04d}.png")
            counts[label] = counts.get(label, 0) + 1
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dict(sorted(counts.items()))
