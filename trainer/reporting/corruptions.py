"""Common corruptions at five severities, in the style of ImageNet-C (Hendrycks & Dietterich, 2019).

Each corruption is torchvision's own transform (``torchvision.transforms.v2.functional``) with
ImageNet-C-like severity parameters; the one hand-written piece is the motion-blur line kernel, which
torchvision lacks. They apply to the uint8 crops the model sees before normalisation, so a corruption
never depends on the model's mean and std. Parameters given in pixels (blur sigmas, motion-blur length)
are set for a 224-pixel image and scaled by the image height, so a 32-pixel model sees the same
relative damage as a 224-pixel one.

Random choices (the noise, the motion-blur angle, the rotation's sign) come from a generator seeded by
``seed``: the same call gives the same images, and the global torch RNG is left untouched.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as nnf
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

__all__ = ["CORRUPTIONS", "SEVERITIES", "corrupt", "describe"]

CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "gaussian_blur",
    "motion_blur",
    "jpeg",
    "brightness",
    "contrast",
    "grayscale",
    "pixelate",
    "rotate",
    "zoom",
)
SEVERITIES = (1, 2, 3, 4, 5)

# torchvision 0.29 deprecates its codecs (F.jpeg encodes and decodes); pinned, and filtered as in
# imgcls/preprocess.py (process-wide; an identical filter is not added twice).
warnings.filterwarnings(
    "ignore",
    message="The image decoding and encoding capabilities of TorchVision",
    category=DeprecationWarning,
)

REFERENCE_SIZE = 224  # ImageNet-C's image side: the pixel parameters below are for it

# Severity 1..5 parameters, after ImageNet-C's.
NOISE_SIGMA = (0.08, 0.12, 0.18, 0.26, 0.38)  # in [0, 1] intensity units
BLUR_SIGMA_PX = (1.0, 2.0, 3.0, 4.0, 6.0)  # at 224 px
MOTION_RADIUS_SIGMA_PX = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))  # at 224 px
JPEG_QUALITY = (25, 18, 15, 10, 7)
BRIGHTNESS_FACTOR = (0.6, 0.5, 0.4, 0.3, 0.2)  # darkening: low light
CONTRAST_FACTOR = (0.4, 0.3, 0.2, 0.1, 0.05)
SATURATION_FACTOR = (0.8, 0.6, 0.4, 0.2, 0.0)
PIXELATE_FACTOR = (0.6, 0.5, 0.4, 0.3, 0.25)
ROTATE_DEGREES = (6.0, 12.0, 18.0, 24.0, 30.0)
ZOOM_FRACTION = (0.9, 0.8, 0.7, 0.6, 0.5)


def _scaled(px: float, height: int) -> float:
    return px * height / REFERENCE_SIZE


def _blur_sigma(severity: int, height: int) -> float:
    return max(0.5, _scaled(BLUR_SIGMA_PX[severity - 1], height))


def _motion_radius_sigma(severity: int, height: int) -> tuple[int, float]:
    radius, sigma = MOTION_RADIUS_SIGMA_PX[severity - 1]
    return max(1, round(_scaled(radius, height))), max(0.5, _scaled(sigma, height))


def _gaussian_noise(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    # Drawn on the CPU so the same seed gives the same noise on any device.
    noise = torch.randn(images.shape, generator=generator).to(images.device)
    noisy = images.float() / 255 + noise * NOISE_SIGMA[severity - 1]
    return (noisy.clamp(0, 1) * 255).round().to(torch.uint8)


def _gaussian_blur(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    sigma = _blur_sigma(severity, images.shape[-2])
    kernel = max(3, int(4 * sigma) + 1)
    kernel += 1 - kernel % 2  # odd, as gaussian_blur requires
    return F.gaussian_blur(images, [kernel, kernel], [sigma, sigma])


def _motion_kernel(radius: int, sigma: float, angle_deg: float) -> tuple[torch.Tensor, tuple[int, ...]]:
    """ImageNet-C's motion blur (ImageMagick's, as re-implemented by imagecorruptions): 2·radius+1 taps
    along a line at ``angle_deg`` (within ±45°), weighted by a half Gaussian so the streak fades away
    from the pixel. Returns the kernel cropped to the line's bounding box, which keeps conv2d's cost
    to a fraction of a square kernel's, and the (left, right, top, bottom) padding that puts the pixel
    at the line's start."""
    width = 2 * radius + 1
    weights = torch.exp(-(torch.arange(width, dtype=torch.float32) ** 2) / (2 * sigma**2))
    weights /= weights.sum()
    dy, dx = math.sin(math.radians(angle_deg)), math.cos(math.radians(angle_deg))
    rows = [round(i * dy) for i in range(width)]
    cols = [round(i * dx) for i in range(width)]  # dx > 0 within ±45°: the line runs rightwards
    top = -min(rows)
    kernel = torch.zeros(max(rows) + top + 1, max(cols) + 1)
    for row, col, weight in zip(rows, cols, weights, strict=True):
        kernel[row + top, col] += weight
    return kernel, (0, max(cols), top, max(rows))


def _motion_blur(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    radius, sigma = _motion_radius_sigma(severity, images.shape[-2])
    angles = torch.empty(len(images)).uniform_(-45.0, 45.0, generator=generator)  # ImageNet-C's range
    channels = images.shape[1]
    out = torch.empty_like(images)
    for i, angle in enumerate(angles.tolist()):
        kernel, padding = _motion_kernel(radius, sigma, angle)
        # replicate: the edge continues the streak instead of fading to black.
        padded = nnf.pad(images[i : i + 1].float(), padding, mode="replicate")
        weight = kernel.to(images.device).expand(channels, 1, *kernel.shape)
        blurred = nnf.conv2d(padded, weight, groups=channels)
        out[i] = blurred[0].round().clamp(0, 255).to(torch.uint8)
    return out


def _jpeg(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    # F.jpeg encodes on the CPU only; 1 and 3 channels both work.
    return F.jpeg(images.cpu(), JPEG_QUALITY[severity - 1]).to(images.device)


def _brightness(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    return F.adjust_brightness(images, BRIGHTNESS_FACTOR[severity - 1])


def _contrast(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    # Blends toward the mean grey level; on one channel that is the image's own mean.
    return F.adjust_contrast(images, CONTRAST_FACTOR[severity - 1])


def _grayscale(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    # torchvision returns a 1-channel image unchanged: a grey model has no colour to lose, so its
    # grayscale rows equal its clean accuracy.
    return F.adjust_saturation(images, SATURATION_FACTOR[severity - 1])


def _pixelate(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    height, width = images.shape[-2:]
    factor = PIXELATE_FACTOR[severity - 1]
    small = [max(1, round(height * factor)), max(1, round(width * factor))]
    down = F.resize(images, small, interpolation=InterpolationMode.BILINEAR, antialias=True)
    # NEAREST_EXACT aligns pixel centres, as ImageNet-C's PIL BOX upscale does; the legacy NEAREST
    # shifts content by up to half a block, which makes factor .6 look worse than .5.
    return F.resize(down, [height, width], interpolation=InterpolationMode.NEAREST_EXACT)


def _rotate(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    degrees = ROTATE_DEGREES[severity - 1]
    clockwise = torch.rand(len(images), generator=generator) < 0.5
    out = torch.empty_like(images)
    for sign, chosen in ((-1.0, clockwise), (1.0, ~clockwise)):
        if chosen.any():
            out[chosen] = F.rotate(
                images[chosen], sign * degrees, interpolation=InterpolationMode.BILINEAR, fill=0
            )
    return out


def _zoom(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    height, width = images.shape[-2:]
    fraction = ZOOM_FRACTION[severity - 1]
    crop = F.center_crop(images, [max(1, round(height * fraction)), max(1, round(width * fraction))])
    return F.resize(crop, [height, width], interpolation=InterpolationMode.BILINEAR, antialias=True)


_APPLY: dict[str, Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]] = {
    "gaussian_noise": _gaussian_noise,
    "gaussian_blur": _gaussian_blur,
    "motion_blur": _motion_blur,
    "jpeg": _jpeg,
    "brightness": _brightness,
    "contrast": _contrast,
    "grayscale": _grayscale,
    "pixelate": _pixelate,
    "rotate": _rotate,
    "zoom": _zoom,
}


def _check(name: str, severity: int) -> None:
    if name not in _APPLY:
        raise ValueError(f"Unknown corruption {name!r}. Valid corruptions: {', '.join(CORRUPTIONS)}.")
    if severity not in SEVERITIES:
        raise ValueError(
            f"Invalid severity {severity!r} for {name}. Valid severities: {', '.join(map(str, SEVERITIES))}."
        )


def corrupt(images: torch.Tensor, name: str, severity: int, *, seed: int) -> torch.Tensor:
    """``images`` (uint8 ``[N, C, H, W]``, C 1 or 3: resized and cropped, not normalised) under corruption
    ``name`` at ``severity`` (1 mild .. 5 severe). Returns uint8 of the same shape, on the same device.

    Deterministic given ``seed``; the global torch RNG is not used.
    """
    _check(name, severity)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"corrupt expects a uint8 batch [N, C, H, W] with C 1 or 3; got {images.dtype} "
            f"of shape {tuple(images.shape)}. Pass the crops before normalisation."
        )
    generator = torch.Generator().manual_seed(seed)
    return _APPLY[name](images, severity, generator)


def describe(name: str, severity: int, *, image_height: int | None = None) -> str:
    """What ``name`` at ``severity`` does, with its parameter, e.g. ``"Gaussian blur, sigma 1.3 px"``.

    Pixel parameters are given for ``image_height``; without it, at 224 px (they scale with height).
    """
    _check(name, severity)
    i = severity - 1
    height = image_height or REFERENCE_SIZE
    at = "" if image_height else f" at {REFERENCE_SIZE} px"
    if name == "gaussian_noise":
        return f"Gaussian noise, sigma {NOISE_SIGMA[i]:g} of the intensity range"
    if name == "gaussian_blur":
        return f"Gaussian blur, sigma {_blur_sigma(severity, height):.1f} px{at}"
    if name == "motion_blur":
        radius, sigma = _motion_radius_sigma(severity, height)
        return f"Motion blur, {2 * radius + 1} px streak (sigma {sigma:.1f} px){at}, angle within ±45°"
    if name == "jpeg":
        return f"JPEG compression, quality {JPEG_QUALITY[i]}"
    if name == "brightness":
        return f"Low light, brightness ×{BRIGHTNESS_FACTOR[i]:g}"
    if name == "contrast":
        return f"Low contrast, contrast ×{CONTRAST_FACTOR[i]:g}"
    if name == "grayscale":
        return f"Desaturation, saturation ×{SATURATION_FACTOR[i]:g} (no change to grey images)"
    if name == "pixelate":
        return f"Pixelation, downscaled to {PIXELATE_FACTOR[i]:g} of the side"
    if name == "rotate":
        return f"Rotation by ±{ROTATE_DEGREES[i]:g}°, black corners"
    return f"Zoom, center {ZOOM_FRACTION[i]:g} of the side enlarged to fill"
