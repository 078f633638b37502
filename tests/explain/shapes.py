"""A dataset where the class is decided by one shape at a random position on clutter, and where it is.

The pointing game (Zhang et al., 2016) needs ground truth for *where* the evidence is: each image
records its shape's box. Clutter (noise and random lines of the shapes' own brightness) makes edges
everywhere, so a map that merely follows edges misses the box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ("square", "disk", "triangle")


@dataclass(frozen=True)
class ShapeImages:
    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: np.ndarray  # int [N]
    boxes: np.ndarray  # int [N, 4]: x0, y0, x1, y1 (exclusive) of the shape


def _line(canvas: np.ndarray, rng: np.random.Generator, value: np.ndarray) -> None:
    height, width = canvas.shape[:2]
    x0, x1 = rng.integers(0, width, 2)
    y0, y1 = rng.integers(0, height, 2)
    steps = max(abs(int(x1) - int(x0)), abs(int(y1) - int(y0)), 1)
    xs = np.linspace(x0, x1, steps * 2).round().astype(int)
    ys = np.linspace(y0, y1, steps * 2).round().astype(int)
    canvas[ys, xs] = value
    canvas[np.clip(ys + 1, 0, height - 1), xs] = value


def _mask(shape: str, side: int) -> np.ndarray:
    yy, xx = np.mgrid[0:side, 0:side] + 0.5
    if shape == "square":
        margin = side * 0.12
        return (xx > margin) & (xx < side - margin) & (yy > margin) & (yy < side - margin)
    if shape == "disk":
        return (xx - side / 2) ** 2 + (yy - side / 2) ** 2 < (side * 0.45) ** 2
    # triangle: apex at the top, base at the bottom
    return (yy > side * 0.08) & (np.abs(xx - side / 2) < (yy - side * 0.08) * 0.55)


def _clutter(rng: np.random.Generator, size: int) -> np.ndarray:
    """float [size, size, 3]: noise and six random lines of a shape's brightness."""
    canvas = rng.normal(70, 25, (size, size, 3)).clip(0, 255)
    for _ in range(6):
        _line(canvas, rng, rng.uniform(150, 255, 3))
    return canvas


def make_clutter_images(count: int, *, size: int = 96, seed: int = 0) -> np.ndarray:
    """uint8 [N, H, W, 3]: the same clutter with no shape, the "none of them" images a training set
    can hold so that every shape class has to be recognised by the shape itself."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    for i in range(count):
        images[i] = _clutter(rng, size).astype(np.uint8)
    return images


def make_shape_images(count: int, *, size: int = 96, shape_size: int = 32, seed: int = 0) -> ShapeImages:
    rng = np.random.default_rng(seed)
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, len(SHAPES), count)
    boxes = np.empty((count, 4), dtype=int)
    masks = {shape: _mask(shape, shape_size) for shape in SHAPES}
    for i in range(count):
        canvas = _clutter(rng, size)
        x0, y0 = rng.integers(0, size - shape_size + 1, 2)
        colour = rng.uniform(150, 255, 3)
        region = canvas[y0 : y0 + shape_size, x0 : x0 + shape_size]
        region[masks[SHAPES[labels[i]]]] = colour
        images[i] = canvas.astype(np.uint8)
        boxes[i] = (x0, y0, x0 + shape_size, y0 + shape_size)
    return ShapeImages(images, labels, boxes)


def peak_in_box(heatmap: np.ndarray, box: np.ndarray) -> bool:
    """The pointing game's hit: the map's maximum (any of them, on a tie) lies inside the box."""
    if heatmap.max() <= 0:
        return False  # an empty map points nowhere
    ys, xs = np.nonzero(heatmap >= heatmap.max())
    x0, y0, x1, y1 = box
    return bool(((xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)).any())
