"""Tests of the metrics by region (evaluation/regions.py) and of ``test.py --region_metrics``."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.preprocess import build_network_input, full_image_sample
from datasets.synthetic import make_dataset
from evaluation import cli as script
from evaluation.metrics import load_pycvvdp, psnr
from evaluation.regions import (
    CLIPPED,
    MOVING,
    REGION_METRICS,
    REGIONS,
    STATIC,
    RegionSettings,
    format_region_means,
    region_columns,
    region_map,
    region_means,
    region_metrics,
    region_table,
)
from utils.image_io import read_ldr
from utils.tonemap import GAMMA, mu_tonemap

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "tiny_n3_32x32.pth"
STOPS = (0.0, 2.0, 4.0)
EXACT = RegionSettings(clip_dilation=0, motion_dilation=0, align_radius=0, median_size=1)
"""No dilation, no shift tolerance, no median filter: the masks are exactly the constructed patches."""

SHAPE = (40, 48)
CLIPPED_PATCH = (slice(4, 12), slice(4, 14))  # far too bright for the reference exposure
CRUSHED_PATCH = (slice(28, 36), slice(4, 12))  # far too dark for it
MOVING_PATCH = (slice(16, 26), slice(24, 36))  # an object in the short exposure only
OVERLAP_PATCH = (slice(4, 12), slice(12, 20))  # moving, but partly inside the clipped patch


def expose(radiance: np.ndarray, stop: float) -> np.ndarray:
    """Noise-free camera: clip((radiance·t)**(1/2.2)) to [0, 1]."""
    return np.clip((radiance * 2.0**stop) ** (1.0 / GAMMA), 0.0, 1.0).astype(np.float32)


def constructed_scene() -> tuple[list[np.ndarray], np.ndarray]:
    """Three exposures and a label: a static background (well exposed in every frame), a clipped
    and a crushed patch of the reference, and an object seen only by the short exposure."""
    label = np.full((*SHAPE, 3), 0.01, dtype=np.float32)
    label[..., 1] = 0.012
    label[CLIPPED_PATCH] = 0.5
    label[CRUSHED_PATCH] = 1e-5
    ldrs = [expose(label, stop) for stop in STOPS]
    for patch in (MOVING_PATCH, OVERLAP_PATCH):
        ldrs[0][patch] = expose(np.full((1, 1, 3), 0.1, dtype=np.float32), STOPS[0])
    return ldrs, label


def patch_mask(*patches: tuple[slice, slice]) -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=bool)
    for patch in patches:
        mask[patch] = True
    return mask


def textured_radiance(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A smooth, textured radiance map, well exposed in the reference exposure of ``STOPS``."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    base = 0.02 + 0.015 * np.sin(xx / 3.0)[..., None] * np.cos(yy / 5.0)[..., None] * np.array([1.0, 0.8, 0.6])
    return (base * (1.0 + 0.05 * rng.random((*shape, 1)))).astype(np.float32)


# ---------------------------------------------------------------------------
# Region masks
# ---------------------------------------------------------------------------

def test_region_masks_are_the_constructed_patches() -> None:
    ldrs, label = constructed_scene()
    regions = region_map(ldrs, STOPS, label, EXACT)
    clipped = patch_mask(CLIPPED_PATCH, CRUSHED_PATCH)
    np.testing.assert_array_equal(regions == CLIPPED, clipped)
    np.testing.assert_array_equal(regions == MOVING, patch_mask(MOVING_PATCH, OVERLAP_PATCH) & ~clipped)
    np.testing.assert_array_equal(regions == STATIC, ~patch_mask(CLIPPED_PATCH, CRUSHED_PATCH, MOVING_PATCH,
                                                                 OVERLAP_PATCH))


def test_default_settings_dilate_the_patches_by_two_pixels() -> None:
    ldrs, label = constructed_scene()
    regions = region_map(ldrs, STOPS, label)
    clipped = regions == CLIPPED
    assert clipped[CLIPPED_PATCH].all() and clipped[CRUSHED_PATCH].all()
    # 2 pixels out from the middle of an edge still belong to the region, 3 pixels do not
    assert clipped[8, 4 - 2] and not clipped[8, 4 - 3]
    assert clipped[36 + 1, 8] and not clipped[36 + 2, 8]
    moving = regions == MOVING
    assert moving[MOVING_PATCH].all()
    assert moving[21, 36 + 1] and not moving[21, 36 + 2]
    assert moving[26 + 1, 30] and not moving[26 + 2, 30]
    grown = np.zeros(SHAPE, dtype=bool)
    for patch in (CLIPPED_PATCH, CRUSHED_PATCH, MOVING_PATCH, OVERLAP_PATCH):
        grown[patch[0].start - 2:patch[0].stop + 2, patch[1].start - 2:patch[1].stop + 2] = True
    assert (regions[~grown] == STATIC).all()


def test_noise_and_a_small_camera_shake_are_not_motion() -> None:
    rng = np.random.default_rng(0)
    height, width = SHAPE
    canvas = textured_radiance(rng, (height + 8, width + 8))
    label = canvas[4:4 + height, 4:4 + width]
    shifts = {0: (2, -1), 2: (-1, 2)}  # pixels (y, x) of the non-reference frames
    ldrs = []
    for index, stop in enumerate(STOPS):
        dy, dx = shifts.get(index, (0, 0))
        view = canvas[4 + dy:4 + dy + height, 4 + dx:4 + dx + width]
        ldrs.append(np.clip(expose(view, stop) + rng.normal(0.0, 0.002, view.shape), 0.0, 1.0).astype(np.float32))
    regions = region_map(ldrs, STOPS, label)
    assert (regions == STATIC).mean() > 0.99


# ---------------------------------------------------------------------------
# Metrics by region
# ---------------------------------------------------------------------------

def test_region_psnr_equals_a_hand_computation() -> None:
    label = np.array([[[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]],
                      [[0.0, 0.01, 0.02], [0.9, 0.8, 0.7]]])
    pred = label + np.array([[[0.1, 0.0, 0.0], [0.0, 0.0, 0.0]],
                             [[0.0, 0.0, 0.03], [0.0, -0.2, 0.0]]])
    regions = np.array([[CLIPPED, MOVING], [STATIC, STATIC]], dtype=np.uint8)
    table = region_metrics(pred, label, regions)

    def mu(x: float) -> float:
        return math.log(1 + 5000 * x) / math.log(5001)

    assert table["clipped"]["psnr_l"] == pytest.approx(20 * math.log10(1 / math.sqrt(0.1**2 / 3)))
    assert table["static"]["psnr_l"] == pytest.approx(20 * math.log10(1 / math.sqrt((0.03**2 + 0.2**2) / 6)))
    static_mu = [(mu(0.05) - mu(0.02)) ** 2, (mu(0.6) - mu(0.8)) ** 2]
    clipped_mu = (mu(0.2) - mu(0.1)) ** 2
    assert table["static"]["psnr_mu"] == pytest.approx(20 * math.log10(1 / math.sqrt(sum(static_mu) / 6)))
    assert table["clipped"]["psnr_mu"] == pytest.approx(20 * math.log10(1 / math.sqrt(clipped_mu / 3)))
    assert [table[r]["pixel_share"] for r in REGIONS] == [0.25, 0.25, 0.5]
    total = clipped_mu + sum(static_mu)
    assert table["clipped"]["error_share"] == pytest.approx(clipped_mu / total)
    assert table["static"]["error_share"] == pytest.approx(sum(static_mu) / total)
    # an exact region scores like an exact image does globally: infinite PSNR, no error
    assert table["moving"]["psnr_mu"] == math.inf == psnr(label, label)
    assert table["moving"]["psnr_l"] == math.inf and table["moving"]["error_share"] == 0.0


def test_region_psnr_weights_add_up_to_the_global_mse() -> None:
    rng = np.random.default_rng(1)
    label = rng.random((16, 20, 3)) * 0.5
    pred = np.clip(label + rng.normal(0.0, 0.02, label.shape), 0.0, 1.0)
    regions = rng.integers(0, len(REGIONS), size=label.shape[:2]).astype(np.uint8)
    table = region_metrics(pred, label, regions)
    for space, transform in (("psnr_l", lambda x: x), ("psnr_mu", mu_tonemap)):
        mse = sum(table[r]["pixel_share"] * 10 ** (-table[r][space] / 10) for r in REGIONS)
        assert -10 * math.log10(mse) == pytest.approx(psnr(transform(pred), transform(label)), abs=1e-9)
    assert sum(table[r]["error_share"] for r in REGIONS) == pytest.approx(1.0)


def test_empty_regions_are_nan_and_left_out_of_the_means() -> None:
    label = np.full((4, 4, 3), 0.3)
    first = np.full((4, 4), STATIC, dtype=np.uint8)
    first[0] = CLIPPED
    second = np.full((4, 4), STATIC, dtype=np.uint8)
    rows = []
    for regions, error in ((first, 0.01), (second, 0.03)):
        row = region_metrics(label + error, label, regions)
        rows.append({f"{r}_{m}": row[r][m] for r in REGIONS for m in REGION_METRICS})
    assert math.isnan(rows[1]["clipped_psnr_mu"]) and rows[1]["clipped_pixel_share"] == 0.0
    means = region_means(rows)
    assert means["clipped"]["num_scenes"] == 1 and means["moving"]["num_scenes"] == 0
    assert means["static"]["num_scenes"] == 2
    assert means["clipped"]["psnr_l"] == pytest.approx(40.0)
    assert means["static"]["psnr_l"] == pytest.approx((40.0 + 20 * math.log10(1 / 0.03)) / 2)
    assert math.isnan(means["moving"]["psnr_mu"])
    assert "clipped" in format_region_means({"network": means})
    exact = region_metrics(label, label, first)
    assert math.isnan(exact["static"]["error_share"]) and exact["static"]["psnr_mu"] == math.inf


def test_region_table_of_a_sample() -> None:
    ldrs, label = constructed_scene()
    sample = full_image_sample(torch.from_numpy(build_network_input(ldrs, STOPS)), STOPS, "constructed",
                               torch.zeros(label.shape[:2], dtype=torch.int64), torch.from_numpy(label).permute(2, 0, 1))
    prediction = torch.from_numpy(label).permute(2, 0, 1).clone()
    prediction[:, MOVING_PATCH[0], MOVING_PATCH[1]] *= 1.5
    rows = region_table(prediction, sample, EXACT)
    assert [row["region"] for row in rows] == list(REGIONS)
    by_region = {row["region"]: row for row in rows}
    assert by_region["clipped"]["psnr_mu"] == math.inf and by_region["static"]["psnr_l"] == math.inf
    assert by_region["moving"]["error_share"] == pytest.approx(1.0)
    moving_pixels = int((region_map(ldrs, STOPS, label, EXACT) == MOVING).sum())
    mse = float(np.sum((0.5 * label[MOVING_PATCH].astype(np.float64)) ** 2)) / (3 * moving_pixels)
    assert by_region["moving"]["psnr_l"] == pytest.approx(-10 * math.log10(mse), rel=1e-5)
    assert by_region["moving"]["pixel_share"] == moving_pixels / (SHAPE[0] * SHAPE[1])
    columns = region_columns(prediction, sample, EXACT)
    assert list(columns) == [f"{r}_{m}" for r in REGIONS for m in REGION_METRICS]


# ---------------------------------------------------------------------------
# test.py --region_metrics
# ---------------------------------------------------------------------------

SIZE = (64, 96)
SCENES = ("scene_0001", "scene_0002")


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), num_train=0, num_test=len(SCENES), size=SIZE, seed=7)


def run(dataset_dir: Path, save_dir: Path, *options: str) -> int:
    return script.main(["--dataset_dir", str(dataset_dir), "--pretrained_model", str(FIXTURE),
                        "--save_dir", str(save_dir), "--no_progress", *options])


def read_csv(path: Path) -> tuple[list[str], dict[str, dict[str, float]]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = {row["scene"]: {k: float(v) for k, v in row.items() if k != "scene"} for row in reader}
        return list(reader.fieldnames or []), rows


def test_test_script_without_region_metrics_writes_todays_columns(dataset_dir: Path, tmp_path: Path) -> None:
    assert run(dataset_dir, tmp_path, "--side_by_side") == 0
    columns, _ = read_csv(tmp_path / "metrics.csv")
    pu21 = ["pu_psnr", "pu_ssim"] if load_pycvvdp() is not None else []
    assert columns == ["scene", "psnr_l", "psnr_mu", "ssim_l", "ssim_mu", *pu21]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "region_metrics" not in summary
    assert read_ldr(tmp_path / f"{SCENES[0]}_side_by_side.png").shape[1] == 4 * SIZE[1]


def test_test_script_with_region_metrics(dataset_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run(dataset_dir, tmp_path, "--region_metrics", "--baselines", "--side_by_side", "--no_pu21") == 0
    printed = capsys.readouterr().out
    assert "by region" in printed
    assert any(line.startswith("Debevec merge (OpenCV)") and "moving" in line for line in printed.splitlines())

    region_columns_expected = [f"{r}_{m}" for r in REGIONS for m in REGION_METRICS]
    columns, rows = read_csv(tmp_path / "metrics.csv")
    assert columns == ["scene", "psnr_l", "psnr_mu", "ssim_l", "ssim_mu", *region_columns_expected]
    for row in rows.values():
        assert sum(row[f"{r}_pixel_share"] for r in REGIONS) == pytest.approx(1.0)
        assert sum(row[f"{r}_error_share"] for r in REGIONS) == pytest.approx(1.0)
        for space in ("psnr_l", "psnr_mu"):  # the regions' MSEs, weighted by their shares, are the scene's
            mse = sum(row[f"{r}_pixel_share"] * 10 ** (-row[f"{r}_{space}"] / 10) for r in REGIONS
                      if row[f"{r}_pixel_share"] > 0)
            assert -10 * math.log10(mse) == pytest.approx(row[space], abs=1e-6)

    summary = json.loads((tmp_path / "summary.json").read_text())
    regions = summary["region_metrics"]
    assert regions["regions"] == list(REGIONS) and regions["settings"]["clip_high"] == 0.95
    for name in REGIONS:
        mean = regions["means"][name]
        assert set(mean) == {*REGION_METRICS, "num_scenes"}
        kept = [rows[s][f"{name}_psnr_mu"] for s in SCENES if not math.isnan(rows[s][f"{name}_psnr_mu"])]
        assert mean["num_scenes"] == len(kept)
        if kept:
            assert mean["psnr_mu"] == pytest.approx(np.mean(kept))
    assert set(regions["baselines"]) == {"reference exposure", "Debevec merge (OpenCV)"}
    assert set(summary["means"]) == {"psnr_l", "psnr_mu", "ssim_l", "ssim_mu"}  # the global means are unchanged

    baseline_columns, _ = read_csv(tmp_path / "baselines" / "debevec" / "metrics.csv")
    assert baseline_columns[-len(region_columns_expected):] == region_columns_expected
    assert read_ldr(tmp_path / f"{SCENES[0]}_side_by_side.png").shape[1] == 5 * SIZE[1]
