"""Image reading/writing: normalisation, channel order, round trips and errors."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from utils.image_io import (
    ImageReadError,
    read_hdr,
    read_ldr,
    read_ldr_uint8,
    write_hdr,
    write_ldr,
    write_png,
)


def _bgr_pixels(dtype: type) -> np.ndarray:
    """2×2 BGR image whose blue, green and red channels differ."""
    top = np.iinfo(dtype).max
    bgr = np.zeros((2, 2, 3), dtype=dtype)
    bgr[..., 0] = top  # blue
    bgr[..., 1] = top // 2 + 1  # green
    bgr[..., 2] = 0  # red
    bgr[1, 1] = (1, 2, 3)
    return bgr


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_read_ldr_16bit_divides_by_2_16_and_returns_rgb(tmp_path, suffix):
    path = tmp_path / f"ldr16{suffix}"
    cv2.imwrite(str(path), _bgr_pixels(np.uint16))
    rgb = read_ldr(path)
    assert rgb.dtype == np.float32 and rgb.shape == (2, 2, 3)
    np.testing.assert_allclose(rgb[0, 0], [0.0, 32768 / 65536, 65535 / 65536], rtol=0, atol=1e-7)
    np.testing.assert_allclose(rgb[1, 1], [3 / 65536, 2 / 65536, 1 / 65536], rtol=1e-6)


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_read_ldr_8bit_divides_by_255(tmp_path, suffix):
    path = tmp_path / f"ldr8{suffix}"
    cv2.imwrite(str(path), _bgr_pixels(np.uint8))
    rgb = read_ldr(path)
    np.testing.assert_allclose(rgb[0, 0], [0.0, 128 / 255, 1.0], atol=1e-7)
    np.testing.assert_allclose(rgb[1, 1], [3 / 255, 2 / 255, 1 / 255], rtol=1e-6)


def test_read_ldr_expands_grayscale_to_rgb(tmp_path):
    path = tmp_path / "gray.png"
    cv2.imwrite(str(path), np.full((3, 4), 51, dtype=np.uint8))
    rgb = read_ldr(path)
    assert rgb.shape == (3, 4, 3)
    np.testing.assert_allclose(rgb, 0.2, atol=1e-7)


def test_read_ldr_uint8_reduces_16bit_and_returns_rgb(tmp_path):
    path = tmp_path / "ldr16.tif"
    bgr = _bgr_pixels(np.uint16)
    cv2.imwrite(str(path), bgr)
    rgb = read_ldr_uint8(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    np.testing.assert_array_equal(rgb[0, 0], [0, 128, 255])


def test_hdr_round_trip_keeps_channel_order_and_values(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.uniform(0.01, 1.0, size=(5, 7, 3)).astype(np.float32)
    rgb[0, 0] = (4.0, 0.5, 0.02)  # distinct channels; above 1 like a real radiance map
    path = tmp_path / "label.hdr"
    write_hdr(path, rgb)
    back = read_hdr(path)
    assert back.dtype == np.float32 and back.shape == rgb.shape
    # RGBE stores an 8-bit mantissa per channel against a shared exponent
    assert np.all(np.abs(back - rgb) <= 0.01 * rgb.max(axis=2, keepdims=True))
    assert back[0, 0, 0] > back[0, 0, 1] > back[0, 0, 2]


@pytest.mark.parametrize("bit_depth,suffix", [(16, ".tif"), (8, ".png")])
def test_write_ldr_round_trip(tmp_path, bit_depth, suffix):
    rng = np.random.default_rng(1)
    rgb = rng.random((6, 5, 3)).astype(np.float32)
    path = tmp_path / f"ldr{suffix}"
    write_ldr(path, rgb, bit_depth=bit_depth)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == (np.uint16 if bit_depth == 16 else np.uint8)
    np.testing.assert_allclose(read_ldr(path), rgb, atol=1.0 / 2 ** (bit_depth - 1))


def test_write_png_accepts_uint8_and_float(tmp_path):
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    image[..., 0] = 200
    write_png(tmp_path / "a.png", image)
    write_png(tmp_path / "b.png", image.astype(np.float32) / 255.0)
    for name in ("a.png", "b.png"):
        np.testing.assert_array_equal(read_ldr_uint8(tmp_path / name), image)


def test_missing_file_error_names_the_file(tmp_path):
    path = tmp_path / "missing.tif"
    for reader in (read_ldr, read_ldr_uint8, read_hdr):
        with pytest.raises(ImageReadError, match="missing.tif"):
            reader(path)


def test_corrupt_file_error_names_the_file(tmp_path):
    path = tmp_path / "broken.tif"
    path.write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match="broken.tif"):
        read_ldr(path)


def test_wrong_kind_of_image_is_rejected(tmp_path):
    write_hdr(tmp_path / "x.hdr", np.ones((2, 2, 3), dtype=np.float32))
    write_png(tmp_path / "x.png", np.ones((2, 2, 3), dtype=np.uint8))
    with pytest.raises(ImageReadError, match="x.hdr"):
        read_ldr(tmp_path / "x.hdr")
    with pytest.raises(ImageReadError, match="x.png"):
        read_hdr(tmp_path / "x.png")


def test_writers_reject_non_rgb_arrays(tmp_path):
    with pytest.raises(ValueError, match="H×W×3"):
        write_hdr(tmp_path / "x.hdr", np.ones((2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="H×W×3"):
        write_png(tmp_path / "x.png", np.ones((2, 2, 4), dtype=np.uint8))
