"""The torch Dataset over scanned samples, and the DataLoaders the training loop uses."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from imgcls.preprocess import load_image
from trainer.data import Sample, label_matrix

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
        multilabel_classes: int | None = None,
    ) -> None:
        self.samples = list(samples)
        self.color_mode = color_mode
        self.transform = transform
        # multilabel: each target is a float multi-hot vector over this many labels, not a class index
        self.targets: torch.Tensor | None = (
            torch.from_numpy(label_matrix(self.samples, multilabel_classes)).float()
            if multilabel_classes is not None
            else None
        )
        self._cache: list[torch.Tensor] | None = (
            [load_image(s.path, color_mode) for s in self.samples] if cache else None
        )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        sample = self.samples[index]
        image = self._cache[index] if self._cache is not None else load_image(sample.path, self.color_mode)
        target = self.targets[index] if self.targets is not None else sample.label
        return self.transform(image), target


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
    worker_init_fn: Callable[[int], None] | None = None,
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
        worker_init_fn=worker_init_fn,
        # Fresh workers each epoch take their seeds from the (per-epoch reseeded) generator, which keeps
        # augmentation repeatable and --resume exact; persistent workers would carry RNG state across epochs.
        persistent_workers=False,
    )
