"""From the model's input crop back to the original image, through the exact resize and center crop
of :func:`imgcls.preprocess.eval_transform`; and the heat-map overlay a person looks at.

A map computed on the crop covers only what the crop kept: the rest of the original image gets 0,
never a stretched copy of the map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from imgcls.manifest import PreprocessSpec

__all__ = ["CropGeometry", "crop_geometry", "jet", "overlay", "to_original"]


@dataclass(frozen=True)
class CropGeometry:
    """Where the crop sits: the resized image's size, and the crop's top-left corner in it (negative
    when the crop is larger than the resized image and torchvision pads)."""

    resized_height: int
    resized_width: int
    top: int
    left: int
    crop_height: int
    crop_width: int


def crop_geometry(height: int, width: int, spec: PreprocessSpec) -> CropGeometry:
    """torchvision's arithmetic for ``Resize(spec.resize)`` (shorter side to ``resize``, the longer side
    truncated) then ``CenterCrop`` (offsets rounded), for an original ``height`` x ``width`` image."""
    short, long = (height, width) if height <= width else (width, height)
    new_short, new_long = spec.resize, int(spec.resize * long / short)
    resized_height, resized_width = (new_short, new_long) if height <= width else (new_long, new_short)
    top = _crop_start(resized_height, spec.crop_height)
    left = _crop_start(resized_width, spec.crop_width)
    return CropGeometry(resized_height, resized_width, top, left, spec.crop_height, spec.crop_width)


def _crop_start(resized: int, crop: int) -> int:
    # torchvision pads a crop larger than the image by (crop - resized) // 2 before it (the odd
    # pixel after), and otherwise rounds the offset of a smaller crop
    if crop > resized:
        return -((crop - resized) // 2)
    return round((resized - crop) / 2.0)


def to_original(crop_map: np.ndarray, height: int, width: int, spec: PreprocessSpec) -> np.ndarray:
    """``crop_map`` (``crop_height`` x ``crop_width``, values in [0, 1]) on the original ``height`` x
    ``width`` image: pasted where the crop came from in the resized image (zero elsewhere), then resized
    bilinearly to the original size. float32, values in [0, 1]."""
    geometry = crop_geometry(height, width, spec)
    if crop_map.shape != (geometry.crop_height, geometry.crop_width):
        raise ValueError(
            f"map is {crop_map.shape[0]}x{crop_map.shape[1]}, the crop {geometry.crop_height}x{geometry.crop_width}"
        )
    canvas = np.zeros((geometry.resized_height, geometry.resized_width), dtype=np.float32)
    # the part of the crop that lies inside the resized image (all of it unless torchvision padded)
    top, left = max(geometry.top, 0), max(geometry.left, 0)
    bottom = min(geometry.top + geometry.crop_height, geometry.resized_height)
    right = min(geometry.left + geometry.crop_width, geometry.resized_width)
    canvas[top:bottom, left:right] = crop_map[
        top - geometry.top : bottom - geometry.top, left - geometry.left : right - geometry.left
    ]
    resized = F.interpolate(
        torch.from_numpy(canvas)[None, None], size=(height, width), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    return np.clip(resized, 0.0, 1.0).astype(np.float32)


def jet(values: np.ndarray) -> np.ndarray:
    """The jet colormap (blue for 0, red for 1) as uint8 RGB, computed rather than imported: the
    service renders overlays without matplotlib."""
    x = np.clip(values, 0.0, 1.0)[..., None]
    centers = np.array([0.75, 0.5, 0.25])  # where red, green and blue peak
    rgb = np.clip(1.5 - np.abs(4.0 * (x - centers)), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def overlay(image: Image.Image, heat: np.ndarray, *, opacity: float = 0.5) -> Image.Image:
    """``heat`` (the image's size, [0, 1]) in jet over ``image``, converted to RGB."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    if heat.shape != base.shape[:2]:
        raise ValueError(f"heat map is {heat.shape}, the image {base.shape[:2]}")
    blended = (1.0 - opacity) * base + opacity * jet(heat).astype(np.float32)
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))
