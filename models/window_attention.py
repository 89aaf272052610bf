"""Swin-style (shifted) window self-attention with a relative position bias.

The relative position index and the shift masks are derived from the window size and the
image size alone, so they are computed once per size and cached instead of being stored in
the module (the released checkpoints carry them as buffers; the loader drops them).
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

# The logit added between tokens from different regions of the cyclically shifted image.
SHIFT_MASK_VALUE = -100.0


@lru_cache(maxsize=None)
def relative_position_index(window_size: int) -> torch.Tensor:
    """(ws², ws²) index into the bias table: (dy + ws − 1)·(2ws − 1) + (dx + ws − 1)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords = coords.flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + (window_size - 1)
    return rel[0] * (2 * window_size - 1) + rel[1]


@lru_cache(maxsize=32)
def _shift_mask_cpu(height: int, width: int, window_size: int, shift: int) -> torch.Tensor:
    regions = torch.zeros(height, width)
    bounds = (slice(0, -window_size), slice(-window_size, -shift), slice(-shift, None))
    label = 0
    for rows in bounds:
        for cols in bounds:
            regions[rows, cols] = label
            label += 1
    windows = window_partition(regions.view(1, height, width, 1), window_size).view(-1, window_size**2)
    mask = windows[:, None, :] - windows[:, :, None]
    return mask.masked_fill(mask != 0, SHIFT_MASK_VALUE)


_device_masks: dict[tuple, torch.Tensor] = {}


def shift_attention_mask(height: int, width: int, window_size: int, shift: int,
                         device: torch.device | str = "cpu") -> torch.Tensor:
    """(num_windows, ws², ws²) additive mask for a shifted block (0 or −100), cached per size and device."""
    key = (height, width, window_size, shift, str(device))
    mask = _device_masks.get(key)
    if mask is None:
        mask = _shift_mask_cpu(height, width, window_size, shift).to(device)
        if len(_device_masks) > 64:
            _device_masks.clear()
        _device_masks[key] = mask
    return mask


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """B×H×W×C → (B·nW)×ws×ws×C."""
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)


def window_reverse(windows: torch.Tensor, window_size: int, height: int, width: int) -> torch.Tensor:
    """(B·nW)×ws×ws×C → B×H×W×C."""
    c = windows.shape[-1]
    x = windows.view(-1, height // window_size, width // window_size, window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ws×ws windows, with a learned relative position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> torch.Tensor:
        """heads×ws²×ws² bias gathered from the table."""
        index = relative_position_index(self.window_size).to(self.relative_position_bias_table.device)
        area = self.window_size**2
        bias = self.relative_position_bias_table[index.view(-1)].view(area, area, -1)
        return bias.permute(2, 0, 1)

    def forward(self, windows: torch.Tensor, shift_mask: torch.Tensor | None = None) -> torch.Tensor:
        """windows: (B·nW)×ws²×C; shift_mask: nW×ws²×ws² or None."""
        bw, area, c = windows.shape
        heads = self.num_heads
        qkv = self.qkv(windows).view(bw, area, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = self.relative_position_bias().to(q.dtype)
        if shift_mask is not None:
            nw = shift_mask.shape[0]
            bias = bias.unsqueeze(0) + shift_mask.to(q.dtype).unsqueeze(1)  # nW×heads×L×L
            q, k, v = (t.view(bw // nw, nw, heads, area, -1) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        out = out.reshape(bw, heads, area, c // heads).transpose(1, 2).reshape(bw, area, c)
        return self.proj(out)
