"""Encoded image -> model input: the decoding and evaluation transform both halves apply.

A bundle's :class:`~imgcls.manifest.PreprocessSpec` describes the transform; :func:`eval_transform`
builds it from that description alone. The trainer evaluates through it and the service serves
through it, so both compute the same input tensor by construction. Transforms run on uint8 CHW tensors
(torchvision transforms v2), which keeps resizing identical on both sides.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from imgcls.manifest import PreprocessSpec

__all__ = [
    "INTERPOLATION",
    "decode_converted",
    "decode_to_tensor",
    "eval_transform",
    "load_image",
    "to_color_mode",
    "to_normalized_float",
]

# torchvision 0.29 deprecates its image codecs in favour of TorchCodec. We pin torchvision 0.29 with
# torch<2.15 (see pyproject.toml), and its decode_jpeg is the fastest exact JPEG decoder we measured;
# filtered once here (process-wide: decoding runs on several threads) rather than on every image.
warnings.filterwarnings(
    "ignore",
    message="The image decoding and encoding capabilities of TorchVision",
    category=DeprecationWarning,
)

INTERPOLATION = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}


def to_color_mode(image: Image.Image, color_mode: str) -> Image.Image:
    """Convert any Pillow image (palette, RGBA, CMYK, 16-bit, ...) to ``RGB`` or ``L``.

    EXIF orientation is applied first. 16-bit and 32-bit integer images are scaled to 8 bits by
    their range rather than clipped (Pillow's own ``convert`` clips them to white).
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.uint32)
        peak = 65535 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255
        image = Image.fromarray((array * 255 // peak).astype(np.uint8))
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float32)
        image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # palette transparency needs RGBA to convert cleanly
    if image.mode != color_mode:
        image = image.convert(color_mode)
    return image


def decode_converted(image: Image.Image, color_mode: str) -> Image.Image:
    """Decode an opened image in ``color_mode``: the one decode path the trainer and the service share."""
    image.draft(
        color_mode, None
    )  # the JPEG decoder converts during decoding: faster, and it rounds differently
    converted = to_color_mode(image, color_mode)
    converted.load()
    return converted


def decode_to_tensor(image: Image.Image, data: bytes, color_mode: str) -> torch.Tensor:
    """``data`` (already opened as ``image``, header only) -> uint8 ``[C, H, W]`` in ``color_mode``.

    RGB and grayscale JPEGs go through ``torchvision.io.decode_jpeg`` (libjpeg-turbo, 1.4-1.7x
    faster than Pillow here and pixel-identical to Pillow's output, EXIF orientation included; see
    tests/unit/test_transforms.py); everything else, and any JPEG it refuses, through Pillow.
    """
    if image.format == "JPEG" and image.mode in ("RGB", "L"):
        mode = ImageReadMode.RGB if color_mode == "RGB" else ImageReadMode.GRAY
        try:
            return decode_jpeg(
                torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode, apply_exif_orientation=True
            )
        except RuntimeError:
            pass  # e.g. a truncated file: Pillow gives the precise error below
    return F.pil_to_tensor(decode_converted(image, color_mode))


def load_image(path: Path, color_mode: str) -> torch.Tensor:
    """Decode ``path`` into a uint8 ``[C, H, W]`` tensor in ``color_mode``."""
    data = Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        return decode_to_tensor(image, data, color_mode)


def to_normalized_float(spec: PreprocessSpec) -> list[Callable]:
    # A crop is a strided view, and torch's broadcasting ops are several times slower on one: one
    # contiguous copy before Normalize halves the whole eval transform's time (same values, bit for bit).
    return [
        v2.ToDtype(torch.float32, scale=True),
        torch.Tensor.contiguous,
        v2.Normalize(mean=list(spec.mean), std=list(spec.std)),
    ]


def eval_transform(spec: PreprocessSpec) -> v2.Compose:
    """uint8 ``[C, H, W]`` in ``spec.color_mode`` -> normalised float32 ``[C, crop_h, crop_w]``."""
    return v2.Compose(
        [
            v2.Resize(spec.resize, interpolation=INTERPOLATION[spec.interpolation], antialias=True),
            v2.CenterCrop((spec.crop_height, spec.crop_width)),
            *to_normalized_float(spec),
        ]
    )
