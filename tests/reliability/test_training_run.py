"""Training runs that meet unusual data or a full disk: a split mixing exposure counts trains
(every batch from scenes of one count), a count the network cannot merge is refused before the
first step, and a disk that fills up ends the run with one line, no traceback from any thread,
the earlier checkpoints intact."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler

from datasets.hdr_dataset import ExposureGroupedBatchSampler
from datasets.synthetic import make_dataset
from training import trainer as trainer_module

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--preset", "tiny", "--train_patch_size", "32", "--num_workers", "0", "--no_progress", "--embed_dim", "12",
        "--depths", "1", "1", "--num_heads", "2", "2", "--batch_size", "2"]


def train(dataset: Path, logdir: Path, *extra: str, phase: int = 1) -> int:
    return trainer_module.main(phase, ["--dataset_dir", str(dataset), "--logdir", str(logdir), *TINY,
                                       "--epochs", "1", "--phase1_epochs", "1", *extra])


def drop_last_exposure(scene: Path) -> None:
    """Make a 3-exposure scene a 2-exposure one (the longest LDR and its exposure value gone);
    the middle exposure, which the label and masks belong to, stays the reference."""
    ldrs = sorted(scene.glob("*.tif"))
    ldrs[-1].unlink()
    values = (scene / "exposure.txt").read_text().split()
    (scene / "exposure.txt").write_text("\n".join(values[:-1]) + "\n")


# --- a split that mixes exposure counts -----------------------------------------------------------

def test_a_split_mixing_exposure_counts_trains_one_count_per_batch(dataset, tmp_path, monkeypatch, capsys,
                                                                   checksums):
    scenes = sorted((dataset / "Training").iterdir())
    drop_last_exposure(scenes[1])
    drop_last_exposure(next((dataset / "Test").iterdir()))
    counts = {scenes[0].name: 3, scenes[1].name: 2}
    inputs = checksums(dataset)
    batches: list[tuple[int, list[str]]] = []
    real_step = trainer_module.training_step

    def recording_step(model, batch, *args, **kwargs):
        batches.append((batch["input"].shape[1] // 6, list(batch["scene"])))
        return real_step(model, batch, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "training_step", recording_step)
    assert train(dataset, tmp_path / "run", "--repeat", "4", "--max_steps", "2", "--metric_guided_interval", "1") == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "error" not in out.err
    # the metric-guided pass and the test-split evaluation take the scenes one at a time
    assert "epoch 1: metric-guided update" in out.out and "test psnr_mu" in out.out
    assert len(batches) == 2
    for count, names in batches:
        assert {counts[name] for name in names} == {count}, batches
    assert (tmp_path / "run" / "last.pth").is_file()
    inputs.assert_unchanged()


def test_an_exposure_count_the_network_cannot_merge_is_refused_before_the_first_step(dataset, tmp_path, error_line,
                                                                                   checksums):
    five = make_dataset(tmp_path / "five", num_train=1, num_test=0, size=(48, 64), seed=3,
                        exposures=(0, 1, 2, 3, 4))
    target = dataset / "Training" / "scene_five"
    (five / "Training" / "scene_0001").rename(target)
    shutil.copy(dataset / "Training" / "scene_0001" / "masks.npy", target)  # a valid 48×64 segment map
    inputs = checksums(dataset)
    assert train(dataset, tmp_path / "run", "--repeat", "2", "--max_steps", "1") == 2
    error_line("scenes of 5 exposures", "Training/scene_five", "embed_dim=12", "supported counts")
    assert not list((tmp_path / "run").glob("*.pth"))
    inputs.assert_unchanged()


def test_a_count_too_rare_for_one_batch_is_noted_and_no_batch_at_all_refused(dataset, tmp_path, capsys, error_line):
    training = dataset / "Training"
    shutil.copytree(training / "scene_0001", training / "scene_0003")
    drop_last_exposure(training / "scene_0002")  # 2 scenes of 3 exposures, 1 of 2
    common = ["--repeat", "3", "--max_steps", "1", "--test_path", "none"]
    assert train(dataset, tmp_path / "run", *common, "--batch_size", "4") == 0  # 6 crops of 3, 3 crops of 2
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    assert "note: 3 crops of 2-exposure scenes (Training/scene_0002): fewer than one batch" in out.out
    assert "note: 3 crops of 2-exposure scenes" in (tmp_path / "run" / "train.log").read_text()
    assert train(dataset, tmp_path / "none", *common, "--batch_size", "8") == 2
    error_line("one exposure count", "--batch_size 8", "6 crops of 3-exposure", "3 crops of 2-exposure")
    assert not list((tmp_path / "none").glob("*.pth"))


# --- the batch sampler ----------------------------------------------------------------------------

class Indices(torch.utils.data.Dataset):
    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        return index


def batches_of(loader: DataLoader) -> list[list[int]]:
    return [batch.tolist() for batch in loader]


@pytest.mark.parametrize("size, batch", [(24, 4), (23, 5), (7, 2)])
def test_one_exposure_count_batches_exactly_as_the_random_sampler_did(size, batch):
    """Same generator, same loader: the same batches as RandomSampler + drop_last."""
    def generator() -> torch.Generator:
        return torch.Generator().manual_seed(1234)

    before = generator()
    old = DataLoader(Indices(size), batch_size=batch, sampler=RandomSampler(Indices(size), generator=before),
                     drop_last=True, generator=before)
    now = generator()
    new = DataLoader(Indices(size), batch_sampler=ExposureGroupedBatchSampler([3] * size, batch, now),
                     generator=now)
    assert batches_of(new) == batches_of(old) and len(new) == len(old)


@pytest.mark.parametrize("size, batch, world", [(24, 2, 2), (23, 3, 2), (30, 2, 3)])
def test_one_exposure_count_splits_across_ranks_exactly_as_the_distributed_sampler_did(size, batch, world):
    for rank in range(world):
        sampler = DistributedSampler(Indices(size), world, rank, shuffle=True, seed=5, drop_last=True)
        sampler.set_epoch(3)
        old = list(BatchSampler(sampler, batch, drop_last=True))
        new = list(ExposureGroupedBatchSampler([2] * size, batch, torch.Generator().manual_seed(5 + 3), world, rank))
        assert new == old


def test_mixed_counts_give_one_count_per_batch_and_the_same_steps_on_every_rank():
    groups = [2, 3, 3, 4, 2, 3] * 9  # 18 of 2, 27 of 3, 9 of 4
    world, batch = 2, 2
    per_rank = [list(ExposureGroupedBatchSampler(groups, batch, torch.Generator().manual_seed(11), world, rank))
                for rank in range(world)]
    assert len(per_rank[0]) == len(per_rank[1]) == 4 + 6 + 2
    assert len(ExposureGroupedBatchSampler(groups, batch, torch.Generator(), world, 0)) == 12
    used = [index for batches in per_rank for b in batches for index in b]
    assert len(used) == len(set(used))  # no crop twice in an epoch
    for batches in per_rank:
        assert all(len(b) == batch and len({groups[i] for i in b}) == 1 for b in batches)
    again = list(ExposureGroupedBatchSampler(groups, batch, torch.Generator().manual_seed(11), world, 0))
    assert again == per_rank[0]  # reproducible from the generator
    other = list(ExposureGroupedBatchSampler(groups, batch, torch.Generator().manual_seed(12), world, 0))
    assert other != per_rank[0]
    # the step t of every rank comes from one count's pending step: the ranks agree on counts
    assert [groups[b[0]] for b in per_rank[0]] == [groups[b[0]] for b in per_rank[1]]


# --- a full disk ----------------------------------------------------------------------------------

FILL_AFTER_EPOCH_1 = """
import hashlib, json, sys
from pathlib import Path
from training import trainer

logdir, record, argv = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
real_save = trainer.Trainer.save

def save_then_fill(self, epoch, improved):
    real_save(self, epoch, improved)
    if epoch == 1:
        sums = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in logdir.glob("*.pth")}
        record.write_text(json.dumps(sums))
        with open(logdir / "filler", "wb", buffering=0) as filler:
            try:
                while True:
                    filler.write(bytes(4096))
            except OSError:
                pass

trainer.Trainer.save = save_then_fill
sys.exit(trainer.main(1, argv))
"""


def test_a_disk_that_fills_up_ends_the_run_with_one_line_and_no_traceback(small_dataset, tmp_path, small_filesystem,
                                                                         checksums):
    """For real: --logdir on a small tmpfs that fills up after epoch 1's checkpoint, so the
    TensorBoard thread, train.log and the next checkpoint all meet a full disk."""
    logdir = small_filesystem(4096) / "run"
    record = tmp_path / "epoch1.json"
    inputs = checksums(small_dataset)
    argv = ["--dataset_dir", str(small_dataset), "--logdir", str(logdir), *TINY, "--epochs", "2",
            "--phase1_epochs", "2", "--repeat", "2", "--max_steps", "1", "--test_interval", "1"]
    done = subprocess.run([sys.executable, "-c", FILL_AFTER_EPOCH_1, str(logdir), str(record), *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "Exception" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: epoch 2: cannot write "), done.stderr
    assert "no space left on the device" in lines[0] and str(logdir) in lines[0] and ".pth" in lines[0]
    assert "note: TensorBoard events are no longer written" in done.stdout
    saved = json.loads(record.read_text())
    assert saved and {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in logdir.glob("*.pth")} == saved
    assert not [p for p in logdir.iterdir() if ".tmp" in p.name] and not (logdir / ".lock").exists()
    inputs.assert_unchanged()


def test_a_train_log_that_cannot_be_written_stops_with_one_note(tmp_path, capsys):
    """/dev/full fails every write with ENOSPC, as a full disk does."""
    import logging

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    logger = logging.getLogger("smhdr.test_log_file")
    logger.propagate = False
    handler = trainer_module.LogFile("/dev/full")
    logger.addHandler(handler)
    try:
        for number in range(3):
            logger.warning("line %d", number)
    finally:
        logger.removeHandler(handler)
    out = capsys.readouterr()
    assert out.err == ""
    assert out.out.count("note: /dev/full is no longer written (no space left on the device") == 1


# --- checkpoints and logs never replace an input --------------------------------------------------

@pytest.mark.parametrize("option, name", [("--resume", "best.pth"), ("--finetune_from", "epoch_0001.pth"),
                                          ("--vgg_weights", "train.log")])
def test_a_checkpoint_or_log_of_the_run_never_replaces_a_file_it_reads(dataset, tmp_path, error_line, checksums,
                                                                       option, name):
    logdir = tmp_path / "run"
    assert train(dataset, logdir, "--test_path", "none") == 0
    (logdir / "last.pth").rename(tmp_path / "first_last.pth")
    source = logdir / name
    if not source.exists():
        shutil.copy(tmp_path / "first_last.pth", source)
    before = checksums(logdir, dataset)
    extra = [option, str(source)] + (["--le_lambda", "0.01"] if option == "--vgg_weights" else [])
    assert train(dataset, logdir, "--test_path", "none", *extra) == 2
    error_line("refusing to write", name, option)
    before.assert_unchanged()


def test_continuing_from_the_runs_own_last_checkpoint_is_resuming(dataset, tmp_path):
    logdir = tmp_path / "run"
    assert train(dataset, logdir, "--test_path", "none") == 0
    assert train(dataset, logdir, "--test_path", "none", "--epochs", "2", "--phase1_epochs", "2",
                 "--resume", str(logdir / "last.pth")) == 0
    assert torch.load(logdir / "last.pth", weights_only=True)["epoch"] == 2


def test_a_logdir_inside_a_scene_never_replaces_its_files(dataset, tmp_path, error_line, checksums):
    scene = next((dataset / "Training").iterdir())
    (scene / "exposure.txt").rename(scene / "train.log")
    before = checksums(dataset)
    assert train(dataset, scene, "--exposure_file", "train.log") == 2
    error_line("refusing to write", "train.log", "--logdir")
    before.assert_unchanged()


@pytest.mark.parametrize("text, words", [("0\n0\n0\n", ["equal"]), ("0\n2\n200\n", ["±32"])])
def test_exposure_values_that_cannot_be_used_stop_training_before_the_first_step(dataset, tmp_path, error_line,
                                                                                 checksums, text, words):
    exposure_file = next((dataset / "Training").iterdir()) / "exposure.txt"
    exposure_file.write_text(text)
    before = checksums(dataset)
    assert train(dataset, tmp_path / "run", "--cache", "none") == 2
    error_line(str(exposure_file), *words)
    before.assert_unchanged()
    assert not (tmp_path / "run" / "last.pth").exists()
