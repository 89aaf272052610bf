"""The training loop's own ceiling: samples per second of the real trainer when the network
costs nothing.

    python -m benchmarks.bench_trainer_ceiling                   # CPU, --num_workers 2, 128² crops, batch 8
    python -m benchmarks.bench_trainer_ceiling --device cuda --num_workers 8

``training.trainer.Trainer`` runs as ``train_phase2.py`` would (its loader and workers, the
network input made from the LDR codes on the device, mask maps from the curriculum and the
guided tables, their metric-guided update, the loss, Adam, the per-step checks, train.log,
TensorBoard and a checkpoint per epoch), on generated 1000×1500 scenes in the Kalantari
layout, with the network replaced by ``FreeNet``: a per-channel scale and offset (a depthwise 1×1
convolution) of the reference exposure's LDR channels followed by a sigmoid, so gradients flow
and Adam has something to update. The
perceptual term is off (``--le_lambda 0``: VGG-19 is a network too) and there is no test split.

Printed: the trainer's own samples per second of each epoch (its step loop), their median
after the first epoch (workers starting, caches filling), and the run's wall time. On a machine
shared with other work the wall-clock figure depends on what else runs, so the CPU time of the
training process in its step loops is printed too (the loop's ceiling with a core of its own:
batch / CPU seconds per step), and the loader workers' CPU time per sample.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.bench_loader import write_scenes
from benchmarks.common import describe_machine
from datasets.preprocess import CHANNELS_PER_EXPOSURE
from training import trainer as trainer_module
from training.options import parse_args


class FreeNet(nn.Module):
    """A network that costs nothing: sigmoid(scale · reference LDR + offset), per channel.

    It carries what the trainer reads from a network (``config``, ``embed_dim``,
    ``ca_heads_per_exposure``) and accepts the mask map, which it ignores."""

    def __init__(self, **config: Any) -> None:
        super().__init__()
        self.config = dict(config)
        self.embed_dim = int(config.get("embed_dim", 60))
        self.ca_heads_per_exposure = 4
        self.scale = nn.Parameter(torch.ones(1, 3, 1, 1))
        self.offset = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, mask_map: torch.Tensor | None = None) -> torch.Tensor:
        reference = (x.shape[1] // CHANNELS_PER_EXPOSURE) // 2
        start = CHANNELS_PER_EXPOSURE * reference + 3
        return torch.sigmoid(torch.addcmul(self.offset, self.scale, x[:, start:start + 3]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--size", type=int, nargs=2, default=(1000, 1500), metavar=("H", "W"))
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=400, help="crops per scene and epoch")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--progress", action="store_true",
                        help="show the progress bar (it reads the loss every 50 steps)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the training process (default 1: on a 2-core machine the two loader "
                             "workers take the other core, and more threads than free cores stall every parallel op)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    trainer_module.SMNet = FreeNet  # the trainer builds its network through this name
    loop_cpu: list[float] = []
    real_epoch, real_update = trainer_module.Trainer.train_epoch, trainer_module.metric_guided_update

    def timed_epoch(self: Any, *epoch_args: Any, **kwargs: Any) -> dict[str, float]:
        loop_cpu.append(-time.process_time())
        stats = real_epoch(self, *epoch_args, **kwargs)
        loop_cpu[-1] += time.process_time()
        return stats

    def timed_update(*update_args: Any, **kwargs: Any) -> int:
        start = time.process_time()
        updated = real_update(*update_args, **kwargs)
        loop_cpu[-1] -= time.process_time() - start  # the step loop's share only
        return updated

    trainer_module.Trainer.train_epoch = timed_epoch
    trainer_module.metric_guided_update = timed_update
    with tempfile.TemporaryDirectory() as temporary:
        data = write_scenes(Path(temporary) / "data", args.scenes, tuple(args.size))
        argv = ["--dataset_dir", str(data), "--logdir", str(Path(temporary) / "run"), "--test_path", "none",
                "--device", args.device, "--num_workers", str(args.num_workers), "--train_patch_size", str(args.patch),
                "--batch_size", str(args.batch), "--repeat", str(args.repeat), "--phase1_epochs", "0",
                "--epochs", str(args.epochs), "--le_lambda", "0", "--save_interval", "1000"]
        argv += [] if args.progress else ["--no_progress"]
        start = time.perf_counter()
        trainer = trainer_module.Trainer(parse_args(2, argv))
        state = trainer.run()
        wall = time.perf_counter() - start
        device = trainer.device
    rates = [entry["samples_per_second"] for entry in state.history]
    steps = args.scenes * args.repeat // args.batch
    workers_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers have ended with the run
    print(f"machine: {describe_machine(device)} in the training process; --num_workers {args.num_workers}, "
          f"batch {args.batch}, "
          f"{args.patch}² crops of 3 exposures, {args.scenes} scenes of {args.size[0]}×{args.size[1]}, "
          f"{steps} steps per epoch, phase 2 (mask maps, guided tables)")
    print("samples/s per epoch (the trainer's step loop):", ", ".join(f"{rate:.0f}" for rate in rates))
    print(f"median after the first epoch: {statistics.median(rates[1:] or rates):.0f} samples/s; "
          f"run {wall:.1f} s wall for {len(rates) * steps * args.batch} samples "
          f"({len(rates) * steps * args.batch / wall:.0f} samples/s with setup, guided updates and checkpoints)")
    per_step = statistics.median(loop_cpu[1:] or loop_cpu) / steps
    print(f"training process: {1e3 * per_step:.1f} ms CPU per step in the step loop (median epoch after the first): "
          f"{args.batch / per_step:.0f} samples/s with a core of its own")
    if args.num_workers:
        samples = len(rates) * steps * args.batch
        print(f"loader workers: {1e6 * (workers_cpu.ru_utime + workers_cpu.ru_stime) / samples:.0f} µs CPU per sample")


if __name__ == "__main__":
    main()
