"""End-to-end runs of the evaluation script ``test.py`` on a small generated test split, checked
against an independent forward pass, independent baseline merges and the files written."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from datasets.preprocess import build_network_input
from datasets.synthetic import make_dataset
from models.checkpoint import load_model
from models.inference import reconstruct, reconstruct_tiled
from evaluation import cli as script
from evaluation.baselines import debevec_baseline, reference_exposure_baseline
from utils.image_io import read_hdr, read_ldr
from evaluation.metrics import psnr_l, psnr_mu, ssim_l, ssim_mu

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "tiny_n3_32x32.pth"
SIZE = (64, 96)
SCENES = ("scene_0001", "scene_0002")
TIGHT_DB = 1e-6  # same weights, same input, same protocol: the numbers must agree to rounding
RGBE_RELATIVE = 2.0**-7  # Radiance RGBE: 8-bit mantissas under an exponent shared by the pixel




@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), num_train=0, num_test=len(SCENES), size=SIZE, seed=7)


def run(dataset_dir: Path, save_dir: Path, *options: str, checkpoint: Path = FIXTURE) -> int:
    return script.main(["--dataset_dir", str(dataset_dir), "--pretrained_model", str(checkpoint),
                        "--save_dir", str(save_dir), "--no_progress", *options])


def read_csv(path: Path, key: str) -> dict[str, dict[str, float]]:
    with path.open(newline="") as handle:
        return {row[key]: {k: float(v) for k, v in row.items() if k != key} for row in csv.DictReader(handle)}


def read_scene(scene_dir: Path) -> dict[str, Any]:
    """A scene decoded straight from its files: LDRs, stops, label and the network input."""
    ldrs = [read_ldr(p) for p in sorted(scene_dir.glob("*.tif"))]
    stops = [float(line) for line in (scene_dir / "exposure.txt").read_text().split()]
    label = read_hdr(scene_dir / "HDRImg.hdr")
    inputs = torch.from_numpy(build_network_input(ldrs, stops)).unsqueeze(0)
    return {"ldrs": ldrs, "stops": stops, "label": label, "input": inputs}


def scene_metrics(prediction: np.ndarray, label: np.ndarray, variant: str = "released") -> dict[str, float]:
    return {"psnr_l": psnr_l(prediction, label), "psnr_mu": psnr_mu(prediction, label),
            "ssim_l": ssim_l(prediction, label, variant), "ssim_mu": ssim_mu(prediction, label, variant)}


def as_hwc(prediction: torch.Tensor) -> np.ndarray:
    return prediction[0].permute(1, 2, 0).numpy()


def assert_metrics_equal(written: dict[str, float], expected: dict[str, float], tolerance: float = TIGHT_DB) -> None:
    for column, value in expected.items():
        assert written[column] == pytest.approx(value, abs=tolerance), column


@pytest.fixture(scope="module")
def scenes(dataset_dir: Path) -> dict[str, dict[str, Any]]:
    return {name: read_scene(dataset_dir / "Test" / name) for name in SCENES}


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return load_model(FIXTURE).eval()


@pytest.fixture(scope="module")
def one_pass(scenes: dict[str, dict[str, Any]], model: nn.Module) -> dict[str, np.ndarray]:
    """The released protocol, computed here: pad to 128, one forward pass, clamp, crop."""
    return {name: as_hwc(reconstruct(model, scene["input"], 128)) for name, scene in scenes.items()}


@pytest.fixture(scope="module")
def default_run(dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    save_dir = tmp_path_factory.mktemp("default")
    assert run(dataset_dir, save_dir, "--baselines", "--side_by_side") == 0
    return save_dir


# ---------------------------------------------------------------------------
# The default run: released protocol, baselines, side-by-side previews
# ---------------------------------------------------------------------------

def test_default_run_writes_images_metrics_and_summary(default_run: Path) -> None:
    for name in SCENES:
        assert read_hdr(default_run / f"{name}.hdr").shape == (*SIZE, 3)
        assert read_ldr(default_run / f"{name}.png").shape == (*SIZE, 3)
        panels = read_ldr(default_run / f"{name}_side_by_side.png")
        assert panels.shape[1] == 4 * SIZE[1] and panels.shape[0] >= SIZE[0]
    assert sorted(p.name for p in default_run.glob("*.hdr")) == [f"{n}.hdr" for n in SCENES]

    rows = read_csv(default_run / "metrics.csv", "scene")
    assert sorted(rows) == list(SCENES)
    assert {"psnr_l", "psnr_mu", "ssim_l", "ssim_mu"} <= set(rows[SCENES[0]])

    summary = json.loads((default_run / "summary.json").read_text())
    assert summary["checkpoint"] == str(FIXTURE)
    assert summary["metric_settings"]["ssim_variant"] == "released"
    assert summary["num_scenes"] == len(SCENES)
    protocol = summary["protocol"]
    assert protocol["mode"].startswith("one pass") and protocol["pad_multiple"] == 128
    assert protocol["tile"] == 0 and protocol["clamp"] == [0.0, 1.0] and protocol["amp"] == "fp32"
    assert set(summary["seconds_per_scene"]) == set(SCENES)
    for column, mean in summary["means"].items():
        assert mean == pytest.approx(np.mean([rows[n][column] for n in SCENES]), abs=1e-9), column


def test_metrics_equal_an_independent_forward_pass(default_run: Path, scenes: dict[str, dict[str, Any]],
                                                   one_pass: dict[str, np.ndarray]) -> None:
    rows = read_csv(default_run / "metrics.csv", "scene")
    for name, scene in scenes.items():
        assert_metrics_equal(rows[name], scene_metrics(one_pass[name], scene["label"]))


def test_saved_hdr_is_the_prediction_within_rgbe_precision(default_run: Path, scenes: dict[str, dict[str, Any]],
                                                           one_pass: dict[str, np.ndarray]) -> None:
    rows = read_csv(default_run / "metrics.csv", "scene")
    for name, prediction in one_pass.items():
        saved = read_hdr(default_run / f"{name}.hdr")
        pixel_max = prediction.max(axis=2, keepdims=True)
        assert (np.abs(saved - prediction) <= pixel_max * RGBE_RELATIVE + 1e-7).all()
        # Metrics recomputed from the file itself differ by RGBE rounding only.
        assert psnr_mu(saved, scenes[name]["label"]) == pytest.approx(rows[name]["psnr_mu"], abs=0.05)
        assert psnr_l(saved, scenes[name]["label"]) == pytest.approx(rows[name]["psnr_l"], abs=0.05)


def test_baselines_equal_direct_merges(default_run: Path, scenes: dict[str, dict[str, Any]]) -> None:
    table = read_csv(default_run / "baselines.csv", "method")
    assert list(table) == ["network", "reference exposure", "Debevec merge (OpenCV)"]
    network = read_csv(default_run / "metrics.csv", "scene")
    for column in ("psnr_l", "psnr_mu", "ssim_l", "ssim_mu"):
        assert table["network"][column] == pytest.approx(np.mean([network[n][column] for n in SCENES]), abs=1e-9)

    for title, merge, folder in (("reference exposure", reference_exposure_baseline, "reference"),
                                 ("Debevec merge (OpenCV)", debevec_baseline, "debevec")):
        per_scene = {name: scene_metrics(merge(scene["ldrs"], scene["stops"]), scene["label"])
                     for name, scene in scenes.items()}
        means = {column: float(np.mean([m[column] for m in per_scene.values()])) for column in per_scene[SCENES[0]]}
        assert_metrics_equal(table[title], means)
        written = read_csv(default_run / "baselines" / folder / "metrics.csv", "scene")
        for name in SCENES:
            assert_metrics_equal(written[name], per_scene[name])
            assert (default_run / "baselines" / folder / f"{name}.hdr").is_file()
            assert (default_run / "baselines" / folder / f"{name}_side_by_side.png").is_file()
        assert table[title]["seconds"] >= 0

    summary = json.loads((default_run / "summary.json").read_text())
    assert set(summary["baselines"]) == {"reference exposure", "Debevec merge (OpenCV)"}


# ---------------------------------------------------------------------------
# Other modes
# ---------------------------------------------------------------------------

def test_a_checkpoint_folder_is_evaluated_into_one_folder_each(dataset_dir: Path, tmp_path: Path,
                                                               scenes: dict[str, dict[str, Any]],
                                                               one_pass: dict[str, np.ndarray]) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name in ("first.pth", "second.pth"):
        shutil.copy(FIXTURE, folder / name)
    (folder / "notes.txt").write_text("not a checkpoint")
    save_dir = tmp_path / "out"
    assert run(dataset_dir, save_dir, "--ssim_variant", "matlab", "--no_pu21", checkpoint=folder) == 0

    assert sorted(p.name for p in save_dir.iterdir() if p.is_dir()) == ["first", "second"]
    for stem in ("first", "second"):
        out = save_dir / stem
        summary = json.loads((out / "summary.json").read_text())
        assert summary["checkpoint"] == str((folder / f"{stem}.pth").resolve())
        assert summary["metric_settings"]["ssim_variant"] == "matlab"
        rows = read_csv(out / "metrics.csv", "scene")
        assert "pu_psnr" not in rows[SCENES[0]]
        for name, scene in scenes.items():
            assert (out / f"{name}.hdr").is_file() and (out / f"{name}.png").is_file()
            assert not (out / f"{name}_side_by_side.png").exists()
            assert_metrics_equal(rows[name], scene_metrics(one_pass[name], scene["label"], "matlab"))
    assert list(read_csv(save_dir / "checkpoints.csv", "method")) == ["first.pth", "second.pth"]


def test_tiled_mode_writes_outputs_and_matches_tiled_inference(dataset_dir: Path, tmp_path: Path,
                                                               scenes: dict[str, dict[str, Any]],
                                                               model: nn.Module) -> None:
    save_dir = tmp_path / "tiled"
    assert run(dataset_dir, save_dir, "--tile", "64", "--tile_overlap", "16", "--pad_multiple", "32",
               "--no_pu21") == 0
    summary = json.loads((save_dir / "summary.json").read_text())
    protocol = summary["protocol"]
    assert protocol["mode"] == "tiled"
    assert (protocol["tile"], protocol["tile_overlap"], protocol["pad_multiple"]) == (64, 16, 32)
    rows = read_csv(save_dir / "metrics.csv", "scene")
    for name, scene in scenes.items():
        assert (save_dir / f"{name}.hdr").is_file() and (save_dir / f"{name}.png").is_file()
        expected = as_hwc(reconstruct_tiled(model, scene["input"], 64, 16, multiple=32))
        assert_metrics_equal(rows[name], scene_metrics(expected, scene["label"]))


def test_no_save_images_still_writes_the_metrics(dataset_dir: Path, tmp_path: Path) -> None:
    save_dir = tmp_path / "metrics_only"
    assert run(dataset_dir, save_dir, "--no_save_images", "--side_by_side", "--baselines", "--no_pu21") == 0
    written = [p for p in save_dir.rglob("*") if p.suffix in (".hdr", ".png")]
    assert written == []
    assert sorted(read_csv(save_dir / "metrics.csv", "scene")) == list(SCENES)
    assert (save_dir / "summary.json").is_file() and (save_dir / "baselines.csv").is_file()


# ---------------------------------------------------------------------------
# Unusable checkpoints: a clear message, no traceback, a failing exit code
# ---------------------------------------------------------------------------

def assert_clean_failure(code: int, capsys: pytest.CaptureFixture[str], *phrases: str) -> str:
    err = capsys.readouterr().err
    assert code != 0
    assert "Traceback" not in err
    for phrase in phrases:
        assert phrase in err
    return err


def test_missing_checkpoint_is_a_clear_error(dataset_dir: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "absent.pth"
    code = run(dataset_dir, tmp_path / "out", checkpoint=missing)
    assert_clean_failure(code, capsys, str(missing), "no such checkpoint file or folder")
    assert not (tmp_path / "out" / "metrics.csv").exists()


def test_empty_checkpoint_folder_is_a_clear_error(dataset_dir: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no weights here")
    code = run(dataset_dir, tmp_path / "out", checkpoint=empty)
    assert_clean_failure(code, capsys, str(empty), "holds no checkpoint files")


def test_checkpoint_of_another_network_is_a_clear_error(dataset_dir: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.pth"
    torch.save({"state_dict": nn.Sequential(nn.Conv2d(18, 8, 3), nn.Conv2d(8, 3, 1)).state_dict()}, other)
    code = run(dataset_dir, tmp_path / "out", checkpoint=other)
    assert_clean_failure(code, capsys, str(other), "not an SMNet state dict")
    assert not (tmp_path / "out" / "metrics.csv").exists()


def test_a_bad_checkpoint_in_a_folder_fails_the_run_but_not_the_others(dataset_dir: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    shutil.copy(FIXTURE, folder / "good.pth")
    (folder / "broken.pth").write_bytes(b"these bytes are not a checkpoint")
    save_dir = tmp_path / "out"
    code = run(dataset_dir, save_dir, "--no_pu21", "--no_save_images", checkpoint=folder)
    err = assert_clean_failure(code, capsys, str(folder / "broken.pth"), "could not be loaded")
    assert "good.pth" not in err
    assert (save_dir / "good" / "metrics.csv").is_file()
    assert not (save_dir / "broken").exists()


# ---------------------------------------------------------------------------
# Scenes without a label (Sen, Tursun, a user's own captures)
# ---------------------------------------------------------------------------

def test_unlabelled_scenes_are_reconstructed_and_left_out_of_the_metrics(dataset_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(dataset_dir, data)
    unlabelled = sorted((data / "Test").iterdir())[0]
    (unlabelled / "HDRImg.hdr").unlink()
    save_dir = tmp_path / "out"
    assert run(data, save_dir, "--baselines", "--side_by_side") == 0
    for name in SCENES:
        assert (save_dir / f"{name}.hdr").is_file() and (save_dir / f"{name}.png").is_file()
    assert not (save_dir / f"{unlabelled.name}_side_by_side.png").exists()
    labelled = [name for name in SCENES if name != unlabelled.name]
    assert list(read_csv(save_dir / "metrics.csv", "scene")) == labelled
    summary = json.loads((save_dir / "summary.json").read_text())
    assert summary["num_scenes"] == 1 and summary["num_reconstructed"] == 2
    assert summary["num_unlabelled"] == 1 and summary["unlabelled_scenes"] == [unlabelled.name]
    assert "1 of 2 scenes have no label" in capsys.readouterr().out


def test_a_split_without_any_label_still_writes_every_reconstruction(dataset_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(dataset_dir, data)
    for label in (data / "Test").glob("*/HDRImg.hdr"):
        label.unlink()
    save_dir = tmp_path / "out"
    assert run(data, save_dir) == 0
    assert sorted(p.stem for p in save_dir.glob("*.hdr")) == list(SCENES)
    summary = json.loads((save_dir / "summary.json").read_text())
    assert summary["num_scenes"] == 0 and summary["num_unlabelled"] == 2 and summary["means"] == {}
