"""The training module: a tiny CPU run learns, resuming repeats the schedule exactly, phase 2
masks on the curriculum, fine-tuning trains only conv_first, two gloo ranks stay in sync."""
from __future__ import annotations

import functools
import math
import os
import sys
import warnings
from pathlib import Path

import pytest
import torch

from datasets.synthetic import make_dataset
from models.checkpoint import read_checkpoint
from models.smnet import SMNet
from segmask.segment import segment_split, superpixel_masks
from training.losses import HDRLoss, VGG19Features
from training.trainer import (QuietWriterThreads, TensorBoardLog, Trainer, freeze_all_but_shallow_extractor, main,
                              training_step)
from training.options import parse_args

FAST = ["--preset", "tiny", "--train_patch_size", "32", "--batch_size", "2", "--repeat", "2", "--num_workers", "0",
        "--no_progress", "--test_interval", "100", "--embed_dim", "12", "--depths", "1", "1", "--num_heads", "2", "2"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """3 training scenes with superpixel masks and 2 test scenes, 48×64."""
    root = make_dataset(tmp_path_factory.mktemp("train") / "data", num_train=3, num_test=2, size=(48, 64), seed=5)
    segment_split(root, "Training", lambda image: superpixel_masks(image, n_segments=12), min_area=20,
                  progress=False)
    return root


def run_phase(phase: int, dataset: Path, logdir: Path, *extra: str, until: int | None = None) -> Trainer:
    trainer = Trainer(parse_args(phase, ["--dataset_dir", str(dataset), "--logdir", str(logdir), *FAST, *extra]))
    trainer.run(until)
    return trainer


def state_of(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_tiny_run_lowers_the_loss_and_beats_the_untrained_network(dataset, tmp_path):
    args = ["--phase1_epochs", "8", "--epochs", "10", "--repeat", "6", "--test_interval", "8", "--lr", "2e-3"]
    untrained = Trainer(parse_args(1, ["--dataset_dir", str(dataset), "--logdir", str(tmp_path / "u"), *FAST, *args]))
    before = untrained.evaluate()["psnr_mu"]
    trainer = run_phase(1, dataset, tmp_path / "p1", *args)
    losses = [entry["loss"] for entry in trainer.state.history]
    assert len(losses) == 8
    assert sum(losses[-2:]) / 2 < 0.7 * sum(losses[:2]) / 2
    after = trainer.state.history[-1]["test_psnr_mu"]
    assert after > before + 1.0
    for name in ("last.pth", "best.pth", "train.log"):
        assert (tmp_path / "p1" / name).is_file()
    assert list((tmp_path / "p1" / "tensorboard").glob("events.out.tfevents.*"))
    saved = read_checkpoint(tmp_path / "p1" / "last.pth")
    assert saved["epoch"] == 8 and saved["phase"] == 1
    assert {"optimizer", "scheduler", "tables", "rng", "config"} <= set(saved)


def test_resumed_run_matches_an_uninterrupted_one(dataset, tmp_path):
    common = ["--phase1_epochs", "3", "--epochs", "4", "--metric_guided_interval", "2", "--seed", "3",
              ]
    straight = run_phase(1, dataset, tmp_path / "straight", *common)
    first = run_phase(1, dataset, tmp_path / "split", *common, until=2)  # as if killed during epoch 3
    assert first.state.epoch == 2
    resumed = run_phase(1, dataset, tmp_path / "split", *common)  # same command: continues from last.pth
    assert resumed.start_epoch == 3
    for key, value in state_of(straight).items():
        assert torch.equal(value, state_of(resumed)[key]), key
    assert torch.equal(straight.tables.weight, resumed.tables.weight)
    assert straight.optimizer.param_groups[0]["lr"] == resumed.optimizer.param_groups[0]["lr"]


def test_phase2_masks_on_the_curriculum_and_updates_the_tables(dataset, tmp_path):
    common = ["--phase1_epochs", "1", "--epochs", "5"]
    run_phase(1, dataset, tmp_path / "p1", *common)
    trainer = run_phase(2, dataset, tmp_path / "p2", *common, "--resume", str(tmp_path / "p1"))  # its last.pth
    history = trainer.state.history[-4:]
    assert [entry["epoch"] for entry in history] == [2, 3, 4, 5]
    assert [round(entry["mask_ratio"], 3) for entry in history] == [0.45, 0.9, 0.45, 0.0]
    # learning rate restarts at phase 2 and falls
    assert history[0]["lr"] == pytest.approx(5e-4) and history[-1]["lr"] < history[0]["lr"]
    weights = trainer.tables.weight
    assert not torch.all(weights == 1)  # guided loss weights moved away from 1
    # each scene's weights average 1 (tables hold one scene's segments per ID)
    assert 0.5 < float(weights[weights != 1].mean()) < 2.0


def test_bfloat16_autocast_trains_on_the_cpu(dataset, tmp_path):
    trainer = run_phase(1, dataset, tmp_path / "bf16", "--phase1_epochs", "1", "--epochs", "1", "--amp", "bf16")
    assert trainer.amp == "bf16"
    assert math.isfinite(trainer.state.history[-1]["loss"])
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_compiled_training_matches_eager(dataset, tmp_path, monkeypatch):
    """--compile wraps the network (traced with the eager backend here: inductor's C++ build
    takes minutes on a CPU) and checkpoints still hold plain parameter names."""
    common = ["--phase1_epochs", "1", "--epochs", "1", "--seed", "4"]
    eager = run_phase(1, dataset, tmp_path / "eager", *common)
    compile_eagerly = functools.partial(torch.compile, backend="eager")
    monkeypatch.setattr(torch, "compile", compile_eagerly)
    compiled = run_phase(1, dataset, tmp_path / "compiled", *common, "--compile")
    assert compiled.train_model is not compiled.model
    assert compiled.state.history[-1]["loss"] == pytest.approx(eager.state.history[-1]["loss"], rel=1e-4)
    saved = read_checkpoint(tmp_path / "compiled" / "last.pth")["state_dict"]
    assert set(saved) == set(eager.model.state_dict())


def test_phase2_refuses_a_phase1_start_epoch(dataset, tmp_path, capsys):
    run_phase(1, dataset, tmp_path / "p1", "--phase1_epochs", "1", "--epochs", "3")
    code = main(2, ["--dataset_dir", str(dataset), "--logdir", str(tmp_path / "p2"), *FAST, "--phase1_epochs", "1",
                    "--epochs", "3", "--start_epoch", "1", "--resume", str(tmp_path / "p1" / "last.pth")])
    assert code == 2
    assert "belongs to phase 1" in capsys.readouterr().err


def test_resuming_or_finetuning_takes_the_network_shape_from_the_checkpoint(dataset, tmp_path):
    run_phase(1, dataset, tmp_path / "small", "--phase1_epochs", "1", "--epochs", "1")
    args = parse_args(1, ["--dataset_dir", str(dataset), "--logdir", str(tmp_path / "tuned"), "--num_workers", "0",
                          "--no_progress", "--train_patch_size", "32", "--batch_size", "2", "--repeat", "1",
                          "--le_lambda", "0", "--finetune_from", str(tmp_path / "small" / "last.pth")])
    assert args.embed_dim == 60  # the command line asks for the default network ...
    trainer = Trainer(args)
    assert trainer.model.embed_dim == 12  # ... the checkpoint's shape wins


def test_a_foreign_checkpoint_to_resume_is_a_clear_error(dataset, tmp_path, capsys):
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "foreign.pth")
    code = main(1, ["--dataset_dir", str(dataset), "--logdir", str(tmp_path / "run"), *FAST,
                    "--resume", str(tmp_path / "foreign.pth")])
    assert code == 1  # a checkpoint that failed
    err = capsys.readouterr().err
    assert "foreign.pth" in err and "not an SMNet state dict" in err


def test_masked_step_uses_the_mask_and_loss_maps():
    torch.manual_seed(0)
    model = SMNet(embed_dim=12, depths=(1,), num_heads=(2,), is_mask=True, adl_drop_rate=1.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    segments = torch.zeros(2, 16, 16, dtype=torch.long)
    segments[:, 8:] = 1
    batch = {"input": torch.rand(2, 18, 16, 16), "label": torch.rand(2, 3, 16, 16), "segments": segments}
    out = training_step(model, batch, HDRLoss(0.0), optimizer, torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]),
                        torch.device("cpu"))
    mask = out["mask_map"][:, 0]
    assert torch.all(mask[:, :8] == 0) and torch.all(mask[:, 8:] == 1)
    # a loss map of zeros gives a zero loss
    zero = training_step(model, batch, HDRLoss(0.0), optimizer, None, torch.tensor([0.0, 0.0]), torch.device("cpu"))
    assert float(zero["loss"]) == 0.0


def test_finetuning_trains_only_the_shallow_extractor(dataset, tmp_path):
    assert freeze_all_but_shallow_extractor(SMNet()) == pytest.approx(68_220 / 1_292_499)
    assert round(100 * 68_220 / 1_292_499, 2) == 5.28
    run_phase(1, dataset, tmp_path / "base", "--phase1_epochs", "1", "--epochs", "1")
    base = read_checkpoint(tmp_path / "base" / "last.pth")["state_dict"]
    tuned = run_phase(1, dataset, tmp_path / "tuned", "--phase1_epochs", "1", "--epochs", "1",
                      "--finetune_from", str(tmp_path / "base" / "last.pth"))
    assert tuned.trainable_share < 0.5
    for name, value in tuned.model.state_dict().items():
        changed = not torch.equal(value, base[name])
        assert changed == name.startswith("conv_first.") or "weight" not in name and not changed, name


def test_perceptual_term_trains_with_a_vgg_weights_file(dataset, tmp_path):
    torch.manual_seed(0)
    torch.save(VGG19Features().state_dict(), tmp_path / "vgg19.pth")  # stands in for the ImageNet file
    trainer = run_phase(1, dataset, tmp_path / "run", "--phase1_epochs", "1", "--epochs", "1",
                        "--le_lambda", "0.005", "--vgg_weights", str(tmp_path / "vgg19.pth"))
    entry = trainer.state.history[-1]
    assert entry["perceptual"] > 0
    assert entry["loss"] == pytest.approx(entry["l1"] + 0.005 * entry["perceptual"], rel=1e-4)


def test_perceptual_term_without_vgg_weights_stops_with_a_message(dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr("training.losses.hf_cache_candidates", lambda: [])
    code = main(1, ["--dataset_dir", str(dataset), "--logdir", str(tmp_path / "run"), *FAST, "--le_lambda", "0.005"])
    assert code == 2
    err = capsys.readouterr().err
    assert "VGG-19" in err and "--le_lambda 0" in err and "Traceback" not in err


def _ddp_worker(rank: int, dataset: str, logdir: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    trainer = Trainer(parse_args(1, ["--dataset_dir", dataset, "--logdir", logdir, *FAST, "--device", "cpu",
                                     "--phase1_epochs", "2", "--epochs", "2", "--metric_guided_interval", "2"]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.run()
    stride_warnings = sum("strides" in str(w.message) for w in caught)
    torch.save({"state": trainer.model.state_dict(), "weight": trainer.tables.weight,
                "stride_warnings": stride_warnings}, Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # see spawn_ranks (tests/conftest.py)


def test_two_gloo_ranks_end_with_identical_weights(dataset, tmp_path, spawn_ranks):
    spawn_ranks(_ddp_worker, (str(dataset), str(tmp_path / "run"), str(tmp_path)), 2)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][key]), key
    assert torch.equal(rank0["weight"], rank1["weight"])  # merged guided tables
    assert rank0["stride_warnings"] == rank1["stride_warnings"] == 0  # gradients land in DDP's buckets as they are
    assert not torch.all(rank0["weight"] == 1)
    assert (tmp_path / "run" / "last.pth").is_file()
    assert math.isfinite(read_checkpoint(tmp_path / "run" / "last.pth")["history"][-1]["loss"])


def _diverging_worker(rank: int, dataset: str, logdir: str, out: str) -> None:
    """Rank 1's loss turns infinite at its first step; rank 0's stays finite."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import training.trainer as trainer_module

    real_step = trainer_module.training_step

    def step(*args, **kwargs):
        result = real_step(*args, **kwargs)
        if rank == 1:
            result["loss"] = torch.tensor(float("inf"))
        return result

    trainer_module.training_step = step
    code = main(1, ["--dataset_dir", dataset, "--logdir", logdir, *FAST, "--device", "cpu",
                    "--phase1_epochs", "1", "--epochs", "1"])
    Path(out, f"rank{rank}.code").write_text(str(code))
    sys.stdout.flush()
    os._exit(0)  # see spawn_ranks (tests/conftest.py)


def test_a_failure_on_one_rank_ends_every_rank(dataset, tmp_path, spawn_ranks):
    spawn_ranks(_diverging_worker, (str(dataset), str(tmp_path / "run"), str(tmp_path)), 2)
    assert [(tmp_path / f"rank{r}.code").read_text() for r in (0, 1)] == ["1", "1"]
    assert not (tmp_path / "run" / "last.pth").exists()


def test_an_indexed_cuda_device_under_torchrun_is_refused(monkeypatch):
    from utils.distributed import init_process

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="LOCAL_RANK"):
        init_process("cuda:1")


def test_threads_started_while_tensorboard_logs_keep_nothing_of_the_run_alive(tmp_path):
    """A thread keeps the ``threading.excepthook`` it was started under. The TensorBoard log's hook
    holds only the previous one, so what the log reports to (the trainer, its tensors) is freed
    when the log closes, not when such a thread ends, which may be during the interpreter's
    shutdown, where freeing a tensor from a non-main thread aborts the process."""
    import gc
    import threading
    import weakref

    class Run:
        def note(self, message: str) -> None:
            pass

    run, previous = Run(), threading.excepthook
    alive = weakref.ref(run)
    log = TensorBoardLog(tmp_path / "tensorboard", run.note)
    release = threading.Event()
    thread = threading.Thread(target=release.wait)
    thread.start()
    try:
        log.close()
        assert threading.excepthook is previous
        del log, run
        gc.collect()
        assert alive() is None
    finally:
        release.set()
        thread.join()


def test_only_an_os_error_of_tensorboards_writer_thread_is_kept_quiet():
    import threading

    seen = []
    hook = QuietWriterThreads(seen.append)
    writer_thread = type("Writer", (threading.Thread,), {"__module__": "tensorboard.summary.writer"})()
    other_thread = threading.Thread()
    cases = [(OSError("disk full"), writer_thread), (ValueError("bug"), writer_thread),
             (OSError("disk full"), other_thread)]
    for error, thread in cases:
        hook(threading.ExceptHookArgs((type(error), error, None, thread)))
    assert [args.exc_value for args in seen] == [cases[1][0], cases[2][0]]
