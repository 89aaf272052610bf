"""The resume policy in one function: which checkpoint a run starts from, what it restores and
at which epoch it begins."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.checkpoint import save_model
from models.registry import smnet_tiny
from training.options import parse_args
from training.resume import InterruptedEpoch, plan_start
from utils.cli import UsageError


def args_for(phase: int, tmp_path: Path, *extra: str):
    return parse_args(phase, ["--dataset_dir", str(tmp_path), "--logdir", str(tmp_path / "run"),
                              "--preset", "tiny", *extra])


def training_checkpoint(path: Path, epoch: int, **extra) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(path, smnet_tiny(), epoch=epoch, optimizer={"state": {}, "param_groups": []}, **extra)
    return path


def test_a_new_run_starts_at_its_phase_first_epoch(tmp_path):
    start = plan_start(args_for(1, tmp_path), tmp_path / "run")
    assert (start.epoch, start.source, start.restore) == (1, None, False)
    phase2 = plan_start(args_for(2, tmp_path), tmp_path / "run")
    assert phase2.epoch == 7 and any("WARNING: phase 2 without --resume" in n for n in phase2.notes)


def test_the_run_folder_last_checkpoint_comes_before_resume(tmp_path):
    last = training_checkpoint(tmp_path / "run" / "last.pth", epoch=3)
    other = training_checkpoint(tmp_path / "other" / "last.pth", epoch=5)
    start = plan_start(args_for(1, tmp_path, "--resume", str(other)), tmp_path / "run")
    assert (start.source, start.epoch, start.restore) == (last, 4, True)
    assert any("continuing this run from it instead of --resume" in n for n in start.notes)
    restarted = plan_start(args_for(1, tmp_path, "--resume", str(other.parent), "--restart"), tmp_path / "run")
    assert (restarted.source, restarted.epoch) == (other, 6)  # a run folder means its last.pth


def test_weights_only_starts(tmp_path):
    source = training_checkpoint(tmp_path / "src" / "last.pth", epoch=5)
    freeze = plan_start(args_for(1, tmp_path, "--resume", str(source), "--is_freeze"), tmp_path / "run")
    assert (freeze.epoch, freeze.restore) == (1, False)
    tuned = plan_start(args_for(1, tmp_path, "--finetune_from", str(source)), tmp_path / "run")
    assert (tuned.source, tuned.epoch, tuned.restore) == (source, 1, False)
    assert tuned.checkpoint is not None and "state_dict" in tuned.checkpoint


def test_phase2_refuses_a_phase1_start_and_continues_a_preempted_epoch(tmp_path):
    early = training_checkpoint(tmp_path / "p1" / "last.pth", epoch=2)
    with pytest.raises(UsageError, match="belongs to phase 1"):
        plan_start(args_for(2, tmp_path, "--resume", str(early), "--start_epoch", "3"), tmp_path / "run")
    stopped = InterruptedEpoch(8, 4, {"loss": 1.0}, "SIGTERM", [])
    training_checkpoint(tmp_path / "run" / "last.pth", epoch=7, interrupted=stopped.to_dict())
    start = plan_start(args_for(2, tmp_path), tmp_path / "run")
    assert start.epoch == 8 and start.interrupted == stopped
    later = plan_start(args_for(2, tmp_path, "--start_epoch", "9"), tmp_path / "run")
    assert later.interrupted is None and any("does not continue that epoch" in n for n in later.notes)
    assert torch.load(tmp_path / "run" / "last.pth", weights_only=True)["epoch"] == 7  # nothing written
