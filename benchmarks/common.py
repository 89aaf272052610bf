"""Shared timing helpers for the benchmark scripts: medians, FLOP counts, the machine's matmul peak."""
from __future__ import annotations

import platform
import statistics
import time
from typing import Callable, NamedTuple, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from utils.distributed import synchronize


def median_time(fn: Callable[[], object], device: torch.device, repeats: int = 5, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in seconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# PyTorch's FLOP counter has formulas for the CUDA attention kernels but none for the CPU's
# fused kernel, which it would count as zero; these are the same formulas (shapes in, FLOPs out).
_CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
        lambda query, key, value, *args, out_shape=None, **kwargs: sdpa_flop_count(query, key, value),
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda grad_out, query, key, value, *args, out_shape=None, **kwargs:
            sdpa_backward_flop_count(grad_out, query, key, value),
}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call as counted by ``torch.utils.flop_counter`` (matmuls, convolutions,
    attention, the CPU's fused attention included)."""
    with FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION_FLOPS) as counter:
        fn()
    return counter.get_total_flops()


class MatmulProbe:
    """The machine's achieved dense matmul FLOP/s for square ``size`` matrices, measured on demand.

    Shared machines drift in speed by tens of percent from one minute to the next, so the
    benchmarks measure it next to every timed call and relate each call to its own moment.
    """

    def __init__(self, device: torch.device, dtype: torch.dtype = torch.float32, size: int = 2048) -> None:
        self.device = device
        self.a = torch.randn(size, size, device=device, dtype=dtype)
        self.b = torch.randn(size, size, device=device, dtype=dtype)
        self.flops = 2 * size**3

    def rate(self, repeats: int = 3) -> float:
        """Median FLOP/s of ``repeats`` products (after one warm-up)."""
        return self.flops / median_time(lambda: self.a @ self.b, self.device, repeats=repeats, warmup=1)


class Timing(NamedTuple):
    seconds: float  # median time of one call
    matmul_rate: float  # median matmul FLOP/s measured between the calls
    share: float  # median over the calls of (FLOPs / time) / (matmul FLOP/s measured just before)
    calls: tuple[float, ...]  # every timed call's seconds, in order


def time_against_matmul(fn: Callable[[], object], flops: int, probe: MatmulProbe, repeats: int = 5,
                        warmup: int = 2) -> Timing:
    """Times ``fn()`` ``repeats`` times, measuring the matmul rate before each call; its share of
    the matmul rate is taken call by call, so that a drift of the machine cancels out."""
    return time_alternately([fn], [flops], probe, repeats, warmup)[0]


def time_alternately(fns: Sequence[Callable[[], object]], flops: Sequence[int], probe: MatmulProbe,
                     repeats: int = 5, warmup: int = 2) -> list[Timing]:
    """``time_against_matmul`` for several functions called in turn (f1, f2, …, f1, f2, …), so
    that versions compared with each other meet the same moments of the machine; compare them by
    ``paired_ratio``."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    synchronize(probe.device)
    times: list[list[float]] = [[] for _ in fns]
    rates: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, fn_times, fn_rates in zip(fns, times, rates):
            fn_rates.append(probe.rate())
            start = time.perf_counter()
            fn()
            synchronize(probe.device)
            fn_times.append(time.perf_counter() - start)
    timings = []
    for fn_flops, fn_times, fn_rates in zip(flops, times, rates):
        shares = [fn_flops / seconds / rate for seconds, rate in zip(fn_times, fn_rates)]
        timings.append(Timing(statistics.median(fn_times), statistics.median(fn_rates), statistics.median(shares),
                              tuple(fn_times)))
    return timings


def paired_ratio(new: Timing, old: Timing) -> float:
    """Median over the alternated calls of new time / old time (below 1: new is faster)."""
    return statistics.median(a / b for a, b in zip(new.calls, old.calls))


def describe_machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}")


def voronoi_segments(batch: int, size: int, per_crop: int, num_ids: int,
                     generator: torch.Generator) -> torch.Tensor:
    """B×size×size segment IDs for benchmarks: ``per_crop`` irregular (Voronoi) cells per crop,
    their IDs drawn from ``num_ids``; on the generator's device."""
    device = generator.device
    seeds = torch.randint(0, num_ids, (batch, per_crop), generator=generator, device=device)
    centres = torch.rand(batch, per_crop, 2, generator=generator, device=device) * size
    ys, xs = torch.meshgrid(torch.arange(size, device=device), torch.arange(size, device=device), indexing="ij")
    grid = torch.stack([ys, xs], -1).float().view(1, -1, 1, 2)
    nearest = (grid - centres.view(batch, 1, -1, 2)).square().sum(-1).argmin(-1)
    return torch.gather(seeds, 1, nearest).view(batch, size, size)
