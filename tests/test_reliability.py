"""Bad input gets one clear line and exit 2, a failed checkpoint or run exit 1, never a traceback
for the user's mistakes; nothing half-written, nothing overwritten unasked, no result that cannot
be right reported as a number."""
from __future__ import annotations

import errno
import os
import pickle
import shutil
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets import SceneError, SceneReader, read_segments
from datasets.scene import MAX_SEGMENT_ID, SceneLayout
from datasets.synthetic import make_dataset
from evaluation import cli as test_cli
from models import checkpoint as checkpoint_module
from models.checkpoint import save_model
from models.smnet import SMNet
from segmask import segment
from segmask.segment import segment_split, superpixel_masks
from training.trainer import main as train_main
from utils.image_io import write_hdr

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "pretrain_model" / "demo_smnet.pth"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = make_dataset(tmp_path_factory.mktemp("reliability") / "data", num_train=2, num_test=1, size=(48, 64),
                        seed=9)
    segment_split(root, "Training", lambda image: superpixel_masks(image, n_segments=8), min_area=10, progress=False)
    return root


@pytest.fixture
def copy(data, tmp_path) -> Path:
    """A copy of the dataset that a test may break."""
    return Path(shutil.copytree(data, tmp_path / "copy"))


def train(dataset: Path, logdir: Path, *extra: str, phase: int = 1) -> int:
    return train_main(phase, ["--preset", "tiny", "--dataset_dir", str(dataset), "--logdir", str(logdir),
                              "--epochs", "2", "--phase1_epochs", "1", "--max_steps", "1", "--num_workers", "0",
                              "--train_patch_size", "32", "--no_progress", *extra])


def evaluate(dataset: Path, save_dir: Path, *extra: str, checkpoint: Path = DEMO) -> int:
    return test_cli.main(["--dataset_dir", str(dataset), "--pretrained_model", str(checkpoint),
                          "--save_dir", str(save_dir), "--no_progress", "--no_pu21", *extra])


def one_error_line(capsys, *words: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


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


def test_huge_segment_ids_stop_training_before_any_allocation(copy, tmp_path, capsys):
    np.save(next((copy / "Training").iterdir()) / "masks.npy", np.full((48, 64, 1), 1e9, np.float32))
    assert train(copy, tmp_path / "run") == 2
    one_error_line(capsys, "masks.npy", "16777215")


# --- training runs --------------------------------------------------------------------------------

def test_restart_moves_the_previous_run_aside(data, tmp_path):
    logdir = tmp_path / "run"
    assert train(data, logdir) == 0
    best = (logdir / "best.pth").read_bytes()
    assert train(data, logdir, "--restart") == 0
    replaced = list(logdir.glob("replaced_*"))
    assert len(replaced) == 1
    assert (replaced[0] / "best.pth").read_bytes() == best and (replaced[0] / "train.log").is_file()
    assert (logdir / "last.pth").is_file()


@pytest.mark.parametrize("extra", [["--batch_size", "100"], ["--repeat", "1", "--batch_size", "3"]])
def test_an_epoch_without_a_single_step_is_refused(data, tmp_path, capsys, extra):
    assert train(data, tmp_path / "run", *extra) == 2
    one_error_line(capsys, "--batch_size")
    assert not (tmp_path / "run" / "last.pth").exists()


def test_non_finite_training_stops_and_keeps_the_last_finite_checkpoint(data, tmp_path, capsys):
    logdir = tmp_path / "run"
    assert train(data, logdir, "--epochs", "1") == 0
    saved = (logdir / "last.pth").read_bytes()
    assert train(data, logdir, "--epochs", "3", "--phase1_epochs", "3", "--max_steps", "2", "--lr", "1e30") == 1
    line = one_error_line(capsys, "epoch 2", "--lr")
    assert "keeps epoch 1" in line
    assert (logdir / "last.pth").read_bytes() == saved


@pytest.mark.parametrize("broken", ["test_ldr", "test_label", "train_label"])
def test_every_split_is_decoded_before_the_first_step(copy, tmp_path, capsys, broken):
    split = "Training" if broken.startswith("train") else "Test"
    scene = next((copy / split).iterdir())
    target = scene / ("HDRImg.hdr" if broken.endswith("label") else "input_2.tif")
    target.write_bytes(target.read_bytes()[:200])
    assert train(copy, tmp_path / "run", "--cache", "none") == 2
    one_error_line(capsys, str(target))
    assert not (tmp_path / "run" / "last.pth").exists()


def test_a_missing_test_split_is_an_error_unless_asked_for(data, tmp_path, capsys):
    assert train(data, tmp_path / "typo", "--test_path", "Tset") == 2
    one_error_line(capsys, "--test_path", "none")
    assert train(data, tmp_path / "none", "--test_path", "none") == 0
    assert not (tmp_path / "none" / "best.pth").exists() and (tmp_path / "none" / "last.pth").is_file()


def test_phase2_without_resume_says_it_starts_from_random_weights(data, tmp_path):
    assert train(data, tmp_path / "p2", phase=2) == 0
    assert "WARNING: phase 2 without --resume" in (tmp_path / "p2" / "train.log").read_text()


@pytest.mark.parametrize("option, value", [
    ("--lr", "inf"), ("--lr", "nan"), ("--lr", "-1"), ("--lr_min", "1"), ("--max_mask_ratio", "1.5"),
    ("--max_mask_ratio", "nan"), ("--constant_mask_ratio", "-0.1"), ("--adl_drop_rate", "2"),
    ("--drop_path_rate", "1"), ("--num_workers", "-1"), ("--window_size", "0"), ("--embed_dim", "0"),
    ("--num_heads", "5"), ("--batch_size", "0"), ("--max_steps", "0"), ("--max_steps", "-3"), ("--repeat", "0"),
    ("--le_lambda", "-1"), ("--linear_lambda", "nan"), ("--loss_temperature", "inf"), ("--start_epoch", "0"),
    ("--train_patch_size", "0"),
])
def test_numeric_options_are_checked_against_their_meaning(data, tmp_path, capsys, option, value):
    extra = [option, value] if option != "--num_heads" else [option, value, value]
    with pytest.raises(SystemExit) as raised:
        train(data, tmp_path / "run", *extra)
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert option in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra, words", [
    (["--device", "foo"], ["--device foo"]),
    (["--train_patch_size", "512"], ["--train_patch_size 512"]),
])
def test_unusable_training_options_are_one_line(data, tmp_path, capsys, extra, words):
    assert train(data, tmp_path / "run", *extra) == 2
    one_error_line(capsys, *words)


def test_logdir_that_is_a_file(data, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as raised:
        train(data, tmp_path / "file")
    assert raised.value.code == 2 and "is a file" in capsys.readouterr().err


@pytest.mark.parametrize("content, words", [(b"not a tensor file", ["--vgg_weights", "not a PyTorch file"]),
                                            ("pickle", ["--vgg_weights", "refused"])])
def test_vgg_weights_that_are_not_plain_tensors(data, tmp_path, capsys, content, words):
    path = tmp_path / "vgg.pth"
    if content == "pickle":
        torch.save({"features.0.weight": torch.zeros(1), "evil": Path("x")}, path)  # needs full unpickling
    else:
        path.write_bytes(content)
    assert train(data, tmp_path / "run", "--le_lambda", "0.005", "--vgg_weights", str(path)) == 2
    one_error_line(capsys, *words)


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_previous_checkpoint(data, tmp_path, capsys,
                                                                                   monkeypatch):
    logdir = tmp_path / "run"
    assert train(data, logdir, "--epochs", "1") == 0
    saved = (logdir / "last.pth").read_bytes()

    def full_disk(obj, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(torch, "save", full_disk)
    assert train(data, logdir, "--epochs", "2", "--phase1_epochs", "2") == 1
    one_error_line(capsys, "no space left", "last.pth")
    assert (logdir / "last.pth").read_bytes() == saved
    assert not [p for p in logdir.iterdir() if p.name.endswith(".tmp.pth")]


def test_checkpoints_follow_the_umask(data, tmp_path):
    old = os.umask(0o022)
    try:
        assert train(data, tmp_path / "run", "--epochs", "1") == 0
    finally:
        os.umask(old)
    for name in ("last.pth", "best.pth"):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == 0o644, name


# --- checkpoints ----------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [{"embed_dim": 24, "no_such_option": 1}, {"embed_dim": "wide"},
                                    {"window_size": 0}])
def test_a_checkpoint_config_that_describes_no_network_is_exit_1(data, tmp_path, capsys, config):
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": SMNet(embed_dim=24, depths=[1], num_heads=[2]).state_dict(), "config": config}, path)
    assert evaluate(data, tmp_path / "out", checkpoint=path) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(path) in err


def test_export_to_a_folder_or_over_a_file_is_one_line(tmp_path, capsys):
    save_model(tmp_path / "m.pth", SMNet(embed_dim=24, depths=[1], num_heads=[2]))
    assert checkpoint_module.main(["export", str(tmp_path / "m.pth"), str(tmp_path)]) == 2
    one_error_line(capsys, "is a folder")
    (tmp_path / "kept.pth").write_bytes(b"an earlier result")
    assert checkpoint_module.main(["export", str(tmp_path / "m.pth"), str(tmp_path / "kept.pth")]) == 2
    one_error_line(capsys, "--overwrite")
    assert (tmp_path / "kept.pth").read_bytes() == b"an earlier result"
    assert checkpoint_module.main(["export", str(tmp_path / "m.pth"), str(tmp_path / "kept.pth"), "--overwrite"]) == 0


# --- test.py --------------------------------------------------------------------------------------

def test_a_corrupt_test_image_is_exit_2_before_anything_is_written(copy, tmp_path, capsys):
    target = next((copy / "Test").iterdir()) / "input_2.tif"
    target.write_bytes(target.read_bytes()[:300])
    assert evaluate(copy, tmp_path / "out", "--cache", "none") == 2
    one_error_line(capsys, str(target))
    assert not (tmp_path / "out").exists()


def test_a_run_that_fails_halfway_leaves_no_half_file_and_no_stale_tables(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert evaluate(data, out) == 0
    assert (out / "metrics.csv").is_file() and (out / "summary.json").is_file()
    real_write_bytes = Path.write_bytes

    def full_disk(path, data):
        if path.suffix == ".hdr":
            real_write_bytes(path, data[:11])  # a partial file, then the failure
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    for scene in out.glob("*.hdr"):
        scene.unlink()
    assert evaluate(data, out) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "stopped after writing 0 scene(s)" in err
    assert not list(out.glob("*.hdr")) and not [p for p in out.iterdir() if ".tmp" in p.name]
    assert not (out / "metrics.csv").exists() and not (out / "summary.json").exists()


@pytest.mark.parametrize("extra, words", [
    (["--peak_luminance", "0"], ["--peak_luminance"]), (["--peak_luminance", "-3"], ["--peak_luminance"]),
    (["--peak_luminance", "nan"], ["--peak_luminance"]), (["--tile", "16"], ["--tile 16"]),
    (["--device", "cuda:x"], ["--device"]),
])
def test_metric_and_inference_settings_that_cannot_be_right(data, tmp_path, capsys, extra, words):
    assert evaluate(data, tmp_path / "out", *extra) == 2
    one_error_line(capsys, *words)


def test_save_dir_that_is_a_file(data, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert evaluate(data, tmp_path / "file") == 2
    one_error_line(capsys, "--save_dir")


def test_a_label_far_outside_relative_radiance_is_an_error(copy, tmp_path, capsys):
    scene = next((copy / "Test").iterdir())
    label = np.full((48, 64, 3), 0.5, np.float32)
    label[0, 0] = 1e38
    write_hdr(scene / "HDRImg.hdr", label)
    assert evaluate(copy, tmp_path / "out") == 2
    one_error_line(capsys, "HDRImg.hdr", "relative radiance")


# --- segment.py -----------------------------------------------------------------------------------

def test_segment_with_a_sam_checkpoint_that_needs_unpickling(data, tmp_path, capsys):
    path = tmp_path / "sam.pth"
    with path.open("wb") as handle:
        pickle.dump({"weights": Path("x")}, handle)
    assert segment.main(["--dataset_dir", str(data), "--sam_checkpoint", str(path), "--model_type", "tiny",
                         "--overwrite", "--no_progress"]) == 2
    one_error_line(capsys, "SAM checkpoint", str(path))


def test_segment_with_a_missing_split(data, capsys):
    assert segment.main(["--dataset_dir", str(data), "--train_path", "Nope", "--mode", "random",
                         "--no_progress"]) == 2
    one_error_line(capsys, "Nope")


# --- the decoded-scene cache ----------------------------------------------------------------------

def test_the_cache_never_serves_a_rewritten_file(copy):
    """Same size, the old modification time put back: the cache still sees the new content."""
    scene = next((copy / "Test").iterdir())
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


def test_sparse_large_segment_ids_train_with_tables_of_the_ids_in_use(copy, tmp_path):
    """IDs near the 2**24 bound cost no more memory than 0..n-1: the tables hold the IDs in use."""
    from training.options import parse_args
    from training.trainer import Trainer

    for offset, scene in enumerate(sorted((copy / "Training").iterdir())):
        segments = read_segments(scene / "masks.npy")
        np.save(scene / "masks.npy", (segments * 1_000_000 + offset).astype(np.float32)[..., None])
    trainer = Trainer(parse_args(2, ["--preset", "tiny", "--dataset_dir", str(copy), "--logdir", str(tmp_path / "r"),
                                     "--phase1_epochs", "0", "--epochs", "1", "--max_steps", "1", "--num_workers", "0",
                                     "--train_patch_size", "32", "--no_progress", "--test_path", "none"]))
    assert trainer.tables.num_ids < 100 and int(trainer.tables.ids.max()) > 1_000_000
    trainer.run()
    assert not torch.all(trainer.tables.weight == 1)  # the guided update found its segments
