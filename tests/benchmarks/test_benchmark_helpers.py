"""The benchmarks' FLOP count, which their reported shares of the matmul rate rest on."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from benchmarks.common import count_flops

ROOT = Path(__file__).resolve().parents[2]


def test_fused_attention_on_the_cpu_is_counted() -> None:
    batch, heads, length, width = 2, 3, 16, 8
    q, k, v = (torch.randn(batch, heads, length, width, requires_grad=True) for _ in range(3))
    bias = torch.randn(batch, heads, length, length)
    forward = 4 * batch * heads * length * length * width  # q·kᵀ and p·v
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias)) == forward
    # The backward recomputes the logits and takes four more products of the same size.
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward()) == forward + 10 * forward // 4


def test_matmuls_and_convolutions_are_counted() -> None:
    a, b = torch.randn(5, 7), torch.randn(7, 3)
    assert count_flops(lambda: a @ b) == 2 * 5 * 7 * 3
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, bias=False)
    assert count_flops(lambda: conv(torch.randn(1, 4, 10, 10))) == 2 * 100 * 6 * 4 * 9


@pytest.mark.parametrize("module", sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem != "__init__"))
def test_every_benchmark_imports(module: str) -> None:
    """The scripts run only by hand: an API they call that moved or changed must fail here."""
    importlib.import_module(f"benchmarks.{module}")

