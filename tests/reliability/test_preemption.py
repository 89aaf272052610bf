"""Preemption: SIGTERM (or SIGUSR1, as SLURM's --signal sends it) finishes the step, writes a
resumable last.pth, says so in one line and exits 75; the same command then ends bit-for-bit where
an uninterrupted run ends. Under torchrun every rank stops after the same step."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.checkpoint import read_checkpoint
from utils.cli import EXIT_PREEMPTED

ROOT = Path(__file__).resolve().parents[2]
RUN = ["--preset", "tiny", "--train_patch_size", "32", "--batch_size", "2", "--repeat", "8", "--no_progress",
       "--num_workers", "0",
       "--test_interval", "100", "--embed_dim", "12", "--depths", "1", "1", "--num_heads", "2", "2",
       "--phase1_epochs", "2", "--epochs", "2", "--metric_guided_interval", "1", "--seed", "7",
       "--drop_path_rate", "0.1"]
"""Two epochs of 8 steps (2 scenes × repeat 8 / batch 2), a metric-guided update every epoch,
drop-path drawing from torch's RNG in every step."""
PHASE2 = ["--phase1_epochs", "0"]
"""Phase 2 from scratch: masked steps (the mask generator, the guided tables) in epoch 1."""
STARTED = ": epochs 1-2,"
"""In the line the trainer logs once its signal handlers are installed, just before the first step."""


def command(dataset: Path, logdir: Path, *extra: str) -> list[str]:
    script = "train_phase2.py" if "--phase1_epochs" in extra else "train_phase1.py"
    return [sys.executable, str(ROOT / script), "--dataset_dir", str(dataset), "--logdir", str(logdir),
            *RUN, *extra]


def environment() -> dict[str, str]:
    """One thread per process: the three runs compared bit for bit then add up in the same order."""
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=environment(), timeout=600)


def run_and_signal(cmd: list[str], number: int, whole_group: bool = False) -> subprocess.CompletedProcess:
    """Start the training, send ``number`` once it has logged its start (to the whole process
    group, loader workers included, as a scheduler does, with ``whole_group``), wait for it."""
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=environment(), start_new_session=whole_group)
    seen = []
    for line in process.stdout:
        seen.append(line)
        if STARTED in line:
            if whole_group:
                os.killpg(process.pid, number)
            else:
                process.send_signal(number)
            break
    out, err = process.communicate(timeout=600)
    return subprocess.CompletedProcess(cmd, process.returncode, "".join(seen) + out, err)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(small_dataset, tmp_path_factory):
    """``uninterrupted(*extra)``: last.pth of the run with those options that nothing stopped."""
    done: dict[tuple[str, ...], Path] = {}

    def last(*extra: str) -> Path:
        if extra not in done:
            logdir = tmp_path_factory.mktemp("uninterrupted") / "run"
            finished = run(command(small_dataset, logdir, *extra))
            assert finished.returncode == 0, finished.stderr
            done[extra] = logdir / "last.pth"
        return done[extra]
    return last


@pytest.mark.parametrize("number, extra", [(signal.SIGTERM, PHASE2), (signal.SIGUSR1, ["--num_workers", "1"])],
                         ids=["SIGTERM-phase2", "SIGUSR1-phase1-with-a-loader-worker"])
def test_a_preempted_run_continues_bit_for_bit(small_dataset, tmp_path, uninterrupted, checksums, number, extra):
    inputs = checksums(small_dataset)
    logdir = tmp_path / "run"
    cmd = command(small_dataset, logdir, *extra)
    stopped = run_and_signal(cmd, number, whole_group="--num_workers" in extra)
    assert stopped.returncode == EXIT_PREEMPTED == 75, stopped.stderr
    assert "Traceback" not in stopped.stderr
    name = signal.Signals(number).name
    lines = [line for line in stopped.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"preempted ({name}) at epoch 1 step "), stopped.stderr
    assert f"checkpoint written to {logdir / 'last.pth'}; run the same command to continue" in lines[0]
    saved = read_checkpoint(logdir / "last.pth")
    step = saved["interrupted"]["step"]
    assert lines[0].startswith(f"preempted ({name}) at epoch 1 step {step}:") and 1 <= step < 8
    assert saved["epoch"] == 0 and saved["interrupted"]["epoch"] == 1 and len(saved["interrupted"]["ranks"]) == 1
    assert not (logdir / ".lock").exists()

    resumed = run(cmd)
    assert resumed.returncode == 0, resumed.stderr
    assert f"epoch 1: continuing after step {step} (stopped by {name})" in resumed.stdout
    straight = uninterrupted(*extra)
    final, expected = weights(logdir / "last.pth"), weights(straight)
    assert final.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(final[key], value), key
    history, expected_history = (read_checkpoint(p)["history"] for p in (logdir / "last.pth", straight))
    assert [h["loss"] for h in history] == [h["loss"] for h in expected_history]
    assert "interrupted" not in read_checkpoint(logdir / "last.pth")
    inputs.assert_unchanged()


def test_a_signal_during_the_last_step_of_an_epoch_stops_after_its_checkpoint(small_dataset, tmp_path, monkeypatch,
                                                                            capsys):
    """The epoch's own checkpoint is the resumable one; the run stops before the next epoch."""
    from training import trainer as trainer_module

    real_step = trainer_module.training_step
    calls = []

    def step_then_signal(*args, **kwargs):
        calls.append(1)
        result = real_step(*args, **kwargs)
        if len(calls) == 8:  # the last step of epoch 1
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(trainer_module, "training_step", step_then_signal)
    args = ["--dataset_dir", str(small_dataset), "--logdir", str(tmp_path / "run"), *RUN]
    previous = signal.getsignal(signal.SIGTERM)
    assert trainer_module.main(1, args) == EXIT_PREEMPTED
    assert signal.getsignal(signal.SIGTERM) == previous  # the handlers are put back
    err = capsys.readouterr().err
    assert err.strip() == (f"preempted (SIGTERM) after epoch 1: checkpoint written to {tmp_path / 'run' / 'last.pth'}; "
                           "run the same command to continue")
    saved = read_checkpoint(tmp_path / "run" / "last.pth")
    assert saved["epoch"] == 1 and "interrupted" not in saved and len(calls) == 8


def _signalled_worker(rank: int, dataset: str, logdir: str, out: str) -> None:
    """Rank 1 gets SIGTERM during its third step; rank 0 gets nothing."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from training import trainer as trainer_module

    real_step = trainer_module.training_step
    calls = []

    def step(*args, **kwargs):
        calls.append(1)
        if rank == 1 and len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(*args, **kwargs)

    trainer_module.training_step = step
    code = trainer_module.main(1, ["--dataset_dir", dataset, "--logdir", logdir, *RUN, "--repeat", "16",
                                   "--device", "cpu"])
    Path(out, f"rank{rank}.txt").write_text(f"{code} {len(calls)}")
    sys.stdout.flush()
    os._exit(0)  # see spawn_ranks (tests/conftest.py)


def test_under_torchrun_every_rank_stops_after_the_same_step(small_dataset, tmp_path, spawn_ranks):
    spawn_ranks(_signalled_worker, (str(small_dataset), str(tmp_path / "run"), str(tmp_path)), 2)
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == [f"{EXIT_PREEMPTED} 3"] * 2
    saved = read_checkpoint(tmp_path / "run" / "last.pth")
    assert saved["interrupted"]["step"] == 3 and len(saved["interrupted"]["ranks"]) == 2
    assert saved["interrupted"]["signal"] == "SIGTERM"  # rank 1's, though rank 0 wrote the checkpoint
