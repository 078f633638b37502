from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls.manifest import PreprocessSpec
from imgcls.preprocess import eval_transform, load_image
from service.errors import BadInputError
from service.preprocess import Preprocessor

RGB_SPEC = PreprocessSpec(
    resize=18, crop_height=16, crop_width=16, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), color_mode="RGB"
)
GRAY_SPEC = PreprocessSpec(resize=16, crop_height=16, crop_width=16, mean=(0.3,), std=(0.4,), color_mode="L")


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _picture(mode: str = "RGB", size: tuple[int, int] = (40, 30)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
@pytest.mark.parametrize("spec", [RGB_SPEC, GRAY_SPEC], ids=["rgb", "gray"])
def test_service_input_matches_the_trainer_eval_path_exactly(fmt: str, spec: PreprocessSpec, tmp_path: Path):
    data = _encode(_picture(), fmt)
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(data)
    expected = eval_transform(spec)(load_image(path, spec.color_mode)).numpy()
    actual = Preprocessor(spec)(data)
    assert actual.shape == (spec.channels, 16, 16) and actual.dtype == np.float32
    np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("P", "GIF"),
        ("RGBA", "PNG"),
        ("LA", "PNG"),
        ("CMYK", "JPEG"),
        ("L", "JPEG"),
        ("I;16", "PNG"),
        ("1", "BMP"),
    ],
)
def test_every_common_colour_mode_is_converted(mode: str, fmt: str):
    image = (
        _picture("L").convert(mode)
        if mode != "I;16"
        else Image.fromarray(np.full((30, 40), 40000, np.uint16))
    )
    out = Preprocessor(RGB_SPEC)(_encode(image, fmt))
    assert out.shape == (3, 16, 16)


def test_animated_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (20, 20), color) for color in ("white", "black")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    out = Preprocessor(GRAY_SPEC)(buffer.getvalue())
    assert float(out.min()) == pytest.approx((1.0 - 0.3) / 0.4)  # white everywhere


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty image"),
        (b"definitely not an image", "not a decodable image"),
        (_encode(_picture(), "JPEG")[:200], "corrupt or truncated image"),
        (_encode(_picture(), "TGA"), "unsupported image format TGA"),
    ],
    ids=["empty", "garbage", "truncated", "tga"],
)
def test_bad_images_raise_a_clear_bad_input_error(data: bytes, message: str):
    with pytest.raises(BadInputError, match=message):
        Preprocessor(RGB_SPEC)(data)


def test_images_over_the_pixel_limit_are_refused_before_decoding():
    data = _encode(Image.new("L", (300, 200)), "PNG")
    with pytest.raises(BadInputError, match=r"300x200 pixels is over the limit of 50,000"):
        Preprocessor(RGB_SPEC, max_image_pixels=50_000)(data)


def test_json_depth_check_counts_brackets_outside_strings_only():
    import json

    from service.jsonlimits import check_json_depth

    tricky = {
        "a": [[1]],
        "s": '[[[[[[[[\\"[[[[\\\\',
    }  # brackets, an escaped quote and backslashes inside a string
    check_json_depth(json.dumps(tricky).encode(), 3)
    with pytest.raises(BadInputError, match="nested deeper than 3 levels"):
        check_json_depth(b'{"a": [[[1]]]}', 3)
