from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.manifest import IMAGENET_MEAN, PreprocessSpec
from imgcls.preprocess import eval_transform, load_image, to_color_mode
from trainer.config import AugmentConfig, EvalTransformConfig
from trainer.transforms import batch_mixer, preprocess_spec, train_transform


def test_preprocess_spec_defaults_follow_the_imagenet_convention():
    spec = preprocess_spec(EvalTransformConfig(image_size=224))
    assert (spec.resize, spec.crop_height, spec.crop_width) == (256, 224, 224)
    assert spec.mean == IMAGENET_MEAN
    assert spec.color_mode == "RGB"


def test_grayscale_spec_defaults_to_one_channel_statistics():
    spec = preprocess_spec(EvalTransformConfig(image_size=16, resize=16, color_mode="L"))
    assert spec.mean == (0.5,) and spec.std == (0.5,) and spec.channels == 1


def test_eval_transform_resizes_the_shorter_side_then_center_crops_and_normalises():
    spec = preprocess_spec(
        EvalTransformConfig(image_size=8, resize=10, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    )
    image = torch.zeros((3, 20, 40), dtype=torch.uint8)
    image[:, :, 18:22] = 255  # a white stripe in the middle column band survives the center crop
    out = eval_transform(spec)(image)
    assert out.shape == (3, 8, 8) and out.dtype == torch.float32
    assert float(out.min()) == -1.0  # black normalises to (0 - 0.5) / 0.5
    assert float(out[:, :, 3:5].mean()) > 0.0  # the stripe is at the crop's center
    assert float(out[:, :, 0].max()) == -1.0 and float(out[:, :, -1].max()) == -1.0


def test_eval_transform_center_crop_takes_the_middle():
    spec = PreprocessSpec(
        resize=4,
        crop_height=2,
        crop_width=2,
        interpolation="nearest",
        color_mode="L",
        mean=(0.0,),
        std=(1.0,),
    )
    image = torch.arange(16, dtype=torch.uint8).reshape(1, 4, 4)
    out = eval_transform(spec)(image)
    torch.testing.assert_close(out * 255, torch.tensor([[[5.0, 6.0], [9.0, 10.0]]]))


@pytest.mark.parametrize("preset", ["none", "light", "standard", "strong"])
@pytest.mark.parametrize("color_mode", ["RGB", "L"])
def test_every_augmentation_preset_yields_the_eval_shape_and_dtype(preset: str, color_mode: str):
    spec = preprocess_spec(EvalTransformConfig(image_size=16, resize=18, color_mode=color_mode))
    channels = 3 if color_mode == "RGB" else 1
    image = torch.randint(0, 256, (channels, 24, 30), dtype=torch.uint8)
    out = train_transform(spec, AugmentConfig(preset=preset))(image)
    assert out.shape == (channels, 16, 16) and out.dtype == torch.float32


def test_hflip_is_absent_when_disabled():
    spec = preprocess_spec(EvalTransformConfig(image_size=16, resize=16))
    names = [
        type(t).__name__ for t in train_transform(spec, AugmentConfig(preset="light", hflip=False)).transforms
    ]
    assert "RandomHorizontalFlip" not in names
    names = [
        type(t).__name__ for t in train_transform(spec, AugmentConfig(preset="light", hflip=True)).transforms
    ]
    assert "RandomHorizontalFlip" in names


def test_mixup_produces_soft_targets_and_is_off_by_default():
    assert batch_mixer(AugmentConfig(), num_classes=4) is None
    mixer = batch_mixer(AugmentConfig(mixup_alpha=0.2, cutmix_alpha=1.0), num_classes=4)
    _images, targets = mixer(torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1]))
    assert targets.shape == (6, 4)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(6))


def test_palette_with_transparency_converts_to_rgb():
    image = Image.new("P", (4, 4))
    image.putpalette([255, 0, 0] * 256)
    image.info["transparency"] = 0
    assert to_color_mode(image, "RGB").mode == "RGB"


@pytest.mark.parametrize("mode", ["RGBA", "CMYK", "LA", "1", "L"])
def test_common_modes_convert_to_rgb_and_grayscale(mode: str):
    image = Image.new(mode, (5, 3))
    assert to_color_mode(image, "RGB").mode == "RGB"
    assert to_color_mode(image, "L").mode == "L"


def test_sixteen_bit_images_are_scaled_not_clipped():
    array = np.array([[0, 32768, 65535]], dtype=np.uint16)
    image = Image.fromarray(array)
    assert np.asarray(to_color_mode(image, "L")).tolist() == [[0, 127, 255]]


def test_exif_orientation_is_applied(tmp_path: Path):
    image = Image.new("RGB", (4, 2), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif.tobytes())
    assert tuple(load_image(path, "RGB").shape) == (3, 4, 2)


def test_load_image_returns_uint8_chw(tmp_path: Path):
    path = tmp_path / "gray.png"
    Image.fromarray(np.full((6, 9), 200, dtype=np.uint8)).save(path)
    tensor = load_image(path, "RGB")
    assert tensor.dtype == torch.uint8 and tuple(tensor.shape) == (3, 6, 9)
    assert int(tensor.max()) == 200


@pytest.mark.parametrize("subsampling", [0, 1, 2])
@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("color_mode", ["RGB", "L"])
def test_the_fast_jpeg_path_is_pixel_identical_to_pillow(
    subsampling: int, progressive: bool, color_mode: str
):
    """decode_to_tensor's torchvision path must equal a plain Pillow decode, EXIF orientation included."""
    from torchvision.transforms.v2 import functional as F

    from imgcls.preprocess import decode_converted, decode_to_tensor

    rng = np.random.default_rng(subsampling)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).save(
        buffer,
        format="JPEG",
        quality=85,
        subsampling=subsampling,
        progressive=progressive,
        exif=exif.tobytes(),
    )
    data = buffer.getvalue()
    with Image.open(io.BytesIO(data)) as image:
        fast = decode_to_tensor(image, data, color_mode)
    with Image.open(io.BytesIO(data)) as image:
        pillow = F.pil_to_tensor(decode_converted(image, color_mode))
    assert tuple(fast.shape) == (3 if color_mode == "RGB" else 1, 53, 37)
    torch.testing.assert_close(fast, pillow, rtol=0, atol=0)
