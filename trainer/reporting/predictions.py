"""What the report evaluates: the model under review and the images, decoded once.

Images are kept as the uint8 crops the model sees before normalisation (the eval transform's resize
and center crop): the robustness section corrupts exactly those, as ImageNet-C corrupts its crops,
and every other section normalises them the same way the eval transform does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2
from tqdm import tqdm

from imgcls.manifest import PreprocessSpec
from imgcls.preprocess import INTERPOLATION, load_image, to_normalized_float
from trainer.data import Sample

__all__ = ["ModelUnderReview", "crop_transform", "decode_crops", "logits_of", "normalize"]


def crop_transform(spec: PreprocessSpec) -> v2.Compose:
    """The eval transform's geometric half: uint8 in, uint8 crop out."""
    return v2.Compose(
        [
            v2.Resize(spec.resize, interpolation=INTERPOLATION[spec.interpolation], antialias=True),
            v2.CenterCrop((spec.crop_height, spec.crop_width)),
        ]
    )


def decode_crops(samples: Sequence[Sample], spec: PreprocessSpec, *, what: str = "decode") -> torch.Tensor:
    """uint8 ``[N, C, crop_h, crop_w]`` for ``samples``, with a progress bar."""
    transform = crop_transform(spec)
    crops = torch.empty((len(samples), spec.channels, spec.crop_height, spec.crop_width), dtype=torch.uint8)
    for i, sample in enumerate(tqdm(samples, desc=what, unit="image", leave=False, mininterval=0.5)):
        crops[i] = transform(load_image(Path(sample.path), spec.color_mode))
    return crops


def normalize(crops: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """The eval transform's second half, on a batch of crops."""
    batch = crops
    for step in to_normalized_float(spec):
        batch = step(batch)
    return batch


def logits_of(
    model: nn.Module, crops: torch.Tensor, spec: PreprocessSpec, *, batch_size: int = 256
) -> np.ndarray:
    """float32 ``[N, classes]``: ``model`` (eval mode, CPU) on the normalised ``crops``."""
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(crops), batch_size):
            out.append(model(normalize(crops[start : start + batch_size], spec)).float().numpy())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out)


@dataclass
class ModelUnderReview:
    """The eager model the report runs, and what it is."""

    model: nn.Module
    architecture: str
    described_as: str  # e.g. "digits v3 (models/digits/3)" or "best checkpoint of runs/x (ema weights)"
    temperature: float | None  # from the bundle or the run; None: fitted by the report on validation
    bundle_version: str | None
