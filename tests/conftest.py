"""Shared fixtures."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch.multiprocessing as mp
from torch.distributed import TCPStore

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


@pytest.fixture
def spawn_ranks(monkeypatch) -> Callable[..., None]:
    """Start ``nprocs`` processes of ``fn(rank, *args)`` the way torchrun does: the launcher (this
    test's process) serves the rendezvous store on a port it holds, and every rank is only its
    client (no free port picked, released and hoped for; no rank hosting the others). The ranks
    find the store through ``MASTER_ADDR``/``MASTER_PORT`` and ``WORLD_SIZE`` is ``nprocs``;
    each sets its own ``RANK`` and ``LOCAL_RANK``.

    A rank writes what the test checks to files, leaves the process group and ends with
    ``os._exit(0)``, so that the test checks the training and not the interpreter's teardown of
    torch and gloo. That teardown once aborted a rank now and then ("terminate called without an
    active exception"): a thread ending during shutdown freed the trainer's tensors, kept alive by
    the TensorBoard log's excepthook; that is fixed and tested in tests/training/test_training.py."""
    def spawn(fn: Callable[..., None], args: tuple, nprocs: int) -> None:
        store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
        for name, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port), "WORLD_SIZE": str(nprocs),
                            "TORCHELASTIC_USE_AGENT_STORE": "True"}.items():
            monkeypatch.setenv(name, value)
        try:
            mp.spawn(fn, args=args, nprocs=nprocs)
        finally:
            del store
    return spawn
