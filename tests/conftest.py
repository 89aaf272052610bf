"""Shared fixtures."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from datasets.synthetic import make_dataset

SYNTHETIC_SIZE = (64, 80)
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def synthetic_dataset(tmp_path: Path) -> Path:
    """A small generated dataset in the benchmark layout: 3 Training and 2 Test scenes of 64×80."""
    return make_dataset(tmp_path / "synthetic", num_train=3, num_test=2, size=SYNTHETIC_SIZE, seed=0)


@pytest.fixture
def run_python() -> Callable[[str], subprocess.CompletedProcess]:
    """Run a Python snippet in a fresh interpreter at the repository root (for what a process
    prints or sets once: warnings, log levels, memory); returns the finished process."""
    def run(script: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=False)
    return run
