"""ICAB: channel attention across exposures, anchored on the reference exposure.

The released network computes it on B×C×H×W images with 1×1 convolutions; here it runs on the
B×N×C tokens with the same weights used as linear maps, and the attention itself is assembled
from the tokens' C×C Gram matrix (see ``MultiExposureChannelAttention``): the same result to
float rounding, with far fewer passes over the image.
"""
from __future__ import annotations

import torch
from timm.layers import Mlp
from torch import nn

from .blocks import map_token_chunks


def channel_attention_heads(dim: int, num_exposures: int, heads_per_exposure: int = 4) -> int:
    """Head count of the channel attention for ``num_exposures`` inputs.

    The released design uses 4·n heads. Where that does not divide ``dim``, take the divisor of
    ``dim`` that is a multiple of n (so each head stays inside one exposure's channel slot) and
    closest to 4·n, the smaller on a tie. The split has no weights, so this changes no parameter.
    """
    if num_exposures < 1 or dim % num_exposures:
        supported = [n for n in range(1, dim + 1) if dim % n == 0]
        raise ValueError(
            f"{num_exposures} exposures are not supported with embed_dim={dim}: the number of exposures "
            f"must divide the embedding width; supported counts: {supported}")
    wanted = heads_per_exposure * num_exposures
    if dim % wanted == 0:
        return wanted
    candidates = [h for h in range(num_exposures, dim + 1, num_exposures) if dim % h == 0]
    return min(candidates, key=lambda h: (abs(h - wanted), h))


class ChannelLayerNorm(nn.Module):
    """Per-pixel LayerNorm over channels (biased variance, eps 1e-5), kept under ``body`` as in
    the released checkpoints."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.body(tokens)


class MultiExposureChannelAttention(nn.Module):
    """MCA: queries from the reference exposure's channel slot (tiled over the n slots), keys and
    values from all channels; attention between channels, per head, over the whole image.

    Every quantity the attention needs from the pixels is linear in the Gram matrix G = wᵀw of
    the normalised tokens (C×C), so that is the only product over the image before the output:

    - q = anchor·Wqᵀ and k = w·Wkᵀ, hence qᵀk = Wq·G[anchor, :]·Wkᵀ;
    - their L2 norms over the pixels are the diagonals of Wq·G[anchor, anchor]·Wqᵀ and Wk·G·Wkᵀ;
    - out = project_out(attention·v) = w·(Wo·blockdiag(attention)·Wv)ᵀ, one C×C map per sample.

    Same arithmetic as the released convolutions (to float rounding) with two passes over the
    pixels instead of six, and no products with a 5-wide output over the whole image.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q = nn.Conv2d(dim, dim, 1, bias=False)
        self.k = nn.Conv2d(dim, dim, 1, bias=False)
        self.v = nn.Conv2d(dim, dim, 1, bias=False)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, w: torch.Tensor, num_exposures: int, num_heads: int) -> torch.Tensor:
        """w: B×N×C normalised tokens → B×N×C."""
        with torch.autocast(w.device.type, enabled=False):
            mixing = self.channel_mixing(w.float(), num_exposures, num_heads)
        return torch.matmul(w, mixing.to(w.dtype).transpose(1, 2))

    def channel_mixing(self, w: torch.Tensor, num_exposures: int, num_heads: int) -> torch.Tensor:
        """B×C×C map Wo·blockdiag(attention)·Wv from float32 tokens. The forward runs it outside
        autocast: the Gram matrix sums over every pixel and would overflow float16 (65504) on
        large images."""
        b, _, c = w.shape
        slot = c // num_exposures
        ref = num_exposures // 2
        anchor = slice(ref * slot, (ref + 1) * slot)
        d = c // num_heads
        # conv_q applied to the anchor tiled n times equals the sum of its column blocks applied once.
        w_q = self.q.weight.float().view(c, num_exposures, slot).sum(dim=1)
        w_k, w_v, w_out = (conv.weight.float().view(c, c) for conv in (self.k, self.v, self.project_out))

        gram = torch.matmul(w.transpose(1, 2), w)  # B×C×C
        gram_anchor = gram[:, anchor]
        q_norm = _norm_from_gram(w_q, gram_anchor[:, :, anchor])
        k_norm = _norm_from_gram(w_k, gram)
        q_gram = torch.matmul(w_q, gram_anchor).view(b, num_heads, d, c)
        logits = torch.einsum("bhic,hjc->bhij", q_gram, w_k.view(num_heads, d, c))
        logits = logits / (q_norm.view(b, num_heads, d, 1) * k_norm.view(b, num_heads, 1, d))
        attn = logits.softmax(dim=-1)
        return torch.einsum("chi,bhij,hje->bce", w_out.view(c, num_heads, d), attn, w_v.view(num_heads, d, c))


def _norm_from_gram(weight: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """‖x·weightᵀ‖ over the pixels, per output channel, from G = xᵀx; clamped like F.normalize."""
    squared = torch.einsum("ci,bij,cj->bc", weight, gram, weight)
    return squared.clamp_min(1e-24).sqrt()


class ICAB(nn.Module):
    """Channel attention block: f = v + MCA(norm1_x(v)); f + MLP(norm2(f)).

    ``norm1_y`` exists in the released checkpoints but is never used; it is kept so they load.
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1_x = ChannelLayerNorm(dim)
        self.norm1_y = ChannelLayerNorm(dim)
        self.attn = MultiExposureChannelAttention(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, v: torch.Tensor, num_exposures: int, num_heads: int) -> torch.Tensor:
        f = v + self.attn(self.norm1_x(v), num_exposures, num_heads)
        return map_token_chunks(self.feed_forward, f)

    def feed_forward(self, f: torch.Tensor) -> torch.Tensor:
        return f + self.mlp(self.norm2(f))
