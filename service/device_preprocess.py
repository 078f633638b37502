"""Preprocessing on the runtime's device: a whole batch of JPEGs decoded and transformed on the GPU.

On a GPU server the CPU is what runs out first: decoding a 320×240 JPEG costs about 1.5 ms of a core
(docs/performance.md), while the GPU infers thousands of images a second. With device preprocessing
the decode threads only check each image's header; JPEGs (RGB or grayscale) travel to the batcher
still encoded, and the batch is decoded in one ``torchvision.io.decode_jpeg(list, device=...)`` call
(nvJPEG on CUDA), then resized, cropped and normalised there by the same eval transform the trainer
uses. Other formats, and any JPEG the device decoder rejects, are decoded on the CPU as before and
join the batch as tensors. A JPEG that cannot be decoded at all fails its own request, not the batch.

Nothing here knows of threads or settings: ``service.device_pipeline`` runs this on a thread of its
own (and this preprocessor's CUDA stream), so the worker decodes the next batch while the current one
is inferred.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from imgcls.preprocess import eval_transform
from service.errors import BadInputError
from service.preprocess import Preprocessor

__all__ = ["DevicePreprocessor", "EncodedJpeg"]


@dataclass(frozen=True)
class EncodedJpeg:
    """A JPEG whose header passed the checks, to be decoded on the device with its batch."""

    data: bytes
    index: int  # its position in the request, for the error message if it cannot be decoded


class DevicePreprocessor:
    """``route`` runs on the decode pool (header checks); calling it runs a batch on ``device``."""

    def __init__(self, cpu: Preprocessor, device: str, *, max_pixels: int = 16_000_000) -> None:
        self.cpu = cpu
        self.device = torch.device(device)
        self.max_pixels = max_pixels  # larger JPEGs are decoded on the CPU (a batch of them would not fit)
        self.fallbacks = 0  # JPEGs the device decoder refused, decoded on the CPU instead
        self._transform = eval_transform(cpu.spec)
        self._mode = ImageReadMode.RGB if cpu.spec.color_mode == "RGB" else ImageReadMode.GRAY
        # Its own stream: decoding the next batch overlaps the inference stream's work on this one.
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def route(self, data: bytes, index: int) -> EncodedJpeg | np.ndarray:
        """A JPEG stays encoded for the device; anything else is decoded and transformed here, on the CPU."""
        if self.cpu.is_plain_jpeg(data, self.max_pixels):
            return EncodedJpeg(data, index)
        return self.cpu(data)

    def warm_up(self) -> None:
        """Decode and transform a small batch once: the device decoder's start-up (nvJPEG's handles
        and buffers) is paid before the model reports ready, not by the first request."""
        from torchvision.io import encode_jpeg

        spec = self.cpu.spec
        pixels = torch.full((spec.channels, spec.crop_height, spec.crop_width), 128, dtype=torch.uint8)
        jpeg = EncodedJpeg(encode_jpeg(pixels).numpy().tobytes(), 0)
        # The device decoder itself, with no fallback: one that cannot work must fail here, loudly.
        data = torch.frombuffer(bytearray(jpeg.data), dtype=torch.uint8)
        decode_jpeg([data, data], mode=self._mode, device=self.device)
        self([jpeg, jpeg])

    def _decode(self, jpegs: list[EncodedJpeg]) -> list[torch.Tensor | BadInputError]:
        encoded = [torch.frombuffer(bytearray(j.data), dtype=torch.uint8) for j in jpegs]
        try:
            return decode_jpeg(encoded, mode=self._mode, apply_exif_orientation=True, device=self.device)
        except RuntimeError:
            pass  # one bad image fails a batched decode: decode them one by one to find it
        decoded: list[torch.Tensor | BadInputError] = []
        for jpeg, data in zip(jpegs, encoded, strict=True):
            try:
                decoded.append(
                    decode_jpeg(data, mode=self._mode, apply_exif_orientation=True, device=self.device)
                )
            except RuntimeError:
                self.fallbacks += 1
                try:  # the CPU decoder (Pillow fallback included) takes what the device refuses
                    decoded.append(self.cpu.decode(jpeg.data).to(self.device))
                except BadInputError as exc:
                    decoded.append(BadInputError(f"image {jpeg.index}: {exc}"))
        return decoded

    def __call__(self, items: list[Any]) -> tuple[torch.Tensor, list[BadInputError | None]]:
        """Items (:class:`EncodedJpeg` or preprocessed ``[C, H, W]`` arrays) -> the float32 batch on the
        device, and per item the error that kept it out (its row is then zeros), or None."""
        jpeg_positions = [i for i, item in enumerate(items) if isinstance(item, EncodedJpeg)]
        errors: list[BadInputError | None] = [None] * len(items)
        rows: list[torch.Tensor | None] = [None] * len(items)
        context = torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()
        with torch.inference_mode(), context:
            if jpeg_positions:
                decoded = self._decode([items[i] for i in jpeg_positions])
                for k, position in enumerate(jpeg_positions):
                    image, decoded[k] = decoded[k], None  # free each full-size image once transformed
                    if isinstance(image, BadInputError):
                        errors[position] = image
                    else:
                        rows[position] = self._transform(image)
            array_positions = [i for i, item in enumerate(items) if not isinstance(item, EncodedJpeg)]
            if array_positions:  # decoded on the CPU already: stacked there, one copy to the device
                arrays = torch.from_numpy(
                    np.stack([np.asarray(items[i], dtype=np.float32) for i in array_positions])
                )
                for position, row in zip(array_positions, arrays.to(self.device), strict=True):
                    rows[position] = row
            # A failed item keeps its place as zeros, so the batch lines up with the callers; its
            # caller gets the error, never a score.
            spec = self.cpu.spec
            shape = (spec.channels, spec.crop_height, spec.crop_width)
            batch = torch.stack(
                [torch.zeros(shape, device=self.device) if row is None else row for row in rows]
            )
        if self.stream is not None:
            self.stream.synchronize()  # the batch is complete before the inference thread reads it
        return batch, errors
