"""Shared fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest

from datasets.synthetic import make_dataset

SYNTHETIC_SIZE = (64, 80)


@pytest.fixture
def synthetic_dataset(tmp_path: Path) -> Path:
    """A small generated dataset in the benchmark layout: 3 Training and 2 Test scenes of 64×80."""
    return make_dataset(tmp_path / "synthetic", num_train=3, num_test=2, size=SYNTHETIC_SIZE, seed=0)
