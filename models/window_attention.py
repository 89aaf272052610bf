"""Swin-style (shifted) window self-attention with a relative position bias.

The relative position index and the shift masks are derived from the window size and the
image size alone, so they are computed once per size and cached instead of being stored in
the module (the released checkpoints carry them as buffers; the loader drops them).
"""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

# The logit added between tokens from different regions of the cyclically shifted image.
SHIFT_MASK_VALUE = -100.0


@lru_cache(maxsize=None)
@torch.inference_mode(False)  # cached tensors must stay usable by autograd later
def relative_position_index(window_size: int) -> torch.Tensor:
    """(ws², ws²) index into the bias table: (dy + ws − 1)·(2ws − 1) + (dx + ws − 1)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords = coords.flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + (window_size - 1)
    return rel[0] * (2 * window_size - 1) + rel[1]


@lru_cache(maxsize=32)
@torch.inference_mode(False)
def _shift_mask_cpu(height: int, width: int, window_size: int, shift: int) -> torch.Tensor:
    regions = torch.zeros(height, width)
    bounds = (slice(0, -window_size), slice(-window_size, -shift), slice(-shift, None))
    label = 0
    for rows in bounds:
        for cols in bounds:
            regions[rows, cols] = label
            label += 1
    windows = window_partition(regions.view(1, height, width, 1), window_size).reshape(-1, window_size**2)
    mask = windows[:, None, :] - windows[:, :, None]
    return mask.masked_fill(mask != 0, SHIFT_MASK_VALUE)


class WindowLayout(NamedTuple):
    """Where the tokens of one (shifted) window partition come from, for one image size.

    ``order[i]`` is the token (row-major pixel) that lands at position i of the windows laid
    out one after another, the cyclic shift included; ``inverse`` undoes it. Only windows on
    the last row or column of windows mix regions of the shifted image, so only they
    (``border``) need the shift mask (``border_mask``: len(border)×ws²×ws², 0 or −100).
    """

    order: torch.Tensor
    inverse: torch.Tensor
    border: torch.Tensor | None
    border_mask: torch.Tensor | None


_layouts: dict[tuple, WindowLayout] = {}


@torch.inference_mode(False)  # a layout first built during evaluation is reused in training
def _build_layout(height: int, width: int, window_size: int, shift: int, device: torch.device | str) -> WindowLayout:
    pixels = torch.arange(height * width).view(1, height, width, 1)
    if shift:
        pixels = torch.roll(pixels, shifts=(-shift, -shift), dims=(1, 2))
    order = window_partition(pixels, window_size).reshape(-1)
    border = border_mask = None
    if shift:
        mask = _shift_mask_cpu(height, width, window_size, shift)
        border = (mask != 0).flatten(1).any(dim=1).nonzero().flatten()
        border_mask = mask[border]
    return WindowLayout(*(None if t is None else t.to(device)
                          for t in (order, torch.argsort(order), border, border_mask)))


def window_layout(height: int, width: int, window_size: int, shift: int,
                  device: torch.device | str = "cpu") -> WindowLayout:
    """The cached ``WindowLayout`` of an image size, window size and shift on ``device``."""
    key = (height, width, window_size, shift, str(device))
    layout = _layouts.get(key)
    if layout is None:
        layout = _build_layout(height, width, window_size, shift, device)
        if len(_layouts) > 64:
            _layouts.clear()
        _layouts[key] = layout
    return layout


def shift_attention_mask(height: int, width: int, window_size: int, shift: int,
                         device: torch.device | str = "cpu") -> torch.Tensor:
    """(num_windows, ws², ws²) additive mask of a shifted block (0 or −100), as the released
    network stores it in its ``attn_mask`` buffers."""
    return _shift_mask_cpu(height, width, window_size, shift).to(device)


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """B×H×W×C → (B·nW)×ws×ws×C."""
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q·kᵀ·scale + bias)·v for B×heads×L×D inputs and a heads×L×L or B×heads×L×L bias.

    Without gradients for the bias, PyTorch's fused kernel runs (on CPU it needs a 4-D mask,
    hence the stride-0 expand); a learnable bias would send it to its unfused fallback, which
    is slower than these three plain operations.
    """
    if bias.dim() == 3:
        bias = bias.expand(q.shape[0], *bias.shape)
    if bias.requires_grad and torch.is_grad_enabled():
        logits = torch.matmul(q * scale, k.transpose(-2, -1)) + bias
        return torch.matmul(logits.softmax(dim=-1), v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


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
        return bias.permute(2, 0, 1).contiguous()

    def forward(self, windows: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
        """windows: B×nW×ws²×C (tokens already in window order) → the same shape."""
        b, nw, area, c = windows.shape
        heads = self.num_heads
        qkv = self.qkv(windows).view(b * nw, area, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = self.relative_position_bias().to(q.dtype)
        out = attention(q, k, v, bias, self.scale)
        if layout.border is not None:
            # Windows that straddle the wrap-around of the shift: again, with the shift mask.
            border = layout.border
            q, k, v = (t.view(b, nw, heads, area, -1)[:, border].flatten(0, 1) for t in (q, k, v))
            masked_bias = (bias + layout.border_mask.to(q.dtype).unsqueeze(1)).repeat(b, 1, 1, 1)
            fixed = attention(q, k, v, masked_bias, self.scale)
            out = out.view(b, nw, heads, area, -1).index_copy(1, border, fixed.view(b, -1, heads, area, c // heads))
        out = out.reshape(b, nw, heads, area, c // heads).transpose(2, 3).reshape(b, nw, area, c)
        return self.proj(out)
