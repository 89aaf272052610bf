"""Speed of one masked training step of the default SMNet: median step time split into mask-map
construction, forward (with the loss) and backward + Adam, its FLOPs, and the achieved share
of the machine's matmul FLOP/s (measured before each step).

    python -m benchmarks.bench_train                          # CPU: batch 4, 128², 3 exposures
    python -m benchmarks.bench_train --device cuda --batch 8 --amp bf16
    python -m benchmarks.bench_train --against_released   # forward + backward vs the released code's way

``--against_released`` then times forward + loss + backward of ours and of a transcription of the
released forward pass (``benchmarks/released_forward.py``) in turn, call by call.
"""
from __future__ import annotations

import argparse
import statistics
from typing import Callable

import torch

from benchmarks.common import (
    MatmulProbe,
    count_flops,
    describe_machine,
    paired_ratio,
    time_alternately,
    voronoi_segments,
)
from benchmarks.released_forward import released_forward
from models.inference import resolve_amp
from models.smnet import SMNet
from training.losses import HDRLoss
from training.trainer import StepTimes, training_step
from utils.distributed import resolve_device

NUM_IDS = 5000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--exposures", type=int, default=3)
    parser.add_argument("--segments", type=int, default=20, help="segments per crop")
    parser.add_argument("--mask_ratio", type=float, default=0.5)
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--against_released", action="store_true",
                        help="also compare forward + backward with the released code's way, alternated")
    args = parser.parse_args()

    device = resolve_device(args.device)  # as the scripts do (on the CPU: malloc keeps freed memory)
    generator = torch.Generator().manual_seed(0)
    batch = {
        "input": torch.rand(args.batch, 6 * args.exposures, args.size, args.size, generator=generator),
        "label": torch.rand(args.batch, 3, args.size, args.size, generator=generator),
        "segments": voronoi_segments(args.batch, args.size, args.segments, NUM_IDS, generator),
    }
    ratio_table = torch.full((NUM_IDS,), args.mask_ratio, device=device)
    weight_table = torch.ones(NUM_IDS, device=device)
    model = SMNet(is_mask=True).to(device).train()
    loss_fn = HDRLoss(0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    amp, note = resolve_amp(args.amp, device)
    if note:
        print(note)
    scaler = grad_scaler(amp, device)
    mask_generator = torch.Generator(device=device).manual_seed(0)

    def step(times: StepTimes | None = None) -> None:
        training_step(model, batch, loss_fn, optimizer, ratio_table, weight_table, device, amp, scaler,
                      mask_generator, times)

    def forward_backward(net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = model) -> None:
        model.zero_grad(set_to_none=True)
        inputs = batch["input"].to(device)
        out = net(inputs, torch.ones_like(inputs[:, :1]))
        loss_fn(out, batch["label"].to(device))["loss"].backward()

    flops = count_flops(forward_backward)
    optimizer.zero_grad(set_to_none=True)
    probe = MatmulProbe(device)
    for _ in range(2):
        step()
    totals, parts, rates = [], [], []
    for _ in range(args.steps):
        rates.append(probe.rate())  # the machine's speed drifts: each step is related to its own moment
        times = StepTimes()
        step(times)
        parts.append(times)
        totals.append(times.mask_map + times.forward + times.backward)
    median_index = sorted(range(len(totals)), key=totals.__getitem__)[len(totals) // 2]
    seconds = statistics.median(totals)
    median_parts = parts[median_index]
    share = statistics.median(flops / total / rate for total, rate in zip(totals, rates))
    print(f"machine: {describe_machine(device)}")
    print(f"matmul float32: {statistics.median(rates) / 1e9:.1f} GFLOP/s (median, measured before each step)")
    print(f"training step, default SMNet, batch {args.batch}, {args.size}x{args.size}, {args.exposures} exposures, "
          f"mask ratio {args.mask_ratio} over ~{args.segments} segments per crop, le_lambda 0, amp {amp or 'fp32'}:")
    print(f"  median step {seconds * 1e3:.0f} ms over {args.steps} steps: mask map "
          f"{median_parts.mask_map * 1e3:.1f} ms ({100 * median_parts.mask_map / seconds:.2f} %), forward + loss "
          f"{median_parts.forward * 1e3:.0f} ms, backward + Adam {median_parts.backward * 1e3:.0f} ms")
    print(f"  {flops / 1e9:.1f} GFLOP per step (forward + backward), {flops / seconds / 1e9:.1f} GFLOP/s; "
          f"share of matmul {100 * share:.0f} % (median of the steps' own shares)")
    if args.against_released:
        compare_with_released(model, forward_backward, probe, args.steps)


def grad_scaler(amp: str | None, device: torch.device) -> torch.amp.GradScaler | None:
    """A loss scaler for float16 autocast on CUDA; None otherwise (bfloat16 and float32 need none,
    and ``resolve_amp`` runs fp16 in float32 on other devices)."""
    if amp == "fp16" and device.type == "cuda":
        return torch.amp.GradScaler(device.type)
    return None


def compare_with_released(model: SMNet, forward_backward: Callable[..., None], probe: MatmulProbe,
                          repeats: int) -> None:
    """Forward + loss + backward (all-ones mask map, no optimiser step) of ours and of the released
    way, in turn."""
    def released() -> None:
        forward_backward(lambda inputs, mask_map: released_forward(model, inputs, mask_map))

    versions = {"SMNet": forward_backward, "released": released}
    flops = [count_flops(fn) for fn in versions.values()]
    timings = time_alternately(list(versions.values()), flops, probe, repeats=repeats, warmup=1)
    for (name, _), fn_flops, timing in zip(versions.items(), flops, timings):
        print(f"  forward + backward, {name}: median {timing.seconds * 1e3:.0f} ms, {fn_flops / 1e9:.1f} GFLOP, "
              f"share of matmul {100 * timing.share:.0f} %")
    print(f"  SMNet / released time, median of {repeats} alternated pairs: {paired_ratio(timings[0], timings[1]):.3f}")


if __name__ == "__main__":
    main()
