"""Training runs against unusable options and faults: one line, the right exit code, earlier
checkpoints intact."""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
import torch
from reliability_commands import train

# --- training runs --------------------------------------------------------------------------------

def test_restart_moves_the_previous_run_aside(small_dataset, tmp_path):
    logdir = tmp_path / "run"
    assert train(small_dataset, logdir) == 0
    best = (logdir / "best.pth").read_bytes()
    assert train(small_dataset, logdir, "--restart") == 0
    replaced = list(logdir.glob("replaced_*"))
    assert len(replaced) == 1
    assert (replaced[0] / "best.pth").read_bytes() == best and (replaced[0] / "train.log").is_file()
    assert (logdir / "last.pth").is_file()


@pytest.mark.parametrize("extra", [["--batch_size", "100"], ["--repeat", "1", "--batch_size", "3"]])
def test_an_epoch_without_a_single_step_is_refused(small_dataset, tmp_path, error_line, extra):
    assert train(small_dataset, tmp_path / "run", *extra) == 2
    error_line("--batch_size")
    assert not (tmp_path / "run" / "last.pth").exists()


def test_non_finite_training_stops_and_keeps_the_last_finite_checkpoint(small_dataset, tmp_path, error_line):
    logdir = tmp_path / "run"
    assert train(small_dataset, logdir, "--epochs", "1") == 0
    saved = (logdir / "last.pth").read_bytes()
    assert train(small_dataset, logdir, "--epochs", "3", "--phase1_epochs", "3", "--max_steps", "2", "--lr", "1e30") == 1
    line = error_line("epoch 2", "--lr")
    assert "keeps epoch 1" in line
    assert (logdir / "last.pth").read_bytes() == saved


@pytest.mark.parametrize("broken", ["test_ldr", "test_label", "train_label"])
def test_every_split_is_decoded_before_the_first_step(dataset, tmp_path, error_line, broken):
    split = "Training" if broken.startswith("train") else "Test"
    scene = next((dataset / split).iterdir())
    target = scene / ("HDRImg.hdr" if broken.endswith("label") else "input_2.tif")
    target.write_bytes(target.read_bytes()[:200])
    assert train(dataset, tmp_path / "run", "--cache", "none") == 2
    error_line(str(target))
    assert not (tmp_path / "run" / "last.pth").exists()


def test_a_missing_test_split_is_an_error_unless_asked_for(small_dataset, tmp_path, error_line):
    assert train(small_dataset, tmp_path / "typo", "--test_path", "Tset") == 2
    error_line("--test_path", "none")
    assert train(small_dataset, tmp_path / "none", "--test_path", "none") == 0
    assert not (tmp_path / "none" / "best.pth").exists() and (tmp_path / "none" / "last.pth").is_file()


def test_phase2_without_resume_says_it_starts_from_random_weights(small_dataset, tmp_path):
    assert train(small_dataset, tmp_path / "p2", phase=2) == 0
    assert "WARNING: phase 2 without --resume" in (tmp_path / "p2" / "train.log").read_text()


@pytest.mark.parametrize("option, value", [
    ("--lr", "inf"), ("--lr", "nan"), ("--lr", "-1"), ("--lr_min", "1"), ("--max_mask_ratio", "1.5"),
    ("--max_mask_ratio", "nan"), ("--constant_mask_ratio", "-0.1"), ("--adl_drop_rate", "2"),
    ("--drop_path_rate", "1"), ("--num_workers", "-1"), ("--window_size", "0"), ("--embed_dim", "0"),
    ("--num_heads", "5"), ("--batch_size", "0"), ("--max_steps", "0"), ("--max_steps", "-3"), ("--repeat", "0"),
    ("--le_lambda", "-1"), ("--linear_lambda", "nan"), ("--loss_temperature", "inf"), ("--start_epoch", "0"),
    ("--train_patch_size", "0"),
])
def test_numeric_options_are_checked_against_their_meaning(small_dataset, tmp_path, capsys, option, value):
    extra = [option, value] if option != "--num_heads" else [option, value, value]
    with pytest.raises(SystemExit) as raised:
        train(small_dataset, tmp_path / "run", *extra)
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert option in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra, words", [
    (["--device", "foo"], ["--device foo"]),
    (["--train_patch_size", "512"], ["--train_patch_size 512"]),
])
def test_unusable_training_options_are_one_line(small_dataset, tmp_path, error_line, extra, words):
    assert train(small_dataset, tmp_path / "run", *extra) == 2
    error_line(*words)


def test_logdir_that_is_a_file(small_dataset, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as raised:
        train(small_dataset, tmp_path / "file")
    assert raised.value.code == 2 and "is a file" in capsys.readouterr().err


@pytest.mark.parametrize("content, words", [(b"not a tensor file", ["--vgg_weights", "not a PyTorch file"]),
                                            ("pickle", ["--vgg_weights", "refused"])])
def test_vgg_weights_that_are_not_plain_tensors(small_dataset, tmp_path, error_line, content, words):
    path = tmp_path / "vgg.pth"
    if content == "pickle":
        torch.save({"features.0.weight": torch.zeros(1), "evil": Path("x")}, path)  # needs full unpickling
    else:
        path.write_bytes(content)
    assert train(small_dataset, tmp_path / "run", "--le_lambda", "0.005", "--vgg_weights", str(path)) == 2
    error_line(*words)


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_previous_checkpoint(small_dataset, tmp_path, error_line,
                                                                                   monkeypatch):
    logdir = tmp_path / "run"
    assert train(small_dataset, logdir, "--epochs", "1") == 0
    saved = (logdir / "last.pth").read_bytes()

    def full_disk(obj, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(torch, "save", full_disk)
    assert train(small_dataset, logdir, "--epochs", "2", "--phase1_epochs", "2") == 1
    error_line("no space left", "last.pth")
    assert (logdir / "last.pth").read_bytes() == saved
    assert not [p for p in logdir.iterdir() if p.name.endswith(".tmp.pth")]


def test_checkpoints_follow_the_umask(small_dataset, tmp_path):
    old = os.umask(0o022)
    try:
        assert train(small_dataset, tmp_path / "run", "--epochs", "1") == 0
    finally:
        os.umask(old)
    for name in ("last.pth", "best.pth"):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == 0o644, name
