"""Swin-style (shifted) window self-attention with a relative position bias.

The relative position index and the shift masks are derived from the window size and the
image size alone, so they are computed once per size and device and cached instead of being
stored in the module (the released checkpoints carry them as buffers; the loader drops them).
Building a layout indexes by data (which windows need the shift mask), so it happens eagerly,
outside any compiled region: ``SMNet.forward`` fetches the layouts of the padded size and hands
them to the blocks, and ``torch.compile`` only ever sees the cached tensors.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

# The logit added between tokens from different regions of the cyclically shifted image.
SHIFT_MASK_VALUE = -100.0


def relative_position_index(window_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(ws², ws²) index into the bias table: (dy + ws − 1)·(2ws − 1) + (dx + ws − 1).

    Cached per window size and device, so that a forward pass copies nothing from the host (a
    copy from pageable memory would synchronise the device in every block).
    """
    return _relative_position_index(window_size, torch.device(device))


@lru_cache(maxsize=None)
@torch.inference_mode(False)  # cached tensors must stay usable by autograd later
def _relative_position_index(window_size: int, device: torch.device) -> torch.Tensor:
    if device.type != "cpu":
        return _relative_position_index(window_size, torch.device("cpu")).to(device)
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

    ``order[i]`` is the token (row-major pixel) at position i of the windows laid out one
    after another, the cyclic shift included. Only the windows on the last row or column of
    windows mix regions of the shifted image and need the shift mask, so the layout puts the
    ``num_plain`` windows without it first and the others after them, with their masks in
    ``border_mask`` (windows×ws²×ws², 0 or −100; None when there is no shift).
    ``position_index`` is the window size's ``relative_position_index`` on the same device.
    """

    order: torch.Tensor
    window_area: int
    num_plain: int
    border_mask: torch.Tensor | None
    position_index: torch.Tensor

    @property
    def num_windows(self) -> int:
        return self.order.numel() // self.window_area

    def chunks(self, windows_per_chunk: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """(token indices, shift mask or None) for runs of at most ``windows_per_chunk``
        consecutive windows; no run mixes plain and border windows."""
        area = self.window_area
        parts = ((0, self.num_plain, None), (self.num_plain, self.num_windows, self.border_mask))
        for begin, end, mask in parts:
            for start in range(begin, end, windows_per_chunk):
                stop = min(start + windows_per_chunk, end)
                tokens = self.order[start * area:stop * area]
                yield tokens, None if mask is None else mask[start - begin:stop - begin]


_layouts: dict[tuple, WindowLayout] = {}


@torch.inference_mode(False)  # a layout first built during evaluation is reused in training
def _build_layout(height: int, width: int, window_size: int, shift: int, device: torch.device | str) -> WindowLayout:
    pixels = torch.arange(height * width).view(1, height, width, 1)
    if shift:
        pixels = torch.roll(pixels, shifts=(-shift, -shift), dims=(1, 2))
    windows = window_partition(pixels, window_size).reshape(-1, window_size**2)
    num_plain, border_mask = windows.shape[0], None
    if shift:
        mask = _shift_mask_cpu(height, width, window_size, shift)
        mixed = (mask != 0).flatten(1).any(dim=1)
        windows = torch.cat([windows[~mixed], windows[mixed]])
        num_plain = int((~mixed).sum())
        border_mask = mask[mixed].to(device)
    return WindowLayout(windows.reshape(-1).to(device), window_size**2, num_plain, border_mask,
                        relative_position_index(window_size, torch.device(device)))


@torch.compiler.disable  # built eagerly: see the module's docstring
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


def attention(qkv: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q·kᵀ·scale + bias)·v, with q, k, v = ``qkv`` (3×B×heads×L×D, usually a strided
    view of the qkv projection) and a heads×L×L or B×heads×L×L bias.

    Without gradients for the bias, PyTorch's fused kernel runs (on CPU it needs a 4-D mask,
    hence the stride-0 expand). A learnable bias would send it to its unfused fallback, so
    training uses ``BiasedAttention`` instead.
    """
    if bias.requires_grad and torch.is_grad_enabled():
        return BiasedAttention.apply(qkv, bias, scale)
    q, k, v = qkv.unbind(0)
    if bias.dim() == 3:
        bias = bias.expand(q.shape[0], *bias.shape)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


class BiasedAttention(torch.autograd.Function):
    """Attention with a learnable additive bias, for training.

    The same arithmetic as autograd through matmul + softmax, but every product is laid out so
    that its output rows are L (64) wide rather than D (the head width, 10 by default): the
    weighted sum is computed as vᵀ·pᵀ and the gradients of q, k and v transposed. Narrow outputs
    halve the speed of the CPU's batched GEMMs, and the backward pass is dominated by them.
    It takes q, k and v packed as one ``qkv`` tensor and writes their gradients straight into
    one tensor laid out like it, so the projection's gradient needs no stacking or copy.
    """

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:  # noqa: ANN001
        # One pass each into head-major order (the scale folded into q's); every product below
        # then reads them in place.
        q = torch.mul(qkv[0], scale, out=qkv.new_empty(qkv.shape[1:]))
        k, v = qkv[1].contiguous(), qkv[2].contiguous()
        logits = torch.matmul(q, k.transpose(-2, -1)).add_(bias)
        p = torch.softmax(logits, dim=-1)
        out_t = torch.matmul(v.transpose(-2, -1), p.transpose(-2, -1).to(v.dtype))
        ctx.save_for_backward(q, k, v, p)
        ctx.scale = scale
        ctx.bias_shape = bias.shape
        # The gradient is laid out like qkv where that is dense (a permuted view), otherwise
        # contiguous: empty_like's rule, kept on the meta device (no memory).
        ctx.grad_layout = torch.empty_like(qkv, device="meta")
        return out_t.transpose(-2, -1)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # noqa: ANN001, ANN205
        q_scaled, k, v, p = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_p = torch.matmul(grad_out, v.transpose(-2, -1))
        grad_v_t = torch.matmul(grad_out.transpose(-2, -1), p.to(grad_out.dtype))
        grad_logits = torch._softmax_backward_data(grad_p.to(p.dtype), p, -1, p.dtype).to(q_scaled.dtype)
        grad_q_t = torch.matmul(k.transpose(-2, -1), grad_logits.transpose(-2, -1)).mul_(ctx.scale)
        grad_k_t = torch.matmul(q_scaled.transpose(-2, -1), grad_logits)
        layout = ctx.grad_layout
        grad_qkv = torch.empty_strided(layout.shape, layout.stride(), dtype=grad_out.dtype, device=grad_out.device)
        for part, grad_t in zip(grad_qkv, (grad_q_t, grad_k_t, grad_v_t)):
            part.copy_(grad_t.transpose(-2, -1))
        extra = grad_logits.dim() - len(ctx.bias_shape)
        grad_bias = grad_logits.sum(dim=tuple(range(extra))) if extra else grad_logits
        return grad_qkv, grad_bias, None


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

    def relative_position_bias(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """heads×ws²×ws² bias gathered from the table; ``index`` is the window size's
        ``relative_position_index`` on the table's device (looked up when not given)."""
        if index is None:
            index = relative_position_index(self.window_size, self.relative_position_bias_table.device)
        area = self.window_size**2
        bias = self.relative_position_bias_table[index.view(-1)].view(area, area, -1)
        return bias.permute(2, 0, 1).contiguous()

    def forward(self, windows: torch.Tensor, shift_mask: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        """windows: B×nW×ws²×C tokens in window order → the same shape.

        ``shift_mask`` (nW×ws²×ws², 0 or −100) is added to every head's logits of windows that
        straddle the wrap-around of a cyclic shift. ``bias`` may pass in the relative position
        bias when the caller runs several chunks of windows through one block.
        """
        b, nw, area, c = windows.shape
        heads = self.num_heads
        qkv = self.qkv(windows).view(b * nw, area, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        if bias is None:
            bias = self.relative_position_bias()
        bias = bias.to(qkv.dtype)
        if shift_mask is not None:
            bias = bias + shift_mask.to(qkv.dtype).unsqueeze(1)  # nW×heads×L×L
            if b > 1:  # the windows of every sample, one after another
                bias = bias.repeat(b, 1, 1, 1)
        out = attention(qkv, bias, self.scale)
        out = out.view(b, nw, heads, area, c // heads).transpose(2, 3).reshape(b, nw, area, c)
        return self.proj(out)
