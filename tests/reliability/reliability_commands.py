"""The entry points as the bad-input tests call them, with tiny settings, and the check of the one
``error:`` line they must print."""
from __future__ import annotations

from pathlib import Path

from evaluation import cli as test_cli
from training.trainer import main as train_main

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "pretrain_model" / "demo_smnet.pth"


def train(dataset: Path, logdir: Path, *extra: str, phase: int = 1) -> int:
    """Two epochs of one step each on the tiny network (phase 1 is epoch 1)."""
    return train_main(phase, ["--preset", "tiny", "--dataset_dir", str(dataset), "--logdir", str(logdir),
                              "--epochs", "2", "--phase1_epochs", "1", "--max_steps", "1", "--num_workers", "0",
                              "--train_patch_size", "32", "--no_progress", *extra])


def evaluate(dataset: Path, save_dir: Path, *extra: str, checkpoint: Path = DEMO) -> int:
    """test.py with the demo checkpoint (or ``checkpoint``), no PU21 columns."""
    return test_cli.main(["--dataset_dir", str(dataset), "--pretrained_model", str(checkpoint),
                          "--save_dir", str(save_dir), "--no_progress", "--no_pu21", *map(str, extra)])


def one_error_line(capsys, *words: str) -> str:
    """The single ``error:`` line on stderr (no traceback anywhere on stderr), checked to
    contain ``words``."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]
