"""Speed of window attention alone at SMNet's shapes (8×8 windows, 6 heads of 10 channels), and
the ceiling it puts on the whole forward pass.

    python -m benchmarks.bench_attention                  # the windows of one 256×256 image
    python -m benchmarks.bench_attention --device cuda --windows 23436

Attention is about 12 % of the network's FLOPs, but its products are tiny (64×64 logits over
10 channels), so it runs far below the machine's matmul rate. The script times the kernels the
network uses (fused attention for inference, ``BiasedAttention`` forward + backward for
training) next to autograd through the plain formula, and prints the best share of matmul the
forward could reach if everything else ran at the full matmul rate, and the share it reaches
with the window attention taking no time at all.
"""
from __future__ import annotations

import argparse
from unittest.mock import patch

import torch

from benchmarks.common import (
    MatmulProbe,
    count_flops,
    describe_machine,
    time_against_matmul,
    time_alternately,
)
from models import window_attention
from models.smnet import SMNet
from models.window_attention import BiasedAttention, attention
from utils.distributed import resolve_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--windows", type=int, default=1024, help="8×8 windows (1024: one 256×256 image)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    device = resolve_device(args.device)
    heads, area, width = 6, 64, 10
    generator = torch.Generator().manual_seed(0)
    qkv = torch.randn(args.windows, area, 3, heads, width, generator=generator).to(device)  # projection output
    packed = qkv.permute(2, 0, 3, 1, 4)  # 3×windows×heads×L×D: the network's strided view
    bias = torch.randn(heads, area, area, generator=generator).to(device)
    scale = width**-0.5
    flops = 4 * args.windows * heads * area * area * width  # two products, as flop_counter counts them

    probe = MatmulProbe(device)
    print(f"machine: {describe_machine(device)}")
    print(f"{args.windows} windows × {heads} heads, {area} tokens, {width} channels per head, float32 "
          f"(matmul rate measured before each call):")

    def report(name: str, fn, work: int) -> float:  # noqa: ANN001
        timing = time_against_matmul(fn, work, probe, repeats=args.repeats)
        print(f"  {name}: {timing.seconds * 1e3:.1f} ms, {work / timing.seconds / 1e9:.1f} GFLOP/s = "
              f"{100 * timing.share:.0f} % of matmul ({timing.matmul_rate / 1e9:.1f} GFLOP/s)")
        return timing.share

    def explicit(packed: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        q, k, v = packed.unbind(0)
        return torch.softmax(torch.matmul(q * scale, k.transpose(-2, -1)) + bias, dim=-1) @ v

    with torch.inference_mode():
        fused_share = report("inference, fused (the network's path)", lambda: attention(packed, bias, scale), flops)
        report("inference, matmul + softmax", lambda: explicit(packed, bias), flops)

    leaves = [t.detach().clone().requires_grad_() for t in (qkv, bias)]

    def train_step(fn) -> None:  # noqa: ANN001
        fn(leaves[0].permute(2, 0, 3, 1, 4), leaves[1]).sum().backward()
        for leaf in leaves:
            leaf.grad = None

    report("training forward + backward, BiasedAttention (the network's path)",
           lambda: train_step(lambda packed, bias: BiasedAttention.apply(packed, bias, scale)), 3 * flops)
    report("training forward + backward, autograd through the formula", lambda: train_step(explicit), 3 * flops)

    # The forward pass of the default network on a 256×256 image: its attention FLOPs run at the
    # fused kernel's share of matmul at best, so even at the matmul rate everywhere else (time
    # measured in units of matmul time) its share is bounded.
    model = SMNet().eval().to(device)
    image = torch.rand(1, 18, 256, 256, device=device)
    with torch.inference_mode():
        total = count_flops(lambda: model(image))
    attention_flops = 24 * 4 * 1024 * heads * area * area * width
    best_share = total / (attention_flops / fused_share + total - attention_flops)
    print(f"forward of SMNet at 256×256: {total / 1e9:.1f} GFLOP, of which attention {attention_flops / 1e9:.1f}; "
          f"with attention at the fused kernel's share and everything else at the matmul rate it would reach "
          f"{100 * best_share:.0f} % of matmul at most")

    # The other way round: the forward as it is, but with the window attention taking no time
    # (zeros instead of its result) and still credited with all its FLOPs.
    def forward() -> None:
        with torch.inference_mode():
            model(image)

    def forward_without_attention() -> None:
        with patch.object(window_attention, "attention", lambda qkv, bias, scale: torch.zeros_like(qkv[0])):
            forward()

    timings = time_alternately([forward, forward_without_attention], [total, total], probe, repeats=args.repeats)
    print(f"forward of SMNet at 256×256 as it is: {timings[0].seconds:.2f} s, {100 * timings[0].share:.0f} % of "
          f"matmul; with the window attention taking no time: {timings[1].seconds:.2f} s, "
          f"{100 * timings[1].share:.0f} % (all {total / 1e9:.1f} GFLOP counted as done)")


if __name__ == "__main__":
    main()
