"""The report's corruptions: shape and dtype kept, seeded, and worse with each severity."""

from __future__ import annotations

import pytest
import torch

from trainer.reporting.corruptions import CORRUPTIONS, SEVERITIES, corrupt, describe

# Damage should grow with severity for these; rotate and zoom saturate once the content has moved
# away, and grayscale cannot damage a grey image.
MONOTONIC = ("gaussian_noise", "gaussian_blur", "motion_blur", "jpeg", "brightness", "contrast", "pixelate")


def random_batch(channels: int, size: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(channels)
    return torch.randint(0, 256, (2, channels, size, size), generator=generator, dtype=torch.uint8)


def structured_batch(channels: int, size: int = 32) -> torch.Tensor:
    """A 3-pixel checkerboard over a diagonal gradient: edges to blur and tones to shift. Random pixels
    would not do: blur and JPEG of white noise saturate at the first severity."""
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    image = ((y // 3 + x // 3) % 2) * 160 + (x + y) * 80 // (2 * size - 2) + 8
    return image.to(torch.uint8).expand(2, channels, size, size).clone()


def mean_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_severity_keeps_shape_and_dtype(name: str, channels: int) -> None:
    images = random_batch(channels)
    for severity in SEVERITIES:
        out = corrupt(images, name, severity, seed=0)
        assert out.shape == images.shape
        assert out.dtype == torch.uint8


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_same_seed_gives_the_same_images(name: str) -> None:
    images = random_batch(3)
    assert torch.equal(corrupt(images, name, 3, seed=7), corrupt(images, name, 3, seed=7))


def test_a_different_seed_gives_different_noise() -> None:
    images = random_batch(3)
    assert not torch.equal(
        corrupt(images, "gaussian_noise", 3, seed=1), corrupt(images, "gaussian_noise", 3, seed=2)
    )


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", MONOTONIC)
def test_damage_does_not_decrease_with_severity(name: str, channels: int) -> None:
    images = structured_batch(channels)
    damage = [mean_abs_diff(corrupt(images, name, s, seed=0), images) for s in SEVERITIES]
    assert damage[0] > 0, f"{name} at severity 1 left the image unchanged"
    assert damage == sorted(damage), f"{name}: damage by severity {damage}"


def test_grayscale_at_severity_5_makes_the_channels_equal() -> None:
    out = corrupt(random_batch(3), "grayscale", 5, seed=0)
    assert torch.equal(out[:, 0], out[:, 1])
    assert torch.equal(out[:, 1], out[:, 2])


def test_grayscale_leaves_a_grey_image_unchanged() -> None:
    images = random_batch(1)
    assert torch.equal(corrupt(images, "grayscale", 5, seed=0), images)


def test_the_global_rng_is_untouched() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    for name in CORRUPTIONS:
        corrupt(random_batch(3), name, 5, seed=0)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_unknown_names_and_severities_list_the_valid_ones() -> None:
    images = random_batch(3)
    with pytest.raises(ValueError, match="Valid corruptions: gaussian_noise, gaussian_blur"):
        corrupt(images, "fog", 1, seed=0)
    with pytest.raises(ValueError, match="Valid severities: 1, 2, 3, 4, 5"):
        corrupt(images, "jpeg", 6, seed=0)
    with pytest.raises(ValueError, match="Valid corruptions"):
        describe("fog", 1)


def test_images_that_are_not_uint8_crops_are_refused() -> None:
    with pytest.raises(ValueError, match="uint8 batch"):
        corrupt(random_batch(3).float(), "jpeg", 1, seed=0)
    with pytest.raises(ValueError, match="C 1 or 3"):
        corrupt(torch.zeros(1, 4, 8, 8, dtype=torch.uint8), "jpeg", 1, seed=0)


def test_descriptions_name_the_parameter() -> None:
    assert describe("jpeg", 5) == "JPEG compression, quality 7"
    assert describe("gaussian_blur", 5) == "Gaussian blur, sigma 6.0 px at 224 px"
    assert describe("gaussian_blur", 5, image_height=112) == "Gaussian blur, sigma 3.0 px"
    assert all(describe(name, s) for name in CORRUPTIONS for s in SEVERITIES)
