"""Tests of the μ-law curve, the display tone mapping and the side-by-side previews."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from evaluation.previews import mu_error_heatmap, side_by_side, write_rgb
from utils.tonemap import MU, mu_tonemap, to_uint8, tonemap_for_display

OPENCV_OPERATORS = ["reinhard", "mantiuk"]
ALL_OPERATORS = [*OPENCV_OPERATORS, "mu"]


def hdr_ramp(height: int = 24, width: int = 64) -> np.ndarray:
    """Linear RGB whose brightness grows from left (≈0.001) to right (1.0), slightly warm."""
    ramp = np.geomspace(1e-3, 1.0, width, dtype=np.float32)
    image = np.broadcast_to(ramp[None, :, None], (height, width, 3)) * np.array([1.0, 0.9, 0.8], np.float32)
    return np.ascontiguousarray(image)


# --- μ-law --------------------------------------------------------------------------------

def test_mu_tonemap_formula_and_dtype() -> None:
    values = np.array([0.0, 0.01, 0.5, 1.0], dtype=np.float32)
    mapped = mu_tonemap(values)
    assert mapped.dtype == np.float32
    np.testing.assert_allclose(mapped, np.log1p(MU * values) / math.log1p(MU), rtol=1e-6)
    assert mapped[0] == 0.0 and mapped[-1] == pytest.approx(1.0)
    tensor = mu_tonemap(torch.from_numpy(values))
    assert tensor.dtype == torch.float32
    np.testing.assert_allclose(tensor.numpy(), mapped, rtol=1e-6)


# --- tonemap_for_display ------------------------------------------------------------------

@pytest.mark.parametrize("operator", ALL_OPERATORS)
def test_display_preview_is_8bit_rgb_and_brighter_where_the_scene_is(operator: str) -> None:
    preview = tonemap_for_display(hdr_ramp(), operator)
    assert preview.dtype == np.uint8 and preview.shape == (24, 64, 3)
    luma = preview.astype(np.float64).mean(axis=(0, 2))
    assert luma[-1] > luma[len(luma) // 2] > luma[0]
    assert luma[-1] >= 128


@pytest.mark.parametrize("operator", ALL_OPERATORS)
def test_display_preview_keeps_rgb_order(operator: str) -> None:
    image = np.full((16, 16, 3), 0.02, dtype=np.float32)
    image[:, 8:] = [0.6, 0.05, 0.05]  # red half
    preview = tonemap_for_display(image, operator).astype(int)
    red, green, blue = preview[:, 8:].mean(axis=(0, 1))
    assert red > green + 20 and red > blue + 20


@pytest.mark.parametrize("operator", OPENCV_OPERATORS)
def test_opencv_operators_survive_zeros_and_constant_images(operator: str) -> None:
    image = hdr_ramp()
    image[:, :8] = 0.0  # exact black makes OpenCV take log(0)
    preview = tonemap_for_display(image, operator)
    assert preview[:, :8].max() <= preview[:, 32:].min()  # black stays the darkest
    assert not tonemap_for_display(np.zeros((8, 8, 3), np.float32), operator).any()
    constant = tonemap_for_display(np.full((8, 8, 3), 0.25, np.float32), operator)
    assert np.all(constant == constant[0, 0]) and constant[0, 0, 0] > 0


def test_mu_preview_is_the_mu_law_in_8_bits() -> None:
    image = hdr_ramp() * 1.5  # values above 1 are clipped first
    expected = np.round(mu_tonemap(np.clip(image, 0, 1)) * 255).astype(np.uint8)
    np.testing.assert_array_equal(tonemap_for_display(image, "mu"), expected)


def test_unknown_operator_is_rejected() -> None:
    with pytest.raises(ValueError, match="operator"):
        tonemap_for_display(hdr_ramp(), "drago")


def test_to_uint8_clips_and_zeroes_nan() -> None:
    values = np.array([[[-0.5, np.nan, 0.5], [1.0, 2.0, 0.002]]], dtype=np.float32)
    np.testing.assert_array_equal(to_uint8(values), [[[0, 0, 128], [255, 255, 1]]])


# --- side_by_side -------------------------------------------------------------------------

def scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    label = hdr_ramp(32, 48)
    pred = label.copy()
    pred[8:16, 8:16] += 0.2  # a wrong patch
    ref_ldr = np.clip((label * 4) ** (1 / 2.2), 0, 1)
    return ref_ldr, pred, label


@pytest.mark.parametrize("operator", ALL_OPERATORS)
def test_side_by_side_panels(operator: str) -> None:
    ref_ldr, pred, label = scene()
    image = side_by_side(ref_ldr, pred, label, operator=operator, titles=False)
    assert image.dtype == np.uint8 and image.shape == (32, 4 * 48, 3)
    ref_panel, pred_panel, label_panel, error_panel = np.split(image, 4, axis=1)
    np.testing.assert_array_equal(ref_panel, to_uint8(ref_ldr))
    # Same tone mapping for both: where prediction and label agree, so do the previews.
    agree = np.ones((32, 48), dtype=bool)
    agree[6:18, 6:18] = False
    diff = np.abs(pred_panel.astype(int) - label_panel.astype(int))[agree]
    assert diff.mean() < 1.0
    zero_error_colour = mu_error_heatmap(label[:1, :1], label[:1, :1])[0, 0]
    np.testing.assert_array_equal(error_panel[28, 40], zero_error_colour)
    assert not np.array_equal(error_panel[12, 12], zero_error_colour)


def test_side_by_side_of_a_perfect_prediction_has_equal_panels() -> None:
    _, _, label = scene()
    ref_ldr = np.clip(label, 0, 1)
    image = side_by_side(ref_ldr, label, label, operator="reinhard", titles=False)
    _, pred_panel, label_panel, error_panel = np.split(image, 4, axis=1)
    np.testing.assert_array_equal(pred_panel, label_panel)
    assert np.all(error_panel == error_panel[0, 0])


def test_error_heatmap_uses_the_colormap_scale() -> None:
    label = np.full((2, 2, 3), 0.1, np.float32)
    pred = label.copy()
    pred[0, 0] = 1.0  # |T(1) - T(0.1)| ≈ 0.27 > max_error: saturates the colormap
    heat = mu_error_heatmap(pred, label, max_error=0.1)
    turbo = cv2.cvtColor(cv2.applyColorMap(np.array([[0, 255]], np.uint8), cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(heat[1, 1], turbo[0, 0])
    np.testing.assert_array_equal(heat[0, 0], turbo[0, 1])


def test_titles_add_a_caption_bar(tmp_path) -> None:
    ref_ldr, pred, label = scene()
    image = side_by_side(ref_ldr, pred, label)
    assert image.shape[0] > 32 and image.shape[1] == 4 * 48
    path = tmp_path / "previews" / "scene.png"
    write_rgb(path, image)
    np.testing.assert_array_equal(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), image)


def test_reinhard_preview_prints_no_opencv_warning_and_keeps_the_log_level(run_python) -> None:
    """OpenCV's Reinhard operator warns about its own internal expressions on first use; a
    preview must not print that, and OpenCV's log level is restored afterwards."""
    script = (
        "import numpy as np, cv2\n"
        "from utils.tonemap import tonemap_for_display\n"
        "before = cv2.utils.logging.getLogLevel()\n"
        "tonemap_for_display(np.random.default_rng(0).random((16, 24, 3), dtype=np.float32) * 4)\n"
        "assert cv2.utils.logging.getLogLevel() == before\n"
    )
    done = run_python(script)
    assert done.returncode == 0, done.stderr
    assert "multi-channel" not in done.stderr and "WARN" not in done.stderr, done.stderr
