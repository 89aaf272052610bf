"""Forward-pass speed of the default SMNet: median time, FLOPs, achieved FLOP/s and its share of
the machine's matmul FLOP/s (measured before each timed call, see ``benchmarks.common``).

    python -m benchmarks.bench_model                       # CPU, 128² and 256², float32
    python -m benchmarks.bench_model --device cuda --sizes 1000x1500 --dtypes float32 bfloat16
    python -m benchmarks.bench_model --sizes 256 --against_released   # vs the released code's way
    python -m benchmarks.bench_model --compile --sizes 128 256          # torch.compile, afresh per size

``--against_released`` times a transcription of the released forward pass
(``benchmarks/released_forward.py``: same weights, same output) in turn with ours, call by call,
and prints both and the median of the paired time ratios.
"""
from __future__ import annotations

import argparse
from typing import Callable

import torch

from benchmarks.common import (
    MatmulProbe,
    Timing,
    count_flops,
    describe_machine,
    paired_ratio,
    time_alternately,
)
from benchmarks.released_forward import released_forward
from models.smnet import SMNet
from utils.distributed import resolve_device

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_size(text: str) -> tuple[int, int]:
    h, _, w = text.partition("x")
    return int(h), int(w or h)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", nargs="+", default=["128", "256"], help="HxW or S for S×S")
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=sorted(DTYPES))
    parser.add_argument("--exposures", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="time torch.compile(model)")
    parser.add_argument("--compile_backend", default="inductor", help="torch.compile backend (with --compile)")
    parser.add_argument("--against_released", action="store_true",
                        help="also time the released code's forward pass, alternated with ours")
    args = parser.parse_args()

    device = resolve_device(args.device)  # as the scripts do (on the CPU: malloc keeps freed memory)
    model = SMNet().to(device).eval()
    print(f"machine: {describe_machine(device)}")
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        probe = MatmulProbe(device, dtype)
        for size in args.sizes:
            h, w = parse_size(size)
            runner = compiled(model, args.compile_backend) if args.compile else model
            x = torch.rand(args.batch, 6 * args.exposures, h, w, device=device)

            def forward(fn: Callable[..., torch.Tensor] = runner) -> torch.Tensor:
                with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    return fn(x)

            versions = {"SMNet": forward}
            counted = [lambda: forward(model)]  # the FLOPs of the plain module (compiled or not)
            if args.against_released:
                versions["released"] = lambda: forward(lambda inputs: released_forward(model, inputs))
                counted.append(versions["released"])
            flops = [count_flops(fn) for fn in counted]
            timings = time_alternately(list(versions.values()), flops, probe, repeats=args.repeats)
            for name, fn_flops, timing in zip(versions, flops, timings):
                report(f"{name} {dtype_name} {h}x{w} batch {args.batch}", fn_flops, timing)
            if args.against_released:
                print(f"SMNet / released time, median of {args.repeats} alternated pairs: "
                      f"{paired_ratio(timings[0], timings[1]):.3f}")


def compiled(model: torch.nn.Module, backend: str) -> Callable[..., torch.Tensor]:
    """A fresh ``torch.compile`` of ``model``. Each input size (and dtype) is a graph of its own,
    and past dynamo's recompile limit (8 graphs per function) further sizes would run eagerly,
    so every size starts from a reset: its compile time and graph are its own."""
    torch._dynamo.reset()
    return torch.compile(model, backend=backend)


def report(label: str, flops: int, timing: Timing) -> None:
    print(f"{label}: median {timing.seconds * 1e3:.1f} ms, {flops / 1e9:.2f} GFLOP, "
          f"{flops / timing.seconds / 1e9:.1f} GFLOP/s; matmul {timing.matmul_rate / 1e9:.1f} GFLOP/s "
          f"(median, measured before each call); share of matmul {100 * timing.share:.0f} % "
          f"(median of the calls' own shares)")


if __name__ == "__main__":
    main()
