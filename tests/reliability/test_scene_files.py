"""Scene files the readers refuse or must not be fooled by: segment maps with IDs that cannot be right, a
rewritten file the cache must notice, sparse IDs near the bound."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_commands import train

from datasets import SceneError, SceneReader, read_segments
from datasets.scene import MAX_SEGMENT_ID, SceneLayout

# --- segment maps ---------------------------------------------------------------------------------

@pytest.mark.parametrize("values, words", [
    (np.full((4, 4, 1), 1e9, np.float32), ["0 to 16777215"]),
    (np.full((4, 4, 1), -1, np.float32), ["0 to 16777215"]),
    (np.full((4, 4, 1), 1.5, np.float32), ["integer"]),
    (np.full((4, 4, 1), np.nan, np.float32), ["NaN"]),
    (np.full((4, 4, 1), True), ["bool"]),
])
def test_segment_ids_are_validated_on_load(tmp_path, values, words):
    path = tmp_path / "scene" / "masks.npy"
    path.parent.mkdir()
    np.save(path, values)
    with pytest.raises(SceneError) as raised:
        read_segments(path)
    assert str(path) in str(raised.value) and all(w in str(raised.value) for w in words)
    assert read_segments_ok(tmp_path, MAX_SEGMENT_ID).max() == MAX_SEGMENT_ID


def read_segments_ok(tmp_path: Path, value: int) -> np.ndarray:
    path = tmp_path / "ok.npy"
    np.save(path, np.full((2, 2, 1), value, np.float32))
    return read_segments(path)


def test_huge_segment_ids_stop_training_before_any_allocation(dataset, tmp_path, error_line):
    np.save(next((dataset / "Training").iterdir()) / "masks.npy", np.full((48, 64, 1), 1e9, np.float32))
    assert train(dataset, tmp_path / "run") == 2
    error_line("masks.npy", "16777215")



# --- the decoded-scene cache ----------------------------------------------------------------------

def test_the_cache_never_serves_a_rewritten_file(dataset):
    """Same size, the old modification time put back: the cache still sees the new content."""
    scene = next((dataset / "Test").iterdir())
    exposures = scene / "exposure.txt"
    before = SceneReader(SceneLayout(), "npy").load(scene)
    info = exposures.stat()
    text = exposures.read_text()
    assert text.split() == ["0", "2", "4"]
    rewritten = text.replace("4", "5")  # same size, still sorted
    time.sleep(0.01)
    exposures.write_text(rewritten)
    os.utime(exposures, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert exposures.stat().st_size == info.st_size and exposures.stat().st_mtime_ns == info.st_mtime_ns
    after = SceneReader(SceneLayout(), "npy").load(scene)
    assert after.exposures[-1] == before.exposures[-1] + 1 == 5


def test_sparse_large_segment_ids_train_with_tables_of_the_ids_in_use(dataset, tmp_path):
    """IDs near the 2**24 bound cost no more memory than 0..n-1: the tables hold the IDs in use."""
    from training.options import parse_args
    from training.trainer import Trainer

    for offset, scene in enumerate(sorted((dataset / "Training").iterdir())):
        segments = read_segments(scene / "masks.npy")
        np.save(scene / "masks.npy", (segments * 1_000_000 + offset).astype(np.float32)[..., None])
    trainer = Trainer(parse_args(2, ["--preset", "tiny", "--dataset_dir", str(dataset), "--logdir", str(tmp_path / "r"),
                                     "--phase1_epochs", "0", "--epochs", "1", "--max_steps", "1", "--num_workers", "0",
                                     "--train_patch_size", "32", "--no_progress", "--test_path", "none"]))
    assert trainer.tables.num_ids < 100 and int(trainer.tables.ids.max()) > 1_000_000
    trainer.run()
    assert not torch.all(trainer.tables.weight == 1)  # the guided update found its segments
