"""Forward-pass speed of the default SMNet: median time, FLOPs, achieved FLOP/s and its share of
the machine's matmul FLOP/s (measured before each timed call, see ``benchmarks.common``).

    python benchmarks/bench_model.py                       # CPU, 128² and 256², float32
    python benchmarks/bench_model.py --device cuda --sizes 1000x1500 --dtypes float32 bfloat16
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import MatmulProbe, count_flops, describe_machine, time_against_matmul  # noqa: E402
from models.smnet import SMNet  # noqa: E402
from utils.distributed import resolve_device  # noqa: E402

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
    args = parser.parse_args()

    device = resolve_device(args.device)  # as the scripts do (on the CPU: malloc keeps freed memory)
    model = SMNet().to(device).eval()
    runner = torch.compile(model) if args.compile else model
    print(f"machine: {describe_machine(device)}")
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        probe = MatmulProbe(device, dtype)
        for size in args.sizes:
            h, w = parse_size(size)
            x = torch.rand(args.batch, 6 * args.exposures, h, w, device=device)

            def forward() -> torch.Tensor:
                with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    return runner(x)

            flops = count_flops(lambda: model_forward(model, x, device, dtype))
            timing = time_against_matmul(forward, flops, probe, repeats=args.repeats)
            print(f"{dtype_name} {h}x{w} batch {args.batch}: median {timing.seconds * 1e3:.1f} ms, "
                  f"{flops / 1e9:.2f} GFLOP, {flops / timing.seconds / 1e9:.1f} GFLOP/s; matmul {dtype_name} "
                  f"{timing.matmul_rate / 1e9:.1f} GFLOP/s (median, measured before each call); "
                  f"share of matmul {100 * timing.share:.0f} % (median of the calls' own shares)")


def model_forward(model: SMNet, x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        return model(x)


if __name__ == "__main__":
    main()
