"""The shipped demo checkpoint loads, is small, and merges real-radiance scenes it never saw."""
from __future__ import annotations

from pathlib import Path

import pytest

from datasets import HDRFullImageDataset
from datasets.real_scenes import make_real_dataset
from datasets.synthetic import make_dataset
from models.checkpoint import load_model, read_checkpoint
from evaluation.evaluate import evaluate_baselines, evaluate_scenes

DEMO_CHECKPOINT = Path(__file__).resolve().parents[2] / "pretrain_model" / "demo_smnet.pth"


def test_demo_checkpoint_is_small_and_weights_only():
    data = read_checkpoint(DEMO_CHECKPOINT)
    assert set(data) >= {"state_dict", "config"}
    assert "optimizer" not in data and "rng" not in data
    assert DEMO_CHECKPOINT.stat().st_size < 2_000_000


def test_demo_checkpoint_merges_real_scenes_it_never_saw(tmp_path):
    """Scenes cut from the held-out radiance maps: the network recovers the highlights the
    reference exposure clips (PSNR-l far above it) without the Debevec merge's ghosts (PSNR-μ
    far above it)."""
    root = tmp_path / "fresh"
    make_real_dataset(root, num_train=0, num_test=2, size=(192, 256), seed=3)
    scenes = HDRFullImageDataset(root, "Test")
    network = evaluate_scenes(load_model(DEMO_CHECKPOINT), scenes, "cpu").table.means()
    baselines = {name: result.table.means() for name, result in evaluate_baselines(scenes).items()}
    assert network["psnr_l"] > baselines["reference"]["psnr_l"] + 3.0, (network, baselines)
    assert network["psnr_mu"] > baselines["debevec"]["psnr_mu"] + 3.0, (network, baselines)


@pytest.mark.parametrize("exposures", [2, 3])
def test_demo_checkpoint_runs_on_other_exposure_counts(tmp_path, exposures):
    stops = {2: "0 3", 3: "0 2 4"}[exposures]
    root = make_dataset(tmp_path / "d", num_train=0, num_test=1, size=(64, 64), seed=4,
                        exposures=[float(s) for s in stops.split()])
    prediction_table = evaluate_scenes(load_model(DEMO_CHECKPOINT), HDRFullImageDataset(root, "Test"), "cpu").table
    assert len(prediction_table) == 1
