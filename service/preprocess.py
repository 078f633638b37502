"""Request images -> model input: decode, colour-convert, then the bundle's evaluation transform.

The transform is built from ``manifest.preprocess`` with the trainer's own code
(``imgcls.preprocess``), so the service's input tensor is the trainer's, by construction.
Decoding runs in a thread pool (Pillow and torch release the GIL), never on the event loop.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from imgcls.manifest import PreprocessSpec
from imgcls.preprocess import decode_to_tensor, eval_transform
from service.errors import BadInputError

__all__ = ["ACCEPTED_FORMATS", "Preprocessor", "init_decode_thread"]

ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO"})
_EXIF_ORIENTATION = 0x0112


def init_decode_thread() -> None:
    """Run once on each decode thread: torch computes this thread's ops on this thread alone.

    Parallelism across images comes from the pool's threads; torch's intra-op threads on top (its
    default, all cores, per decoding thread) more than doubled the CPU each image cost on a 2-core
    machine (docs/performance.md). The count is per thread in torch's OpenMP backend, and the
    runtimes set their own on the inference thread.
    """
    torch.set_num_threads(1)


class Preprocessor:
    """Callable: encoded image bytes -> float32 ``[C, H, W]`` numpy array ready for the runtime."""

    def __init__(self, spec: PreprocessSpec, *, max_image_pixels: int = 40_000_000) -> None:
        self.spec = spec
        self.max_image_pixels = max_image_pixels
        self._transform = eval_transform(spec)

    @contextlib.contextmanager
    def _checked(self, data: bytes) -> Iterator[Image.Image]:
        """The image opened (header only) and checked; any failure inside, decoding included, becomes
        a :class:`BadInputError` that says what is wrong."""
        if not data:
            raise BadInputError("empty image: the request carried zero bytes for it")
        try:
            with Image.open(io.BytesIO(data)) as image:  # reads the header only
                if image.format not in ACCEPTED_FORMATS:
                    raise BadInputError(
                        f"unsupported image format {image.format}; send one of {', '.join(sorted(ACCEPTED_FORMATS))}"
                    )
                width, height = image.size
                if width * height > self.max_image_pixels:
                    raise BadInputError(
                        f"image of {width}x{height} pixels is over the limit of {self.max_image_pixels:,}; "
                        "downscale it before sending"
                    )
                yield image
        except BadInputError:
            raise
        except Image.DecompressionBombError:  # Pillow's own guard, before our header check can run
            raise BadInputError(
                f"the image declares more pixels than Pillow allows, over the limit of {self.max_image_pixels:,}; "
                "downscale it before sending"
            ) from None
        except UnidentifiedImageError:
            raise BadInputError(
                "not a decodable image (send JPEG, PNG, WebP, BMP or GIF file bytes)"
            ) from None
        # corrupt files raise anything from inside the decoders (struct.error, IndexError...)
        except Exception as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise BadInputError(f"corrupt or truncated image ({detail})") from None

    def decode(self, data: bytes) -> torch.Tensor:
        """Encoded bytes -> uint8 ``[C, H, W]`` in the bundle's colour mode; :class:`BadInputError` if not an image."""
        with self._checked(data) as image:
            image.seek(0)  # GIF and multi-frame images: the first frame
            return decode_to_tensor(image, data, self.spec.color_mode)

    def is_plain_jpeg(self, data: bytes, max_pixels: int) -> bool:
        """Checked as :meth:`decode` checks it: is this a JPEG the GPU decoder reads exactly as the CPU
        path does? RGB or grayscale (not CMYK), upright (nvJPEG ignores the EXIF orientation the CPU
        path applies), and at most ``max_pixels`` (a batch of huge photos would not fit the GPU)."""
        with self._checked(data) as image:
            width, height = image.size
            return (
                image.format == "JPEG"
                and image.mode in ("RGB", "L")
                and image.getexif().get(_EXIF_ORIENTATION, 1) == 1
                and width * height <= max_pixels
            )

    def __call__(self, data: bytes) -> np.ndarray:
        return self._transform(self.decode(data)).numpy()
