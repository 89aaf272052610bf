"""The shipped demo checkpoint loads and merges exposures better than the classical baselines on
generated scenes it never saw."""
from __future__ import annotations

from pathlib import Path

import pytest

from datasets import HDRFullImageDataset
from datasets.synthetic import make_dataset
from models.checkpoint import load_model, read_checkpoint
from evaluation.evaluate import evaluate_baselines, evaluate_scenes

DEMO_CHECKPOINT = Path(__file__).resolve().parents[1] / "pretrain_model" / "demo_smnet.pth"


def test_demo_checkpoint_is_small_and_weights_only():
    data = read_checkpoint(DEMO_CHECKPOINT)
    assert set(data) >= {"state_dict", "config"}
    assert "optimizer" not in data and "rng" not in data
    assert DEMO_CHECKPOINT.stat().st_size < 2_000_000


def test_demo_checkpoint_beats_the_baselines_on_unseen_scenes(tmp_path):
    root = make_dataset(tmp_path / "fresh", num_train=0, num_test=2, size=(192, 256), seed=3)
    scenes = HDRFullImageDataset(root, "Test")
    network = evaluate_scenes(load_model(DEMO_CHECKPOINT), scenes, "cpu").table.means()["psnr_mu"]
    baselines = {name: result.table.means()["psnr_mu"] for name, result in evaluate_baselines(scenes).items()}
    assert network > max(baselines.values()), (network, baselines)


@pytest.mark.parametrize("exposures", [2, 3])
def test_demo_checkpoint_runs_on_other_exposure_counts(tmp_path, exposures):
    stops = {2: "0 3", 3: "0 2 4"}[exposures]
    root = make_dataset(tmp_path / "d", num_train=0, num_test=1, size=(64, 64), seed=4,
                        exposures=[float(s) for s in stops.split()])
    prediction_table = evaluate_scenes(load_model(DEMO_CHECKPOINT), HDRFullImageDataset(root, "Test"), "cpu").table
    assert len(prediction_table) == 1
