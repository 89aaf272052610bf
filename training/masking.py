"""Mask and loss maps of the masked training step, built with batched tensor ops.

For every sample and every segment s in its crop, exactly round(count_s · min(r_s, 1)) of
the segment's pixels, chosen uniformly at random, are masked. Instead of looping over
segments, every pixel gets one sortable int64 key, (group << 31) | random 31 bits, where
group = sample · num_ids + segment ID. One sort brings each group's pixels together in
random order; a pixel's rank inside its group then decides whether it is masked
(rank < number to mask).

`python -m benchmarks.bench_masking` times the mask map on a training-sized batch.
"""
from __future__ import annotations

import torch

_NOISE_BITS = 31


def _check_segments(segments: torch.Tensor) -> torch.Tensor:
    if segments.dim() == 4 and segments.shape[1] == 1:
        segments = segments[:, 0]
    if segments.dim() != 3:
        raise ValueError(f"segments must be B×H×W (or B×1×H×W), got shape {tuple(segments.shape)}")
    return segments.long()


def build_mask_map(
    segments: torch.Tensor, ratio_table: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """B×1×H×W float map, 1 = keep, 0 = masked, for segment IDs `segments` (B×H×W).

    Each (sample, segment) group with `count` pixels gets exactly
    torch.round(count · clamp(ratio_table[id], 0, 1)) pixels masked, chosen uniformly at
    random and independently per sample. `torch.round` rounds half to even, like Python's
    `round` and `numpy.round`; the product is formed in float64 (float32 on MPS) from the
    table's float32 ratio. `generator` (on the tensors' device) makes the draw reproducible.
    """
    segments = _check_segments(segments)
    batch, height, width = segments.shape
    device = segments.device
    num_ids = ratio_table.numel()
    if batch * num_ids >= 2 ** (63 - _NOISE_BITS):
        raise ValueError(f"too many (sample, segment) groups for the sort key: {batch} × {num_ids}")

    flat_ids = segments.reshape(-1)
    sample = torch.arange(batch, device=device).repeat_interleave(height * width)
    group = sample * num_ids + flat_ids
    noise = torch.randint(0, 2**_NOISE_BITS, flat_ids.shape, device=device, generator=generator)
    sorted_keys, order = torch.sort((group << _NOISE_BITS) | noise)

    # Per group (in sorted order): its ID, pixel count, first sorted position and the number
    # of pixels to mask; a sorted pixel is masked when its position < start + to_mask.
    groups, group_of_sorted, counts = torch.unique_consecutive(
        sorted_keys >> _NOISE_BITS, return_inverse=True, return_counts=True
    )
    exact = torch.float32 if device.type == "mps" else torch.float64
    ratio = ratio_table.to(device).clamp(0.0, 1.0)[groups % num_ids]
    to_mask = torch.round(counts.to(exact) * ratio.to(exact)).long()
    mask_end = torch.cumsum(counts, 0) - counts + to_mask

    keep = torch.empty(flat_ids.numel(), device=device)
    keep[order] = (torch.arange(flat_ids.numel(), device=device) >= mask_end[group_of_sorted]).float()
    return keep.view(batch, 1, height, width)


def build_loss_map(segments: torch.Tensor, weight_table: torch.Tensor) -> torch.Tensor:
    """B×1×H×W float map holding w_s = weight_table[s] on the pixels of segment s."""
    segments = _check_segments(segments)
    return weight_table.to(segments.device).float()[segments].unsqueeze(1)
