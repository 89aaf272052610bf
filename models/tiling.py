"""Choosing how a full image goes through the network: one pass when it fits in memory, else
tiles (``models.inference.reconstruct_tiled``), and how many tiles that makes.

The memory estimate is a measured constant per padded pixel and embedding channel; the budget is
a share of what the device has free, so that a photo of any size runs without an out-of-memory
failure.
"""
from __future__ import annotations

import contextlib
import os

import torch

from .inference import TEST_PAD_MULTIPLE, tile_starts

BYTES_PER_PIXEL_PER_CHANNEL = 50
"""Peak memory of a float32 one-pass forward per (padded) pixel and embedding channel: about
3 KB per pixel for the released width of 60, measured on the CPU."""
AUTO_TILES = (2048, 1024, 512, 256)
"""Tile sizes automatic tiling picks from, largest first (multiples of the padding multiple)."""
HOST_MEMORY_SHARE, DEVICE_MEMORY_SHARE = 0.5, 0.8
"""Share of the available host / free accelerator memory one forward pass may take."""


def available_memory(device: torch.device) -> int:
    """Free accelerator memory, or the host memory available to a new allocation (bytes)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    with contextlib.suppress(AttributeError, ValueError, OSError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return 8 << 30


def auto_tile(size: tuple[int, int], embed_dim: int, device: torch.device,
              multiple: int = TEST_PAD_MULTIPLE) -> int:
    """0 (one pass) when a forward over the padded image fits the memory budget, else the
    largest tile of ``AUTO_TILES`` that fits (the smallest one when none does).

    Budget: half of the available host memory on the CPU, 80 % of the free memory on CUDA.
    The estimate, ``BYTES_PER_PIXEL_PER_CHANNEL`` × pixels × width, is that of float32; mixed
    precision only adds headroom.
    """
    share = DEVICE_MEMORY_SHARE if device.type == "cuda" else HOST_MEMORY_SHARE
    budget = share * available_memory(device)
    padded = [-(-side // multiple) * multiple for side in size]
    if padded[0] * padded[1] * embed_dim * BYTES_PER_PIXEL_PER_CHANNEL <= budget:
        return 0
    return next((t for t in AUTO_TILES if t * t * embed_dim * BYTES_PER_PIXEL_PER_CHANNEL <= budget), AUTO_TILES[-1])


def tile_count(size: tuple[int, int], tile: int, overlap: int) -> int:
    """How many tiles ``reconstruct_tiled`` runs over an H×W image (1 for one pass, ``tile`` 0)."""
    if tile <= 0:
        return 1
    return len(tile_starts(size[0], tile, overlap)) * len(tile_starts(size[1], tile, overlap))
