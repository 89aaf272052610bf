"""``python -m models.checkpoint export``: a source equal to its destination is refused whatever
the options say, and weights that are not numbers are never passed on."""
from __future__ import annotations

import os

import pytest
import torch

from models import checkpoint as checkpoint_module
from models.checkpoint import save_model
from models.smnet import SMNet


@pytest.fixture
def training_checkpoint(tmp_path):
    path = tmp_path / "runs" / "last.pth"
    save_model(path, SMNet(embed_dim=24, depths=[1], num_heads=[2]), optimizer={"state": {}, "param_groups": []})
    return path


@pytest.mark.parametrize("how", ["same path", "through a symlink", "hard link", "dotted path"])
def test_export_onto_its_own_source_is_refused_even_with_overwrite(training_checkpoint, error_line, checksums, how):
    folder = training_checkpoint.parent
    target = {"same path": training_checkpoint, "dotted path": folder / "." / "last.pth",
              "through a symlink": folder / "alias.pth", "hard link": folder / "linked.pth"}[how]
    if how == "through a symlink":
        os.symlink(training_checkpoint, target)
    elif how == "hard link":
        os.link(training_checkpoint, target)
    before = checksums(folder)
    assert checkpoint_module.main(["export", str(training_checkpoint), str(target), "--overwrite"]) == 2
    error_line("refusing to write", str(target))
    before.assert_unchanged()
    assert "optimizer" in torch.load(training_checkpoint, weights_only=True)


def test_export_of_non_finite_weights_is_refused_naming_the_tensor(training_checkpoint, tmp_path, error_line):
    data = torch.load(training_checkpoint, weights_only=True)
    data["state_dict"]["conv_first.0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(data, training_checkpoint)
    assert checkpoint_module.main(["export", str(training_checkpoint), str(tmp_path / "small.pth")]) == 1
    error_line("conv_first.0.weight", "NaN")
    assert not (tmp_path / "small.pth").exists()


def test_export_to_a_folder_or_over_a_file_is_one_line(tmp_path, error_line):
    save_model(tmp_path / "m.pth", SMNet(embed_dim=24, depths=[1], num_heads=[2]))
    assert checkpoint_module.main(["export", str(tmp_path / "m.pth"), str(tmp_path)]) == 2
    error_line("is a folder")
    (tmp_path / "kept.pth").write_bytes(b"an earlier result")
    assert checkpoint_module.main(["export", str(tmp_path / "m.pth"), str(tmp_path / "kept.pth")]) == 2
    error_line("--overwrite")
    assert (tmp_path / "kept.pth").read_bytes() == b"an earlier result"
    assert checkpoint_module.main(["export", str(tmp_path / "m.pth"), str(tmp_path / "kept.pth"), "--overwrite"]) == 0
