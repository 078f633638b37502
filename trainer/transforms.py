"""The training-side transforms: the config's evaluation settings resolved into the bundle's
:class:`~imgcls.manifest.PreprocessSpec`, the augmentation presets, and MixUp/CutMix.

The evaluation transform itself, and image decoding, live in ``imgcls.preprocess``: the service
applies the same code to the same spec.
"""

from __future__ import annotations

from collections.abc import Callable

from torchvision.transforms import v2

from imgcls.manifest import PreprocessSpec
from imgcls.preprocess import INTERPOLATION, to_normalized_float
from trainer.config import AugmentConfig, EvalTransformConfig

__all__ = ["batch_mixer", "preprocess_spec", "train_transform"]


def preprocess_spec(config: EvalTransformConfig) -> PreprocessSpec:
    """Resolve the config's defaults into the exact spec written into the bundle."""
    return PreprocessSpec.resolve(
        config.image_size,
        resize=config.resize,
        interpolation=config.interpolation,
        mean=config.mean,
        std=config.std,
        color_mode=config.color_mode,
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
    interpolation = INTERPOLATION[spec.interpolation]
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
    steps += to_normalized_float(spec)
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
