"""Tests of the classical baselines on synthetic scenes with a known radiance."""
from __future__ import annotations

import numpy as np
import pytest

from datasets.preprocess import exposure_times
from evaluation.baselines import (
    debevec_baseline,
    gamma_camera_response,
    linearize,
    reference_exposure_baseline,
)
from evaluation.metrics import psnr_mu

STOPS = [0.0, 2.0, 4.0]  # t = 1, 4, 16; the reference (middle) exposure has t = 4
HEIGHT, WIDTH = 48, 96


def radiance_ramp() -> np.ndarray:
    """Label-unit radiance growing from 0.002 (left) to 0.8 (right): the shortest exposure never clips."""
    ramp = np.geomspace(0.002, 0.8, WIDTH)
    image = ramp[None, :, None] * np.array([1.0, 0.8, 0.6])
    return np.ascontiguousarray(np.broadcast_to(image, (HEIGHT, WIDTH, 3)), dtype=np.float32)


def simulate_ldrs(radiances: list[np.ndarray], stops: list[float]) -> list[np.ndarray]:
    """Gamma-2.2 camera: LDR = clip((radiance·t)^(1/2.2)), one radiance map per exposure."""
    return [
        np.clip((rad * 2.0**stop) ** (1 / 2.2), 0.0, 1.0).astype(np.float32)
        for rad, stop in zip(radiances, stops)
    ]


def relative_error(estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return np.abs(estimate - truth) / truth


def test_helpers() -> None:
    np.testing.assert_array_equal(exposure_times([0, 2, -1]), np.array([1, 4, 0.5], np.float32))
    np.testing.assert_allclose(linearize(np.full((1, 1, 3), 0.5, np.float32), 2.0), 0.5**2.2 / 4, rtol=1e-6)
    response = gamma_camera_response()
    assert response.shape == (256, 1, 3) and response.dtype == np.float32
    assert response[0, 0, 0] == response[1, 0, 0] > 0  # log(response) must stay finite
    assert response[255, 0, 0] == pytest.approx(1.0)
    assert response[128, 0, 1] == pytest.approx((128 / 255) ** 2.2)
    assert np.all(np.diff(response[1:, 0, 2]) > 0)


def test_static_scene_both_baselines_recover_the_radiance_where_the_reference_is_unclipped() -> None:
    radiance = radiance_ramp()
    ldrs = simulate_ldrs([radiance] * 3, STOPS)
    reference = reference_exposure_baseline(ldrs, STOPS)
    debevec = debevec_baseline(ldrs, STOPS)
    for output in (reference, debevec):
        assert output.shape == radiance.shape and output.dtype == np.float32
        assert output.min() >= 0.0 and output.max() <= 1.0

    unclipped = (radiance * 4.0 < 1.0).all(axis=-1)  # reference exposure below saturation
    assert unclipped.mean() > 0.5
    np.testing.assert_allclose(reference[unclipped], radiance[unclipped], rtol=1e-4)
    # Debevec works on 8-bit values: only quantisation error remains, everywhere.
    assert np.percentile(relative_error(debevec, radiance), 90) < 0.02
    assert relative_error(debevec, radiance).max() < 0.05
    assert psnr_mu(debevec, radiance) > 45.0


def test_debevec_beats_the_reference_exposure_where_the_reference_clips() -> None:
    radiance = radiance_ramp()
    ldrs = simulate_ldrs([radiance] * 3, STOPS)
    clipped = (radiance * 4.0 >= 1.0).any(axis=-1)
    assert clipped.sum() > 100
    reference_error = relative_error(reference_exposure_baseline(ldrs, STOPS), radiance)[clipped].mean()
    debevec_error = relative_error(debevec_baseline(ldrs, STOPS), radiance)[clipped].mean()
    assert reference_error > 0.2  # stuck at 1/t_ref = 0.25
    assert debevec_error < 0.02


def test_moving_object_ghosts_in_the_debevec_merge_only() -> None:
    background = radiance_ramp()

    def with_object(left: int) -> np.ndarray:
        scene = background.copy()
        scene[16:32, left : left + 12] = [0.05, 0.12, 0.03]  # unclipped at every exposure
        return scene

    positions = [4, 24, 44]  # the object moves right between exposures
    scenes = [with_object(left) for left in positions]
    label = scenes[1]  # the label is aligned to the reference (middle) exposure
    ldrs = simulate_ldrs(scenes, STOPS)

    swept = np.zeros((HEIGHT, WIDTH), dtype=bool)
    swept[16:32, positions[0] : positions[-1] + 12] = True
    debevec_error = relative_error(debevec_baseline(ldrs, STOPS), label).mean(axis=-1)
    reference_error = relative_error(reference_exposure_baseline(ldrs, STOPS), label).mean(axis=-1)

    # Ghosts: large errors where the object has been, small ones elsewhere.
    assert debevec_error[swept].mean() > 0.3
    assert debevec_error[~swept].mean() < 0.02
    # The reference exposure alone sees the object where the label has it.
    assert reference_error[swept].max() < 1e-3
