"""Device preprocessing, run here on the CPU device: the same tensors as the CPU path, JPEGs batched,
other formats and undecodable JPEGs handled image by image."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imgcls.manifest import PreprocessSpec
from service.device_preprocess import DevicePreprocessor, EncodedJpeg
from service.errors import BadInputError
from service.preprocess import Preprocessor


def _encoded(fmt: str, seed: int, mode: str = "RGB", size: tuple[int, int] = (40, 30)) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(buffer, format=fmt)
    return buffer.getvalue()


def _spec(color_mode: str = "RGB") -> PreprocessSpec:
    channels = 3 if color_mode == "RGB" else 1
    return PreprocessSpec(
        resize=20,
        crop_height=16,
        crop_width=16,
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
        color_mode=color_mode,
    )


@pytest.mark.parametrize("color_mode", ["RGB", "L"])
def test_a_mixed_batch_equals_the_cpu_path_image_for_image(color_mode):
    cpu = Preprocessor(_spec(color_mode))
    device = DevicePreprocessor(cpu, "cpu")
    images = [
        _encoded("JPEG", 1),
        _encoded("PNG", 2),
        _encoded("JPEG", 3, "L"),
        _encoded("JPEG", 4, size=(64, 20)),
    ]
    routed = [device.route(data, i) for i, data in enumerate(images)]
    assert [type(r).__name__ for r in routed] == ["EncodedJpeg", "ndarray", "EncodedJpeg", "EncodedJpeg"]
    batch, errors = device(routed)
    assert errors == [None] * 4
    expected = np.stack([cpu(data) for data in images])
    np.testing.assert_array_equal(batch.numpy(), expected)


def test_an_undecodable_jpeg_fails_alone_with_its_position_and_the_rest_are_computed():
    cpu = Preprocessor(_spec())
    device = DevicePreprocessor(cpu, "cpu")
    good = _encoded("JPEG", 5)
    truncated = good[: len(good) // 2]  # the header passes, the entropy-coded data does not
    routed = [device.route(good, 0), device.route(truncated, 1), device.route(good, 2)]
    assert all(isinstance(r, EncodedJpeg) for r in routed)
    batch, errors = device(routed)
    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], BadInputError) and str(errors[1]).startswith(
        "image 1: corrupt or truncated image"
    )
    np.testing.assert_array_equal(batch[0].numpy(), cpu(good))
    assert not batch[1].any()  # a placeholder row, never returned to anyone


def test_route_checks_every_header_like_the_cpu_path():
    device = DevicePreprocessor(Preprocessor(_spec(), max_image_pixels=100), "cpu")
    with pytest.raises(BadInputError, match="over the limit of 100"):
        device.route(_encoded("JPEG", 6), 0)
    with pytest.raises(BadInputError, match="not a decodable image"):
        device.route(b"definitely not an image", 0)


def test_warm_up_fails_loudly_when_the_device_decoder_cannot_decode(monkeypatch):
    import service.device_preprocess as module

    device = DevicePreprocessor(Preprocessor(_spec("L")), "cpu")
    device.warm_up()

    def broken(*args, **kwargs):
        raise RuntimeError("nvJPEG is not available")

    monkeypatch.setattr(module, "decode_jpeg", broken)
    with pytest.raises(RuntimeError, match="nvJPEG is not available"):
        device.warm_up()  # no silent fallback to the CPU here
    batch, errors = device([device.route(_encoded("JPEG", 7, "L"), 0)])  # serving still falls back
    assert errors == [None] and device.fallbacks == 1 and batch.shape == (1, 1, 16, 16)


def _rotated_jpeg() -> bytes:
    rng = np.random.default_rng(8)
    image = Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def test_jpegs_the_gpu_would_read_differently_or_not_fit_are_decoded_on_the_cpu():
    cpu = Preprocessor(_spec())
    device = DevicePreprocessor(cpu, "cpu", max_pixels=1000)
    rotated = _rotated_jpeg()  # nvJPEG ignores EXIF orientation; the CPU path applies it
    routed = device.route(rotated, 0)
    assert isinstance(routed, np.ndarray)
    np.testing.assert_array_equal(routed, cpu(rotated))
    assert isinstance(
        device.route(_encoded("JPEG", 9, size=(20, 20)), 0), EncodedJpeg
    )  # 400 px: on the device
    assert isinstance(
        device.route(_encoded("JPEG", 9, size=(40, 30)), 0), np.ndarray
    )  # 1,200 px: over the cap


def _smooth_jpeg(seed: int) -> bytes:
    y, x = np.mgrid[0:48, 0:64]
    phase = seed * 0.7
    channels = [127 + 100 * np.sin(x / 9 + phase + k) * np.cos(y / 11 - k) for k in range(3)]
    buffer = io.BytesIO()
    Image.fromarray(np.stack(channels, axis=-1).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.cuda
def test_on_cuda_the_batch_is_decoded_on_the_gpu_and_matches_the_cpu_path_to_a_few_levels():
    cpu = Preprocessor(_spec())
    device = DevicePreprocessor(cpu, "cuda")
    images = [
        _smooth_jpeg(seed) for seed in range(8)
    ]  # photo-like: noise would magnify chroma-upsampling differences
    batch, errors = device([device.route(data, i) for i, data in enumerate(images)])
    assert batch.is_cuda and errors == [None] * 8
    difference = np.abs(batch.cpu().numpy() - np.stack([cpu(data) for data in images]))
    # nvJPEG's IDCT and the CUDA resize differ from libjpeg-turbo and the CPU kernels in the last
    # bits: a few intensity levels, 4/255 after normalising by std 0.25 is 0.063.
    assert difference.max() < 0.07 and difference.mean() < 0.01
