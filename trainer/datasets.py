"""The torch Dataset over scanned samples, and the DataLoaders the training loop uses."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from imgcls.preprocess import load_image
from trainer.data import Sample

__all__ = ["ImageDataset", "make_loader"]


class ImageDataset(Dataset):
    """Samples decoded with :func:`~imgcls.preprocess.load_image`, optionally kept in memory.

    Only files that passed the up-front scan reach this class, so a decode error here is a
    file that changed during the run, and is raised.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        color_mode: str,
        transform: Callable[[torch.Tensor], torch.Tensor],
        cache: bool = False,
    ) -> None:
        self.samples = list(samples)
        self.color_mode = color_mode
        self.transform = transform
        self._cache: list[torch.Tensor] | None = (
            [load_image(s.path, color_mode) for s in self.samples] if cache else None
        )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        image = self._cache[index] if self._cache is not None else load_image(sample.path, self.color_mode)
        return self.transform(image), sample.label


def make_loader(
    dataset: ImageDataset,
    batch_size: int,
    *,
    shuffle: bool,
    num_workers: int,
    pin_memory: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    sampler: Sampler | None = None,
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        generator=generator,
        # Fresh workers each epoch take their seeds from the (per-epoch reseeded) generator, which keeps
        # augmentation repeatable and --resume exact; persistent workers would carry RNG state across epochs.
        persistent_workers=False,
    )
