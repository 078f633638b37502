"""Request images for benchmarks: the embedded digits, a folder, or synthetic photo-like JPEGs.

Synthetic JPEGs stand in for camera pictures (smooth gradients, edges and sensor-like noise, so
the entropy decoder does realistic work) when no image folder is at hand; they are seeded, so
every run and every server in a comparison decodes the same bytes.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np

__all__ = ["digits_images", "folder_images", "parse_size", "pixel_tensors", "synthetic_jpegs"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}


def digits_images(count: int = 64) -> list[bytes]:
    """PNG files of scikit-learn's digits (shipped in its wheel), encoded in memory."""
    from PIL import Image
    from sklearn.datasets import load_digits

    pixels = np.rint(load_digits().images[:count] * (255 / 16)).astype(np.uint8)
    out = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def folder_images(folder: Path, count: int = 256) -> list[bytes]:
    """The bytes of up to ``count`` image files under ``folder`` (sorted, recursive)."""
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return [p.read_bytes() for p in files[:count]]


def synthetic_jpegs(count: int = 16, width: int = 320, height: int = 240, quality: int = 90) -> list[bytes]:
    """``count`` seeded photo-like RGB JPEGs of ``width`` x ``height``."""
    from PIL import Image, ImageDraw

    out = []
    for index in range(count):
        rng = np.random.default_rng(index)
        ys, xs = np.mgrid[0:height, 0:width]
        phase = rng.uniform(0, 2 * np.pi, 3)
        frequency = rng.uniform(0.005, 0.03, 3)
        base = np.stack(
            [127 + 100 * np.sin(frequency[c] * (xs + 0.7 * ys) + phase[c]) for c in range(3)], axis=-1
        )
        noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        image = Image.fromarray(noisy)
        draw = ImageDraw.Draw(image)
        for _ in range(6):  # hard edges, like objects against a background
            x0, y0 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
            box = (x0, y0, x0 + int(rng.integers(10, width // 2)), y0 + int(rng.integers(10, height // 2)))
            draw.ellipse(box, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        out.append(buffer.getvalue())
    return out


def pixel_tensors(images: list[bytes], shape: tuple[int, int, int]) -> list[bytes]:
    """Each image decoded, resized to the model's ``(channels, height, width)`` and scaled to [0, 1],
    as little-endian FP32 bytes in CHW order: the body of an OIP ``pixels`` tensor.

    For speed tests of the inference path without server-side decoding; the model's own resize,
    crop and mean/std are not applied, so the predictions are not meaningful.
    """
    from PIL import Image

    channels, height, width = shape
    out = []
    for data in images:
        with Image.open(io.BytesIO(data)) as image:
            resized = image.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
        array = np.asarray(resized, dtype="<f4").reshape(height, width, channels) / np.float32(255)
        out.append(np.ascontiguousarray(array.transpose(2, 0, 1), dtype="<f4").tobytes())
    return out


def parse_size(text: str) -> tuple[int, int]:
    """``"320x240"`` -> ``(320, 240)``; ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise ValueError(f"{text!r} is not WIDTHxHEIGHT, e.g. 320x240")
    return int(match[1]), int(match[2])
