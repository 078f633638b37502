"""The way back from the model's input crop to the original image, checked against torchvision itself,
and the pointing game's hit test on hand-made maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from imgcls.explain.geometry import crop_geometry, jet, overlay, to_original
from imgcls.manifest import PreprocessSpec
from imgcls.preprocess import INTERPOLATION
from tests.explain.shapes import peak_in_box

# (height, width): landscape, portrait, square; downscaled and upscaled by the resize to 37 px
SIZES = [(40, 60), (60, 40), (50, 50), (24, 36), (36, 24), (20, 20)]
SPEC = PreprocessSpec.resolve(32, interpolation="nearest")  # resize 37 (32 / 0.875), crop 32x32


def coordinate_image(height: int, width: int) -> torch.Tensor:
    """uint8 [3, H, W] whose pixels say where they are: channel 0 = x, channel 1 = y."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([xs, ys, torch.zeros_like(xs)]).to(torch.uint8)


def resize_and_crop(image: torch.Tensor, spec: PreprocessSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The geometric half of ``imgcls.preprocess.eval_transform``: (resized, crop)."""
    resized = v2.Resize(spec.resize, interpolation=INTERPOLATION[spec.interpolation], antialias=True)(image)
    return resized, v2.CenterCrop((spec.crop_height, spec.crop_width))(resized)


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_crop_geometry_matches_torchvisions_resize_and_center_crop(height: int, width: int) -> None:
    geometry = crop_geometry(height, width, SPEC)
    resized, crop = resize_and_crop(coordinate_image(height, width), SPEC)

    assert tuple(resized.shape[-2:]) == (geometry.resized_height, geometry.resized_width)
    assert tuple(crop.shape[-2:]) == (geometry.crop_height, geometry.crop_width)
    # Where the crop sits in the resized image, exactly: crop a map of resized coordinates.
    rows, cols = torch.meshgrid(
        torch.arange(geometry.resized_height), torch.arange(geometry.resized_width), indexing="ij"
    )
    cropped = v2.CenterCrop((SPEC.crop_height, SPEC.crop_width))(torch.stack([cols, rows]))
    assert cropped[:, 0, 0].tolist() == [geometry.left, geometry.top]
    # End to end, on the original image: nearest-neighbour resizing reads resized pixel r from the
    # original pixel at r * original / resized (rounded down), so each corner of the crop holds the
    # coordinates of the original pixel the geometry predicts, within 1 px.
    scale_y, scale_x = height / geometry.resized_height, width / geometry.resized_width
    for row, col in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
        resized_row = geometry.top + (row % geometry.crop_height)
        resized_col = geometry.left + (col % geometry.crop_width)
        x, y = crop[0, row, col].item(), crop[1, row, col].item()
        assert abs(x - resized_col * scale_x) <= 1.0, (row, col, x, resized_col * scale_x)
        assert abs(y - resized_row * scale_y) <= 1.0, (row, col, y, resized_row * scale_y)


@pytest.mark.parametrize(
    ("height", "width", "resize"),
    [
        (40, 40, 40),  # the 48 px wide crop pads 4 + 4 columns
        (60, 40, 40),
        (40, 60, 40),  # wide enough: no padding
        (41, 41, 41),  # pads 3 before, 4 after
        (61, 41, 41),
    ],
)
def test_crop_geometry_matches_torchvision_where_a_non_square_crop_pads(
    height: int, width: int, resize: int
) -> None:
    spec = PreprocessSpec(
        resize=resize, crop_height=32, crop_width=48, interpolation="nearest", mean=(0.5,) * 3, std=(0.5,) * 3
    )
    geometry = crop_geometry(height, width, spec)
    resized, _ = resize_and_crop(coordinate_image(height, width), spec)
    assert tuple(resized.shape[-2:]) == (geometry.resized_height, geometry.resized_width)

    # resized coordinates + 1, so that torchvision's zero padding stands out
    rows, cols = torch.meshgrid(
        torch.arange(geometry.resized_height) + 1, torch.arange(geometry.resized_width) + 1, indexing="ij"
    )
    cropped = v2.CenterCrop((spec.crop_height, spec.crop_width))(torch.stack([cols, rows]))

    expected_cols = torch.arange(spec.crop_width) + geometry.left
    expected_rows = torch.arange(spec.crop_height) + geometry.top
    inside_cols = (expected_cols >= 0) & (expected_cols < geometry.resized_width)
    inside_rows = (expected_rows >= 0) & (expected_rows < geometry.resized_height)
    middle_row, middle_col = spec.crop_height // 2, spec.crop_width // 2
    assert torch.equal(cropped[0, middle_row], torch.where(inside_cols, expected_cols + 1, 0))
    assert torch.equal(cropped[1, :, middle_col], torch.where(inside_rows, expected_rows + 1, 0))


def test_crop_geometry_of_a_landscape_image_cuts_its_sides() -> None:
    # 40x60 -> shorter side 37 -> 37x55; the 32x32 crop starts round(2.5) = 2 rows, round(11.5) = 12 columns in
    geometry = crop_geometry(40, 60, SPEC)

    assert (geometry.resized_height, geometry.resized_width) == (37, 55)
    assert (geometry.top, geometry.left, geometry.crop_height, geometry.crop_width) == (2, 12, 32, 32)


def sample_positions(size: int, resized: int) -> np.ndarray:
    """Where each original pixel's centre falls on the resized grid (bilinear, align_corners=False)."""
    return (np.arange(size) + 0.5) * resized / size - 0.5


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_to_original_pastes_the_crop_where_it_came_from_and_zero_where_it_was_cut(
    height: int, width: int
) -> None:
    geometry = crop_geometry(height, width, SPEC)
    heat = to_original(np.ones((32, 32), dtype=np.float32), height, width, SPEC)

    assert heat.shape == (height, width)
    assert heat.dtype == np.float32
    rows = sample_positions(height, geometry.resized_height)
    cols = sample_positions(width, geometry.resized_width)
    inside_rows = (rows >= geometry.top) & (rows <= geometry.top + geometry.crop_height - 1)
    inside_cols = (cols >= geometry.left) & (cols <= geometry.left + geometry.crop_width - 1)
    # more than one resized pixel outside the crop: bilinear reads only pixels the crop cut away
    cut_rows = (rows <= geometry.top - 1) | (rows >= geometry.top + geometry.crop_height)
    cut_cols = (cols <= geometry.left - 1) | (cols >= geometry.left + geometry.crop_width)
    np.testing.assert_allclose(heat[np.ix_(inside_rows, inside_cols)], 1.0, atol=1e-6)
    assert (heat[cut_rows, :] == 0).all()
    assert (heat[:, cut_cols] == 0).all()
    assert inside_rows.any()
    assert inside_cols.any()


def test_to_original_cuts_the_long_side_of_a_landscape_image() -> None:
    heat = to_original(np.ones((32, 32), dtype=np.float32), 40, 60, SPEC)

    # the crop kept resized rows 2..33 of 37 and columns 12..43 of 55: original rows ~3..36 of 40 and
    # columns ~13..47 of 60
    assert (heat[:, :12] == 0).all()
    assert (heat[:, 49:] == 0).all()
    assert (heat[:2] == 0).all()
    assert (heat[4:36, 14:47] > 0.99).all()


def test_to_original_keeps_values_in_unit_range() -> None:
    crop_map = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    crop_map[0, 0], crop_map[-1, -1] = 0.0, 1.0

    heat = to_original(crop_map, 40, 60, SPEC)

    assert heat.min() == 0.0
    assert 0.5 < heat.max() <= 1.0


def test_to_original_moves_a_peak_to_where_the_crop_came_from() -> None:
    crop_map = np.zeros((32, 32), dtype=np.float32)
    crop_map[5, 20] = 1.0
    geometry = crop_geometry(40, 60, SPEC)

    heat = to_original(crop_map, 40, 60, SPEC)

    y, x = np.unravel_index(heat.argmax(), heat.shape)
    expected_y = (geometry.top + 5 + 0.5) * 40 / geometry.resized_height - 0.5
    expected_x = (geometry.left + 20 + 0.5) * 60 / geometry.resized_width - 0.5
    assert abs(y - expected_y) <= 1.0
    assert abs(x - expected_x) <= 1.0


def test_to_original_without_a_cut_is_a_plain_resize() -> None:
    spec = PreprocessSpec.resolve(32, resize=32)
    crop_map = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)

    heat = to_original(crop_map, 64, 64, spec)

    assert heat.shape == (64, 64)
    assert heat.min() >= 0.0
    assert heat.max() <= 1.0
    np.testing.assert_allclose(heat[::2, ::2].mean(), crop_map.mean(), atol=0.02)
    assert heat[:4].max() < 0.2  # the top of the map stays at the top
    assert heat[-4:].min() > 0.8


def test_to_original_refuses_a_map_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="crop 32x32"):
        to_original(np.zeros((16, 16), dtype=np.float32), 40, 60, SPEC)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_overlay_is_an_rgb_image_of_the_original_size(mode: str) -> None:
    image = Image.new(mode, (60, 40), color=128 if mode == "L" else (128, 64, 32))
    heat = np.zeros((40, 60), dtype=np.float32)
    heat[10:20, 30:40] = 1.0

    blended = overlay(image, heat)

    assert blended.mode == "RGB"
    assert blended.size == (60, 40)
    pixels = np.asarray(blended).astype(int)
    assert pixels[15, 35, 0] > pixels[15, 35, 2]  # hot: red over blue
    assert pixels[0, 0, 2] > pixels[0, 0, 0]  # cold: blue over red


def test_overlay_blends_the_image_with_jet_by_opacity() -> None:
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    heat = rng.random((12, 10)).astype(np.float32)

    assert np.array_equal(np.asarray(overlay(image, heat, opacity=0.0)), np.asarray(image))
    assert np.array_equal(np.asarray(overlay(image, heat, opacity=1.0)), jet(heat))


def test_overlay_refuses_a_map_of_another_size() -> None:
    with pytest.raises(ValueError, match="heat map"):
        overlay(Image.new("RGB", (60, 40)), np.zeros((60, 40), dtype=np.float32))


def test_jet_runs_from_blue_through_green_to_red() -> None:
    colours = jet(np.array([0.0, 0.5, 1.0, -1.0, 2.0])).astype(int)

    assert colours.dtype == np.int64
    assert colours[0].argmax() == 2  # blue
    assert colours[1].argmax() == 1  # green
    assert colours[2].argmax() == 0  # red
    assert np.array_equal(colours[3], colours[0])  # clipped to [0, 1]
    assert np.array_equal(colours[4], colours[2])


BOX = np.array([10, 20, 30, 40])  # x0, y0, x1, y1 (exclusive)


def peak_at(y: int, x: int, shape: tuple[int, int] = (50, 50)) -> np.ndarray:
    heat = np.full(shape, 0.1, dtype=np.float32)
    heat[y, x] = 1.0
    return heat


@pytest.mark.parametrize(
    ("y", "x", "hit"),
    [
        (30, 20, True),  # the middle
        (20, 10, True),  # the box's first row and column are inside
        (39, 29, True),  # its last ones too
        (40, 20, False),  # one past the bottom: y1 is exclusive
        (30, 30, False),  # one past the right
        (19, 20, False),  # one above
        (30, 9, False),  # one to the left
        (2, 45, False),  # far away
    ],
)
def test_peak_in_box_hits_only_inside_the_box(y: int, x: int, hit: bool) -> None:
    assert peak_in_box(peak_at(y, x), BOX) is hit


def test_peak_in_box_reads_x_as_columns_and_y_as_rows() -> None:
    wide_box = np.array([0, 40, 50, 50])  # the bottom ten rows

    assert peak_in_box(peak_at(45, 5), wide_box)
    assert not peak_in_box(peak_at(5, 45), wide_box)


def test_peak_in_box_counts_a_tie_as_a_hit_when_any_maximum_is_inside() -> None:
    heat = peak_at(2, 2)
    heat[30, 20] = 1.0

    assert peak_in_box(heat, BOX)


def test_peak_in_box_counts_an_empty_map_as_a_miss() -> None:
    assert not peak_in_box(np.zeros((50, 50), dtype=np.float32), BOX)
    assert not peak_in_box(np.zeros((50, 50), dtype=np.float32), np.array([0, 0, 50, 50]))
