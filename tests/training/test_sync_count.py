"""The training loop reads the device at most once per step.

Every host read of a tensor that project code makes in the training process (``item``,
``tolist``, ``bool``, ``float``, ``int``, ``cpu``, ``numpy``, formatting) is counted; on a GPU
each is a synchronisation. Between two steps of an epoch there must be exactly the one read of
the previous step's finiteness flag (one process) or of the all-ranks agreement (torchrun), plus
one per progress-bar refresh; the last step's flag is read before the epoch's checkpoint. The
crops are drawn in loader workers (their host draws from torch's RNG are not the device's)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from datasets.synthetic import make_dataset
from segmask.segment import segment_split, superpixel_masks
from training import trainer as trainer_module
from training.options import parse_args
from utils.cli import RunFailed

ROOT = Path(__file__).resolve().parents[2]
HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__", "__format__")
RUN = ["--preset", "tiny", "--train_patch_size", "32", "--batch_size", "2", "--num_workers", "2",
       "--test_path", "none", "--embed_dim", "12", "--depths", "1", "1", "--num_heads", "2", "2",
       "--device", "cpu", "--seed", "5"]
PHASE2 = ["--phase1_epochs", "0", "--epochs", "2"]
"""Phase 2 from its first epoch: mask maps, loss maps, the guided tables and their update."""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = make_dataset(tmp_path_factory.mktemp("sync") / "data", num_train=3, num_test=0, size=(48, 64), seed=6)
    segment_split(root, "Training", lambda image: superpixel_masks(image, n_segments=8), min_area=10, progress=False)
    return root


def _project_caller() -> str | None:
    """``file:function`` of the project code that called the patched method (None: elsewhere)."""
    frame = sys._getframe(2)
    path = frame.f_code.co_filename
    if not path.startswith(str(ROOT)) or f"{os.sep}.venv{os.sep}" in path or path == __file__:
        return None
    return f"{Path(path).name}:{frame.f_code.co_name}"


def count_host_reads(monkeypatch) -> list[str]:
    """Patch the tensor methods that read a tensor on the host; returns the growing list of reads."""
    reads: list[str] = []
    for name in HOST_READS:
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            caller = _project_caller()
            if caller is not None:
                reads.append(f"{_name} {caller}")
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


def reads_between_steps(dataset: Path, logdir: Path, extra: list[str], monkeypatch) -> tuple[list, list, list]:
    """Train; returns (per epoch: the reads after each step up to the next step, the reads after
    its last step up to its checkpoint, the reads themselves)."""
    reads = count_host_reads(monkeypatch)
    marks: list[tuple[str, int]] = []
    real_step, real_save = trainer_module.training_step, trainer_module.Trainer.save

    def step(*args, **kwargs):
        marks.append(("step", len(reads)))
        return real_step(*args, **kwargs)

    def save(self, *args, **kwargs):
        marks.append(("save", len(reads)))
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "training_step", step)
    monkeypatch.setattr(trainer_module.Trainer, "save", save)
    trainer_module.Trainer(parse_args(2, ["--dataset_dir", str(dataset), "--logdir", str(logdir), *RUN, *extra])).run()
    gaps, tails, epoch = [], [], []
    for (kind, count), (next_kind, next_count) in zip(marks, marks[1:]):
        if kind != "step":
            continue
        if next_kind == "step":
            epoch.append(next_count - count)
        else:
            gaps.append(epoch)
            tails.append(reads[count:next_count])
            epoch = []
    return gaps, tails, reads


def test_one_process_reads_the_device_once_per_step(dataset, tmp_path, monkeypatch):
    gaps, tails, reads = reads_between_steps(dataset, tmp_path / "run", [*PHASE2, "--repeat", "4", "--no_progress"],
                                             monkeypatch)
    assert len(gaps) == 2 and len(gaps[0]) == 5  # 6 steps per epoch
    for epoch in gaps:  # after step 1 nothing is read yet; after step k the flag of step k - 1
        assert epoch == [0] + [1] * (len(epoch) - 1), reads
    for tail in tails:  # the flags of the last two steps and the sums before the checkpoint, then the
        # epoch's TensorBoard values (the last mask map, the mean loss weight)
        assert tail[:3] == ["__bool__ trainer.py:_read", "__bool__ trainer.py:_read", "tolist trainer.py:host_sums"]
        assert set(tail[3:]) <= {"cpu trainer.py:train_epoch", "__float__ trainer.py:write"}, tail


def test_the_progress_bar_reads_the_sums_every_50_steps(dataset, tmp_path, monkeypatch):
    gaps, _, reads = reads_between_steps(dataset, tmp_path / "run", [*PHASE2, "--epochs", "1", "--repeat", "40"],
                                         monkeypatch)
    (epoch,) = gaps
    assert len(epoch) == 59
    expected = [int(step > 1) + int(step % trainer_module.PROGRESS_REFRESH == 0) for step in range(1, 60)]
    assert epoch == expected, reads


def test_a_non_finite_step_stops_the_run_before_anything_is_saved(dataset, tmp_path, monkeypatch, capsys):
    """Read one step late, the flag still names its step, and the last step's is read before saving."""
    real_step = trainer_module.training_step
    calls: list[int] = []

    def step(*args, **kwargs):
        calls.append(1)
        result = real_step(*args, **kwargs)
        if len(calls) == 6:  # the last step of epoch 1
            result["loss"] = torch.tensor(float("nan"))
        return result

    monkeypatch.setattr(trainer_module, "training_step", step)
    trainer = trainer_module.Trainer(parse_args(2, ["--dataset_dir", str(dataset), "--logdir", str(tmp_path / "run"),
                                                    *RUN, *PHASE2, "--repeat", "4", "--no_progress"]))
    with pytest.raises(RunFailed, match=r"epoch 1, step 6: the loss is nan; nothing of this epoch was saved"):
        trainer.run()
    assert not (tmp_path / "run" / "last.pth").exists()


def _rank(rank: int, dataset: str, logdir: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    monkeypatch = pytest.MonkeyPatch()
    gaps, _, reads = reads_between_steps(Path(dataset), Path(logdir), [*PHASE2, "--repeat", "8", "--no_progress",
                                                                       "--num_workers", "1"], monkeypatch)
    monkeypatch.undo()
    torch.save({"gaps": gaps, "reads": reads}, Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # see spawn_ranks (tests/conftest.py)


def test_under_torchrun_each_step_reads_only_the_agreement(dataset, tmp_path, spawn_ranks):
    spawn_ranks(_rank, (str(dataset), str(tmp_path / "run"), str(tmp_path)), 2)
    for rank in (0, 1):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert len(result["gaps"]) == 2
        for epoch in result["gaps"]:  # 3 scenes × 8 / (2 × 2) = 6 steps: one agreement after each
            assert epoch == [1] * 5, result["reads"]
