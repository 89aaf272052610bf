"""Tests of the per-scene metrics and their accumulation (evaluation/metrics.py, evaluation/tables.py)."""
from __future__ import annotations

import csv
import importlib.util
import json
import logging
import math
import sys
import time

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from evaluation import metrics
from evaluation.metrics import (
    compute_metrics,
    psnr,
    psnr_l,
    psnr_mu,
    ssim,
    ssim_map,
)
from evaluation.tables import MetricTable, format_table, mean_metrics
from utils.tonemap import mu_tonemap

CORE_KEYS = {"psnr_l", "psnr_mu", "ssim_l", "ssim_mu"}


def smooth_image(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """A smooth colour image in [0, 1] plus a little texture, float64."""
    h, w, _ = shape
    yy, xx = np.mgrid[0:h, 0:w]
    base = 0.5 + 0.4 * np.sin(xx / 6.0)[..., None] * np.cos(yy / 4.0)[..., None] * np.array([1.0, 0.7, 0.4])
    return np.clip(base + rng.normal(0.0, 0.03, shape), 0.0, 1.0)


def noisy(rng: np.random.Generator, image: np.ndarray, sigma: float) -> np.ndarray:
    return np.clip(image + rng.normal(0.0, sigma, image.shape), 0.0, 1.0)


def direct_released_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Textbook SSIM with an explicit 11×11 window loop and zero padding of 5 (reference)."""
    taps = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    window = np.outer(taps, taps)
    window /= window.sum()
    c1, c2 = 0.01**2, 0.03**2
    h, w, channels = a.shape
    pa = np.pad(a, ((5, 5), (5, 5), (0, 0)))
    pb = np.pad(b, ((5, 5), (5, 5), (0, 0)))
    total = 0.0
    for c in range(channels):
        for i in range(h):
            for j in range(w):
                pa_win = pa[i : i + 11, j : j + 11, c]
                pb_win = pb[i : i + 11, j : j + 11, c]
                mu_a = (window * pa_win).sum()
                mu_b = (window * pb_win).sum()
                var_a = (window * pa_win**2).sum() - mu_a**2
                var_b = (window * pb_win**2).sum() - mu_b**2
                cov = (window * pa_win * pb_win).sum() - mu_a * mu_b
                total += ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
                    (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
                )
    return total / (h * w * channels)


# --- PSNR ---------------------------------------------------------------------------------

def test_psnr_of_known_error() -> None:
    label = np.zeros((4, 5, 3))
    assert psnr(label + 0.1, label) == pytest.approx(20.0, abs=1e-12)
    assert psnr(label + 0.1, label, data_range=10.0) == pytest.approx(40.0, abs=1e-12)


def test_psnr_of_identical_images_is_infinite() -> None:
    image = np.full((3, 3, 3), 0.25)
    assert psnr(image, image) == math.inf


def test_psnr_is_computed_in_float64() -> None:
    # A float32 MSE of such tiny differences would lose most of its digits.
    rng = np.random.default_rng(0)
    label = rng.random((64, 64, 3)).astype(np.float32)
    pred = label + np.float32(1e-6)
    expected = 20 * math.log10(1 / math.sqrt(np.mean((pred.astype(np.float64) - label.astype(np.float64)) ** 2)))
    assert psnr(pred, label) == pytest.approx(expected, abs=1e-9)


def test_psnr_mu_compares_mu_law_images() -> None:
    rng = np.random.default_rng(1)
    label = rng.random((8, 9, 3))
    pred = noisy(rng, label, 0.05)
    assert psnr_mu(pred, label) == pytest.approx(psnr(mu_tonemap(pred), mu_tonemap(label)), abs=1e-12)
    assert psnr_l(pred, label) == pytest.approx(psnr(pred, label), abs=1e-12)
    assert psnr_mu(pred, label) != pytest.approx(psnr_l(pred, label), abs=1e-3)


# --- SSIM ---------------------------------------------------------------------------------

def test_released_ssim_matches_a_direct_double_loop() -> None:
    rng = np.random.default_rng(2)
    a = rng.random((13, 15, 3))
    b = np.clip(0.8 * a + 0.2 * rng.random((13, 15, 3)), 0.0, 1.0)
    assert ssim(a, b, "released") == pytest.approx(direct_released_ssim(a, b), abs=1e-10)


@pytest.mark.parametrize("variant", ["released", "matlab"])
def test_ssim_of_identical_images_is_one(variant: str) -> None:
    image = smooth_image(np.random.default_rng(3), (32, 40, 3))
    assert ssim(image, image, variant) == pytest.approx(1.0, abs=1e-12)


def test_matlab_ssim_matches_skimage() -> None:
    # skimage with Gaussian weights (σ 1.5, truncate 3.5 → 11 taps), population covariance and
    # data range 255 averages the SSIM map after cropping (11 − 1) // 2 = 5 pixels: the valid region.
    rng = np.random.default_rng(4)
    label = smooth_image(rng, (48, 64, 3))
    pred = noisy(rng, label, 0.05)
    expected = structural_similarity(
        pred * 255.0,
        label * 255.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
        channel_axis=-1,
    )
    assert ssim(pred, label, "matlab") == pytest.approx(expected, abs=1e-6)


def test_matlab_ssim_is_the_released_map_over_the_valid_region() -> None:
    rng = np.random.default_rng(5)
    label = smooth_image(rng, (30, 34, 3))
    pred = noisy(rng, label, 0.1)
    full_map = ssim_map(pred, label)
    assert ssim(pred, label, "matlab") == pytest.approx(full_map[5:-5, 5:-5].mean(), abs=1e-12)
    assert ssim(pred, label, "released") == pytest.approx(full_map.mean(), abs=1e-12)
    assert ssim(pred, label, "matlab") != pytest.approx(ssim(pred, label, "released"), abs=1e-6)


def test_ssim_decreases_with_distortion() -> None:
    rng = np.random.default_rng(6)
    label = smooth_image(rng, (40, 40, 3))
    scores = [ssim(noisy(rng, label, sigma), label) for sigma in (0.01, 0.05, 0.2)]
    assert scores[0] > scores[1] > scores[2]


def test_ssim_rejects_an_unknown_variant() -> None:
    image = np.zeros((16, 16, 3))
    with pytest.raises(ValueError, match="variant"):
        ssim(image, image, "gaussian")


def test_released_ssim_of_a_full_size_image_is_fast() -> None:
    rng = np.random.default_rng(7)
    label = rng.random((1000, 1500, 3), dtype=np.float32)
    pred = 0.9 * label
    timings = []
    for _ in range(2):
        start = time.perf_counter()
        ssim(pred, label)
        timings.append(time.perf_counter() - start)
    assert min(timings) < 1.0


# --- Inputs -------------------------------------------------------------------------------

def test_tensors_in_network_layout_give_the_numpy_results() -> None:
    rng = np.random.default_rng(8)
    label = smooth_image(rng, (20, 24, 3))
    pred = noisy(rng, label, 0.05)
    as_tensor = lambda image: torch.from_numpy(image).permute(2, 0, 1)[None].float()  # noqa: E731
    from_tensors = compute_metrics(as_tensor(pred), as_tensor(label), with_pu21=False)
    from_arrays = compute_metrics(pred.astype(np.float32), label.astype(np.float32), with_pu21=False)
    assert from_tensors == pytest.approx(from_arrays, abs=1e-12)


def test_mismatched_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="shape"):
        psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))


# --- compute_metrics ----------------------------------------------------------------------

def test_compute_metrics_core_columns() -> None:
    rng = np.random.default_rng(9)
    label = smooth_image(rng, (32, 32, 3))
    good, bad = noisy(rng, label, 0.01), noisy(rng, label, 0.1)
    good_row = compute_metrics(good, label, with_pu21=False)
    bad_row = compute_metrics(bad, label, with_pu21=False)
    assert set(good_row) == CORE_KEYS
    assert good_row["psnr_l"] == pytest.approx(psnr(good, label))
    assert good_row["ssim_mu"] == pytest.approx(ssim(mu_tonemap(good), mu_tonemap(label)))
    assert all(good_row[key] > bad_row[key] for key in CORE_KEYS)
    matlab_row = compute_metrics(good, label, ssim_variant="matlab", with_pu21=False)
    assert matlab_row["ssim_l"] == pytest.approx(ssim(good, label, "matlab"))


@pytest.fixture
def fresh_cvvdp_caches():
    """Forget the cached cvvdp import (and objects built from it) before and after a test."""
    caches = (metrics.load_pycvvdp, metrics._pu21_encoder, metrics._cvvdp_metric)
    for cache in caches:
        cache.cache_clear()
    yield
    for cache in caches:
        cache.cache_clear()


def test_without_cvvdp_the_optional_columns_are_skipped_with_one_note(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fresh_cvvdp_caches: None
) -> None:
    monkeypatch.setitem(sys.modules, "pycvvdp", None)  # makes `import pycvvdp` fail
    rng = np.random.default_rng(10)
    label = smooth_image(rng, (16, 16, 3))
    with caplog.at_level(logging.WARNING, logger="evaluation.metrics"):
        first = compute_metrics(label, label, with_cvvdp=True)
        second = compute_metrics(label, label, with_cvvdp=True)
    assert set(first) == set(second) == CORE_KEYS
    notes = [record for record in caplog.records if "cvvdp is not installed" in record.getMessage()]
    assert len(notes) == 1
    assert metrics.pu21_encode(np.ones(3)) is None
    assert metrics.cvvdp_jod(label, label) is None


# --- PU21 and ColorVideoVDP (optional) ----------------------------------------------------

def test_pu21_metrics_use_luminance_and_the_peak_code_value_as_range() -> None:
    pycvvdp = pytest.importorskip("pycvvdp")
    rng = np.random.default_rng(11)
    label = smooth_image(rng, (24, 28, 3))
    pred = noisy(rng, label, 0.05)
    peak = 1000.0
    pu = pycvvdp.utils.PU()
    weights = np.array([0.2126729, 0.7151522, 0.0721750])
    pred_pu = pu.encode((pred @ weights) * peak)
    label_pu = pu.encode((label @ weights) * peak)
    pu_peak = pu.encode(np.array(peak))
    expected_psnr = 20 * math.log10(pu_peak / math.sqrt(np.mean((pred_pu - label_pu) ** 2)))
    expected_ssim = ssim((pred_pu / pu_peak)[..., None], (label_pu / pu_peak)[..., None])

    row = compute_metrics(pred, label, peak_luminance=peak)
    assert row["pu_psnr"] == pytest.approx(expected_psnr, abs=1e-9)
    assert row["pu_ssim"] == pytest.approx(expected_ssim, abs=1e-9)
    assert compute_metrics(pred, label, peak_luminance=100.0)["pu_psnr"] != pytest.approx(row["pu_psnr"], abs=0.1)

    identical = compute_metrics(label, label)
    assert identical["pu_psnr"] == math.inf
    assert identical["pu_ssim"] == pytest.approx(1.0, abs=1e-12)


def test_cvvdp_column_only_on_request_and_lower_for_visible_noise() -> None:
    pytest.importorskip("pycvvdp")
    rng = np.random.default_rng(12)
    label = smooth_image(rng, (64, 96, 3))
    assert "cvvdp" not in compute_metrics(label, label)
    assert metrics.cvvdp_jod(label, label) == pytest.approx(10.0, abs=1e-4)
    row = compute_metrics(noisy(rng, label, 0.1), label, with_cvvdp=True)
    assert 0.0 < row["cvvdp"] < 9.5


# --- Accumulation -------------------------------------------------------------------------

def make_table() -> MetricTable:
    table = MetricTable()
    table.add("001", {"psnr_mu": 40.0, "ssim_mu": 0.99})
    table.add("002", {"psnr_mu": 42.0, "ssim_mu": 0.97, "cvvdp": 9.5})
    table.add("003", {"psnr_mu": 44.0, "ssim_mu": 0.98})
    return table


def test_metric_table_means_are_plain_means_over_scenes() -> None:
    table = make_table()
    assert len(table) == 3
    assert table.columns() == ["psnr_mu", "ssim_mu", "cvvdp"]
    assert table.means() == pytest.approx({"psnr_mu": 42.0, "ssim_mu": 0.98, "cvvdp": 9.5})
    assert mean_metrics(table.rows) == table.means()


def test_metric_table_writes_csv_and_json(tmp_path) -> None:
    table = make_table()
    table.write_csv(tmp_path / "out" / "scenes.csv")
    table.write_json(tmp_path / "out" / "summary.json", ssim_variant="released")

    with (tmp_path / "out" / "scenes.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["scene"] for row in rows] == ["001", "002", "003"]
    assert float(rows[1]["psnr_mu"]) == 42.0
    assert rows[0]["cvvdp"] == "" and float(rows[1]["cvvdp"]) == 9.5

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["num_scenes"] == 3
    assert summary["ssim_variant"] == "released"
    assert summary["means"]["psnr_mu"] == pytest.approx(42.0)


def test_format_table_lists_scenes_and_the_mean() -> None:
    text = format_table(make_table().rows)
    lines = text.splitlines()
    assert lines[0].split() == ["scene", "psnr_mu", "ssim_mu", "cvvdp"]
    assert lines[2].split() == ["001", "40.00", "0.9900", "-"]
    assert lines[3].split() == ["002", "42.00", "0.9700", "9.500"]
    assert lines[-1].split() == ["mean", "42.00", "0.9800", "9.500"]
    assert "mean" not in format_table(make_table().rows, with_mean=False)


def test_loading_cvvdp_leaves_the_extension_builders_log_level_alone_and_quiet(run_python) -> None:
    """pycvvdp imports torch's extension builder, which warns about a missing CUDA toolkit on
    CPU-only machines; loading the optional metrics must not print that, nor change its level."""
    if importlib.util.find_spec("pycvvdp") is None:
        pytest.skip("the optional cvvdp package is not installed")

    script = (
        "import logging\n"
        "from evaluation.metrics import load_pycvvdp\n"
        "log = logging.getLogger('torch.utils.cpp_extension')\n"
        "log.setLevel(logging.INFO)\n"
        "assert load_pycvvdp() is not None\n"
        "assert log.level == logging.INFO\n"
    )
    done = run_python(script)
    assert done.returncode == 0, done.stderr
    assert "CUDA" not in done.stderr, done.stderr
