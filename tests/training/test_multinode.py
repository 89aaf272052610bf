"""More than one node: two torchrun agents on this machine's loopback (gloo) train a few steps
and end with equal weights; each node has its own copy of the data (nodes share no disk), its
local rank 0 fills that copy's scene cache while the node's other ranks wait, and only global
rank 0 writes checkpoints and logs.

Run as a script (``python tests/training/test_multinode.py worker …``), this file is the training
process that torchrun or the test starts."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
RUN = ["--preset", "tiny", "--train_patch_size", "32", "--batch_size", "2", "--repeat", "4", "--num_workers", "0",
       "--no_progress", "--test_path", "none", "--embed_dim", "12", "--depths", "1", "1", "--num_heads", "2", "2",
       "--phase1_epochs", "2", "--epochs", "2", "--metric_guided_interval", "1", "--device", "cpu"]
"""Two epochs of 3 scenes × repeat 4 / (batch 2 × 2 processes) = 3 steps, a metric-guided update each."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _environment() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from datasets.synthetic import make_dataset
    from segmask.segment import segment_split, superpixel_masks

    root = make_dataset(tmp_path_factory.mktemp("multinode") / "data", num_train=3, num_test=0, size=(48, 64), seed=4)
    segment_split(root, "Training", lambda image: superpixel_masks(image, n_segments=8), min_area=10, progress=False)
    return root


def _node_copies(dataset: Path, tmp_path: Path, nodes: int) -> list[Path]:
    """One copy of the data per node, without any scene cache."""
    return [Path(shutil.copytree(dataset, tmp_path / f"node{n}" / "data", ignore=shutil.ignore_patterns(".cache*")))
            for n in range(nodes)]


def _results(out: Path, count: int) -> list[dict]:
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(count)]


def _assert_same_weights(results: list[dict]) -> None:
    for key, value in results[0]["state"].items():
        for other in results[1:]:
            assert torch.equal(value, other["state"][key]), key


def _cached_scenes(copy: Path) -> list[str]:
    return sorted(p.parent.parent.name for p in copy.glob("Training/*/.cache/manifest.json"))


def _two_agents(copies: list[Path], logdirs: list[Path], out: Path) -> tuple[list[int], str]:
    """Two torchrun agents on the loopback, one per node, each with its data and --logdir."""
    port = _free_port()
    agents = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
         "--rdzv_backend", "c10d", "--rdzv_endpoint", f"localhost:{port}", "--rdzv_id", "multinode-test",
         "--max_restarts", "0", str(Path(__file__)), "worker", str(copies[n]), str(logdirs[n]), str(out)],
        cwd=ROOT, env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for n in range(2)]
    logs = [agent.communicate(timeout=600)[0] for agent in agents]
    return [agent.returncode for agent in agents], "\n".join(logs)


def test_two_torchrun_nodes_end_with_equal_weights(dataset, tmp_path):
    """Then the same command again: the nodes' --logdir are not one folder (one node has
    last.pth, the other none), which is refused instead of training from two starting points."""
    copies = _node_copies(dataset, tmp_path, 2)
    logdirs = [tmp_path / f"node{n}" / "run" for n in range(2)]
    out = tmp_path / "out"
    out.mkdir()
    codes, logs = _two_agents(copies, logdirs, out)
    assert codes == [0, 0], logs

    results = _results(out, 2)
    _assert_same_weights(results)
    main, other = sorted(results, key=lambda r: r["rank"])
    assert (Path(main["logdir"]) / "last.pth").is_file() and (Path(main["logdir"]) / "train.log").is_file()
    assert not Path(other["logdir"]).exists()  # the other node writes no checkpoint and no log
    scenes = sorted(p.name for p in (dataset / "Training").iterdir())
    assert {r["data"] for r in results} == {str(c) for c in copies}
    for result in results:  # each node filled its own copy's cache
        assert _cached_scenes(Path(result["data"])) == scenes
        assert sorted(result["writes"]) == sorted(str(Path(result["data"]) / "Training" / s) for s in scenes)

    codes, logs = _two_agents(copies, logdirs, out)
    assert codes != [0, 0] and "--logdir must be on a filesystem all nodes share" in logs, logs


def _spawned_worker(rank: int, copies: list[str], logdir: str, out: str) -> None:
    """Rank ``rank`` of 2 nodes × 2 processes, as torchrun would set it up."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank % 2), LOCAL_WORLD_SIZE="2", GROUP_RANK=str(rank // 2))
    worker(copies[rank // 2], logdir, out)
    sys.stdout.flush()
    os._exit(0)  # see spawn_ranks (tests/conftest.py)


def test_only_each_nodes_local_rank_0_fills_its_scene_cache(dataset, tmp_path, spawn_ranks):
    copies = [str(p) for p in _node_copies(dataset, tmp_path, 2)]
    out = tmp_path / "out"
    out.mkdir()
    spawn_ranks(_spawned_worker, (copies, str(tmp_path / "run"), str(out)), 4)
    results = _results(out, 4)
    _assert_same_weights(results)
    scenes = sorted(p.name for p in (dataset / "Training").iterdir())
    for result in results:
        expected = scenes if result["local_rank"] == 0 else []
        assert sorted(Path(w).name for w in result["writes"]) == expected, result["rank"]
    for copy in copies:
        assert _cached_scenes(Path(copy)) == scenes


# ----------------------------------------------------------------------------- the training process


def worker(data: str, logdir: str, out: str) -> None:
    """Train ``RUN`` on ``data``; save this rank's weights and the scene caches it wrote to ``out``."""
    torch.set_num_threads(1)
    from datasets.cache import NpySceneCache
    from training.options import parse_args
    from training.trainer import Trainer

    writes: list[str] = []
    real_write = NpySceneCache._write

    def recording_write(self, scene, signature):
        writes.append(str(scene.path))
        return real_write(self, scene, signature)

    NpySceneCache._write = recording_write
    trainer = Trainer(parse_args(1, ["--dataset_dir", data, "--logdir", logdir, *RUN]))
    trainer.run()
    rank = int(os.environ["RANK"])
    torch.save({"state": trainer.model.state_dict(), "writes": writes, "rank": rank, "data": data, "logdir": logdir,
                "local_rank": int(os.environ["LOCAL_RANK"])}, Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "worker":
    sys.path.insert(0, str(ROOT))
    worker(*sys.argv[2:])
