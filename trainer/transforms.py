"""Image loading, the declarative evaluation transform, and the training augmentation presets.

The evaluation transform is described by a :class:`~trainer.manifest.PreprocessSpec` and
built here from that description alone; the trainer's eval path and the service use the same
spec, so they compute the same input tensor. All transforms run on uint8 CHW tensors
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

from trainer.config import AugmentConfig, EvalTransformConfig
from trainer.manifest import PreprocessSpec

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "batch_mixer",
    "decode_converted",
    "decode_to_tensor",
    "eval_transform",
    "load_image",
    "preprocess_spec",
    "to_color_mode",
    "train_transform",
]

# torchvision 0.29 deprecates its image codecs in favour of TorchCodec. We pin torchvision 0.29 with
# torch<2.15 (see pyproject.toml), and its decode_jpeg is the fastest exact JPEG decoder we measured;
# filtered once here (process-wide: decoding runs on several threads) rather than on every image.
warnings.filterwarnings(
    "ignore",
    message="The image decoding and encoding capabilities of TorchVision",
    category=DeprecationWarning,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INTERPOLATION = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}


def preprocess_spec(config: EvalTransformConfig) -> PreprocessSpec:
    """Resolve the config's defaults into the exact spec written into the bundle."""
    rgb = config.color_mode == "RGB"
    mean = config.mean if config.mean is not None else (IMAGENET_MEAN if rgb else (0.5,))
    std = config.std if config.std is not None else (IMAGENET_STD if rgb else (0.5,))
    # timm/torchvision convention: resize the shorter side to crop/0.875 (224 -> 256), then center-crop.
    resize = config.resize if config.resize is not None else round(config.image_size / 0.875)
    return PreprocessSpec(
        resize=resize,
        crop_height=config.image_size,
        crop_width=config.image_size,
        interpolation=config.interpolation,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        color_mode=config.color_mode,
    )


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


def _to_normalized_float(spec: PreprocessSpec) -> list[Callable]:
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
            v2.Resize(spec.resize, interpolation=_INTERPOLATION[spec.interpolation], antialias=True),
            v2.CenterCrop((spec.crop_height, spec.crop_width)),
            *_to_normalized_float(spec),
        ]
    )


# (random-resized-crop scale, colour jitter strength, auto-augment, random-erasing probability)
_PRESETS: dict[str, tuple[tuple[float, float] | None, float, str | None, float]] = {
    "none": (None, 0.0, None, 0.0),
    "light": ((0.7, 1.0), 0.1, None, 0.0),
    "standard": ((0.25, 1.0), 0.0, "trivialaugment", 0.1),
    "strong": ((0.08, 1.0), 0.4, "randaugment", 0.25),
}


def train_transform(spec: PreprocessSpec, augment: AugmentConfig) -> v2.Compose:
    """The training transform for ``augment.preset``; ends in the same dtype and normalisation as eval."""
    crop_scale, jitter, auto_augment, erasing = _PRESETS[augment.preset]
    if augment.random_erasing is not None:
        erasing = augment.random_erasing
    interpolation = _INTERPOLATION[spec.interpolation]
    size = (spec.crop_height, spec.crop_width)
    steps: list[Callable] = []
    if crop_scale is None:
        steps += [v2.Resize(spec.resize, interpolation=interpolation, antialias=True), v2.CenterCrop(size)]
    else:
        steps.append(
            v2.RandomResizedCrop(size, scale=crop_scale, interpolation=interpolation, antialias=True)
        )
    if augment.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if auto_augment == "trivialaugment":
        steps.append(v2.TrivialAugmentWide(interpolation=interpolation))
    elif auto_augment == "randaugment":
        steps.append(v2.RandAugment(num_ops=2, magnitude=9, interpolation=interpolation))
    if jitter:
        hue = jitter / 4 if spec.color_mode == "RGB" else 0.0
        saturation = jitter if spec.color_mode == "RGB" else 0.0
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=saturation, hue=hue))
    steps += _to_normalized_float(spec)
    if erasing > 0:
        steps.append(v2.RandomErasing(p=erasing, value=0))
    return v2.Compose(steps)


def batch_mixer(augment: AugmentConfig, num_classes: int) -> Callable | None:
    """MixUp and/or CutMix over a batch (one picked at random per batch when both are on), or None."""
    mixers: list[Callable] = []
    if augment.mixup_alpha > 0:
        mixers.append(v2.MixUp(alpha=augment.mixup_alpha, num_classes=num_classes))
    if augment.cutmix_alpha > 0:
        mixers.append(v2.CutMix(alpha=augment.cutmix_alpha, num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)
