"""Two runs, one folder: a training (--logdir) or an evaluation (--save_dir) into a folder that a
live run holds is refused in one line (exit 2) before it writes anything; a lock left by a run
that ended is taken over with a note; --restart never moves the lock file."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from evaluation import cli as test_cli
from training import trainer as trainer_module
from training.trainer import move_previous_run_aside
from utils.cli import UsageError
from utils.run_lock import LOCK_NAME, acquire_run_lock, run_lock

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
TINY = ["--preset", "tiny", "--train_patch_size", "32", "--num_workers", "0", "--no_progress", "--embed_dim", "12",
        "--depths", "1", "1", "--num_heads", "2", "2", "--batch_size", "2", "--repeat", "2", "--max_steps", "1",
        "--epochs", "1", "--phase1_epochs", "1"]

HOLDER = textwrap.dedent("""
    import json, sys, time
    from utils.run_lock import acquire_run_lock
    lock = acquire_run_lock(sys.argv[1], sys.argv[2])
    if len(sys.argv) > 3:  # as a run on another machine of the cluster would have written it
        lock.handle.seek(0)
        lock.handle.truncate()
        json.dump({"host": sys.argv[3], "pid": 4242, "started": "2030-01-01T00:00:00+00:00"}, lock.handle)
        lock.handle.flush()
    print("locked", flush=True)
    time.sleep(600)
""")


@pytest.fixture
def holder():
    """``holder(folder, option, host=None)``: a live process holding ``folder``'s lock (its
    record naming ``host`` when given); ended after the test. Returns the process."""
    started: list[subprocess.Popen] = []

    def start(folder: Path, option: str, host: str | None = None) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), option, *([host] if host else [])],
                                   cwd=ROOT, stdout=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout.readline().strip() == "locked"
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def train(dataset: Path, logdir: Path, *extra: str) -> int:
    return trainer_module.main(1, ["--dataset_dir", str(dataset), "--logdir", str(logdir), *TINY, *extra])


def dead_pid() -> int:
    """The PID of a process of this host that has ended."""
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(process.stdout)


# --- training -------------------------------------------------------------------------------------

@pytest.mark.parametrize("host", [None, "gpu-node-7"], ids=["this-host", "another-host"])
def test_a_second_training_into_a_live_runs_logdir_is_refused(small_dataset, tmp_path, holder, error_line, checksums,
                                                              host):
    logdir = tmp_path / "run"
    assert train(small_dataset, logdir) == 0
    live = holder(logdir, "--logdir", host)
    before = checksums(small_dataset, logdir)
    assert train(small_dataset, logdir) == 2
    pid, where = (4242, host) if host else (live.pid, socket.gethostname())
    line = error_line(f"--logdir {logdir} is in use by PID {pid} on {where} since ", f"(lock file {logdir / LOCK_NAME})")
    assert line.startswith("error: --logdir")
    before.assert_unchanged()  # not a byte written: no log line, no checkpoint, the lock untouched


def test_a_stale_lock_is_taken_over_with_a_note(small_dataset, tmp_path, capsys, checksums):
    logdir = tmp_path / "run"
    logdir.mkdir()
    pid = dead_pid()
    (logdir / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": pid,
                                                "started": "2030-01-01T00:00:00+00:00", "command": "train"}))
    inputs = checksums(small_dataset)
    assert train(small_dataset, logdir) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "error:" not in out.err
    note = f"note: --logdir {logdir}: took over the lock file {logdir / LOCK_NAME} of PID {pid} on "
    assert sum(note in line for line in out.out.splitlines()) == 1
    assert note in (logdir / "train.log").read_text()
    assert not (logdir / LOCK_NAME).exists() and (logdir / "last.pth").is_file()  # released at the end
    inputs.assert_unchanged()


def test_restart_leaves_the_lock_file_where_it_is(tmp_path):
    logdir = tmp_path / "run"
    logdir.mkdir()
    for name in ("last.pth", "train.log", LOCK_NAME):
        (logdir / name).write_text(name)
    replaced = move_previous_run_aside(logdir)
    assert sorted(p.name for p in replaced.iterdir()) == ["last.pth", "train.log"]
    assert (logdir / LOCK_NAME).read_text() == LOCK_NAME


def test_the_lock_is_held_for_the_run_and_gone_after_it(small_dataset, tmp_path, monkeypatch):
    seen = []
    real_step = trainer_module.training_step

    def step(*args, **kwargs):
        record = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
        seen.append(record)
        with pytest.raises(UsageError, match="is in use by PID"):
            acquire_run_lock(tmp_path / "run")  # this process's own run holds it
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "training_step", step)
    assert train(small_dataset, tmp_path / "run") == 0
    assert seen and seen[0]["pid"] == os.getpid() and seen[0]["host"] == socket.gethostname()
    assert "command" in seen[0] and "started" in seen[0]
    assert not (tmp_path / "run" / LOCK_NAME).exists()


# --- test.py --------------------------------------------------------------------------------------

def evaluate(dataset: Path, save_dir: Path) -> int:
    return test_cli.main(["--dataset_dir", str(dataset), "--pretrained_model", str(FIXTURES / "tiny_n3_48x64.pth"),
                          "--save_dir", str(save_dir), "--no_progress", "--no_pu21"])


def test_a_second_evaluation_into_a_live_runs_save_dir_is_refused(small_dataset, tmp_path, holder, error_line,
                                                                  checksums):
    save_dir = tmp_path / "results"
    assert evaluate(small_dataset, save_dir) == 0
    assert not (save_dir / LOCK_NAME).exists()
    live = holder(save_dir, "--save_dir")
    before = checksums(small_dataset, save_dir)
    assert evaluate(small_dataset, save_dir) == 2
    error_line(f"--save_dir {save_dir} is in use by PID {live.pid} on {socket.gethostname()}")
    before.assert_unchanged()
    live.kill()
    live.wait()
    assert evaluate(small_dataset, save_dir) == 0  # its lock went with it


# --- the lock itself ------------------------------------------------------------------------------

def test_run_lock_creates_and_removes_only_what_it_needs(tmp_path):
    folder = tmp_path / "new" / "folder"
    with run_lock(folder, "--save_dir") as lock:
        assert lock.note is None and (folder / LOCK_NAME).is_file()
        with pytest.raises(UsageError, match="--save_dir"):
            with run_lock(folder, "--save_dir"):
                pass
    assert not folder.exists()  # created for the lock and left empty: gone again
    (tmp_path / "kept").mkdir()
    with run_lock(tmp_path / "kept"):
        (tmp_path / "kept" / "out.txt").write_text("x")
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["out.txt"]
