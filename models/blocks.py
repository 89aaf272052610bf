"""The window blocks of SMNet: MSAB (window attention + convolution branch + mask block) and
MaskedTB (one stage of them with a closing convolution and a residual).

Tokens are kept as B×N×C (N = H·W, row-major). ``tokens_as_image`` views them as a B×C×H×W
tensor in channels-last memory format without copying, so the convolutions and the
attention share one layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from timm.layers import DropPath, Mlp
from torch import nn

from .window_attention import WindowAttention, WindowLayout, window_layout

# The layouts of one padded image size, by (window size, shift): what ``SMNet.forward`` hands down.
WindowLayouts = Mapping[tuple[int, int], WindowLayout]


@dataclass(frozen=True)
class Chunking:
    """How inference splits a large image into pieces that run one after another."""

    windows: int  # windows per chunk of a window block (everything after its convolution branch)
    tokens: int  # tokens per chunk of a per-token map (the MLPs between and inside the stages)


INFERENCE_CHUNKING: dict[str, Chunking | None] = {
    # CPU: 64 windows of 8×8 are 4096 tokens, whose largest intermediate (the 3·C qkv projection)
    # is about 3 MB at the default width: the products work on operands in the cache.
    "cpu": Chunking(windows=64, tokens=4096),
    # GPU: a bound on memory. Attention with 10-channel heads and an additive mask runs in the
    # unfused (math) kernel, whose logits over a whole 1024×1536 image are 2.4 GB per float32
    # tensor; 2048 windows keep them at 201 MB, and the dozen chunks per block at that size
    # cost little in kernel launches. 2¹⁸ tokens bound the MLPs' hidden layers alike.
    "cuda": Chunking(windows=2048, tokens=1 << 18),
}
"""Inference chunk sizes by device type. A device type that is absent or mapped to None runs
inference on the whole image (set ``INFERENCE_CHUNKING["cpu"] = None`` to run that path on the CPU)."""


def inference_chunking(device_type: str) -> Chunking | None:
    """The chunk sizes for running on ``device_type`` now, or None for the whole-image path.

    Chunks apply to inference only: with autograd every intermediate is kept anyway."""
    if torch.is_grad_enabled():
        return None
    return INFERENCE_CHUNKING.get(device_type)


def map_token_chunks(fn: Callable[[torch.Tensor], torch.Tensor], tokens: torch.Tensor,
                     chunk: int | None = None) -> torch.Tensor:
    """``fn(tokens)`` for a per-token ``fn`` on B×N×C tokens. For inference it runs over runs of
    ``chunk`` tokens (default: the device's ``INFERENCE_CHUNKING``), so that wide intermediates
    (an MLP's hidden layer) stay in the CPU's cache, and a large image needs no full-size copy
    of them on any device."""
    chunking = inference_chunking(tokens.device.type)
    if chunking is None:
        return fn(tokens)
    chunk = chunking.tokens if chunk is None else chunk
    n = tokens.shape[1]
    if n <= chunk:
        return fn(tokens)
    out = None
    for start in range(0, n, chunk):
        part = fn(tokens[:, start:start + chunk])
        if out is None:
            out = part.new_empty(tokens.shape[0], n, part.shape[-1])
        out[:, start:start + chunk] = part
    return out


def tokens_as_image(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """B×N×C → B×C×H×W view (channels-last strides, no copy)."""
    b, _, c = tokens.shape
    return tokens.view(b, height, width, c).permute(0, 3, 1, 2)


def image_as_tokens(image: torch.Tensor) -> torch.Tensor:
    """B×C×H×W → B×N×C (a view when the image is channels-last)."""
    b, c, h, w = image.shape
    return image.permute(0, 2, 3, 1).reshape(b, h * w, c)


class ChannelAttention(nn.Module):
    """CAB: channel gate from average pooling. The pooled path is used twice (sigmoid(z + z)),
    as in the released network; there is no max-pooling path."""

    def __init__(self, dim: int, reduction: int = 4) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, dim // reduction, 1), nn.ReLU(inplace=True), nn.Conv2d(dim // reduction, dim, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Reductions run on the B×H×W×C view so that their gradients come back in the layout of
        # x (channels-last tokens); mixing layouts makes gradient accumulation several times slower.
        z = self.mlp(x.permute(0, 2, 3, 1).mean(dim=(1, 2))[..., None, None])
        return x * torch.sigmoid(z + z)


class SpatialAttention(nn.Module):
    """SAB: spatial gate from the channel mean and max, through a 7×7 convolution."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv2d = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x.permute(0, 2, 3, 1)  # B×H×W×C, see ChannelAttention
        pooled = torch.stack([pixels.mean(dim=-1), pixels.amax(dim=-1)], dim=1)
        return x * torch.sigmoid(self.conv2d(pooled))


def apply_mask_block(u: torch.Tensor, mask_map: torch.Tensor, drop_rate: float) -> torch.Tensor:
    """The mask block: with probability ``drop_rate`` (one draw shared by the batch) multiply the
    tokens by the mask map, otherwise by their own importance map sigmoid(mean over channels).

    u: B×N×C tokens; mask_map: B×N×1 (1 keep, 0 masked).
    """
    use_mask = torch.floor(torch.rand((), device=u.device) + drop_rate) > 0
    importance = torch.sigmoid(u.mean(dim=-1, keepdim=True))
    return u * torch.where(use_mask, mask_map.to(u.dtype), importance)


class MSAB(nn.Module):
    """Masked Swin attention block: (shifted) window attention, a convolution branch
    (depthwise conv → CAB + SAB → depthwise conv) on the unmasked input, and, when built with
    ``is_mask``, the mask block in front of the attention."""

    def __init__(self, dim: int, num_heads: int, window_size: int = 8, shift_size: int = 0,
                 mlp_ratio: float = 2.0, drop_path: float = 0.0, is_mask: bool = False,
                 adl_drop_rate: float = 0.75) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.is_mask = is_mask
        self.adl_drop_rate = adl_drop_rate
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.conv_cnn1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.conv_cnn2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.cab = ChannelAttention(dim)
        self.sab = SpatialAttention()

    def conv_branch(self, u: torch.Tensor, height: int, width: int) -> torch.Tensor:
        a = self.conv_cnn1(tokens_as_image(u, height, width))
        c = self.conv_cnn2(self.cab(a) + self.sab(a))
        return image_as_tokens(c)

    def attention(self, u: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
        """(Shifted) window attention on B×N×C tokens: gathers put the tokens in window order
        (the cyclic shift included), scatters put them back."""
        b, n, c = u.shape
        bias = self.attn.relative_position_bias(layout.position_index)
        out = u.new_empty(b, n, c)
        for tokens, mask in layout.chunks(layout.num_windows):  # plain windows, then shift-masked ones
            windows = u.index_select(1, tokens).view(b, -1, layout.window_area, c)
            out.index_copy_(1, tokens, self.attn(windows, mask, bias).view(b, -1, c))
        return out

    def forward(self, t: torch.Tensor, height: int, width: int, mask_map: torch.Tensor | None = None,
                layouts: WindowLayouts | None = None) -> torch.Tensor:
        """t: B×N×C tokens of a height×width image. ``layouts`` holds this block's window layout
        under (window size, shift) when the caller has fetched it (see ``SMNet.forward``)."""
        u = self.norm1(t)
        c = self.conv_branch(u, height, width)
        if self.is_mask and mask_map is not None:
            u = apply_mask_block(u, mask_map, self.adl_drop_rate)
        if layouts is None:
            layout = window_layout(height, width, self.window_size, self.shift_size, u.device)
        else:
            layout = layouts[self.window_size, self.shift_size]
        chunking = inference_chunking(t.device.type)
        if not self.training and chunking is not None:
            return self.forward_in_chunks(t, u, c, layout, chunking.windows)
        t = t + self.drop_path(self.attention(u, layout))
        return t + self.drop_path(self.mlp(self.norm2(t))) + c

    def forward_in_chunks(self, t: torch.Tensor, u: torch.Tensor, c: torch.Tensor, layout: WindowLayout,
                          windows_per_chunk: int) -> torch.Tensor:
        """Inference: everything after the convolution branch is local to a window, so it runs
        over a few windows at a time: no full-image temporaries (attention logits, MLP hidden
        layer), and on the CPU the intermediates stay in the cache. Same arithmetic as the
        training path."""
        b, _, channels = t.shape
        bias = self.attn.relative_position_bias(layout.position_index)
        out = torch.empty_like(t)
        for tokens, mask in layout.chunks(windows_per_chunk):
            windows = u.index_select(1, tokens).view(b, -1, layout.window_area, channels)
            x = t.index_select(1, tokens) + self.attn(windows, mask, bias).view(b, -1, channels)
            x = x + self.mlp(self.norm2(x)) + c.index_select(1, tokens)
            out.index_copy_(1, tokens, x)
        return out


class BlockGroup(nn.Module):
    """A sequence of MSABs; the first carries the mask block, odd ones are shifted."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 drop_path: list[float], is_mask: bool, adl_drop_rate: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            MSAB(dim, num_heads, window_size, shift_size=0 if i % 2 == 0 else window_size // 2,
                 mlp_ratio=mlp_ratio, drop_path=drop_path[i], is_mask=is_mask and i == 0,
                 adl_drop_rate=adl_drop_rate)
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor, height: int, width: int, mask_map: torch.Tensor | None,
                layouts: WindowLayouts | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, height, width, mask_map, layouts)
        return x


class MaskedTB(nn.Module):
    """One stage: the block group, a 3×3 convolution, and a residual from the stage input."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 drop_path: list[float], is_mask: bool, adl_drop_rate: float) -> None:
        super().__init__()
        self.residual_group = BlockGroup(dim, depth, num_heads, window_size, mlp_ratio, drop_path,
                                         is_mask, adl_drop_rate)
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor, height: int, width: int, mask_map: torch.Tensor | None,
                layouts: WindowLayouts | None = None) -> torch.Tensor:
        y = self.residual_group(x, height, width, mask_map, layouts)
        return image_as_tokens(self.conv(tokens_as_image(y, height, width))) + x
