"""The forward pass of SMNet written the way the released code computes it, for comparison.

A plain transcription of docs/METHOD.md in the released network's style, run over the parameters of an
``SMNet`` (it has none of its own): the shallow extractor on each exposure separately, token ↔
image reshapes around every convolution, a window partition and reverse with ``torch.roll`` in
every block, a materialised shift mask for the image size, explicit softmax attention, average
pooling in the channel gate, and the channel attention across exposures with 1×1 convolutions on
the whole image. ``--against_released`` in ``benchmarks/bench_model.py`` and
``benchmarks/bench_train.py`` times our network against it, and the tests check that both compute
the same thing (outputs and gradients).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.blocks import MSAB, MaskedTB
from models.channel_attention import ICAB, MultiExposureChannelAttention, channel_attention_heads
from models.smnet import SMNet


def released_forward(model: SMNet, x: torch.Tensor, mask_map: torch.Tensor | None = None) -> torch.Tensor:
    """SMNet's output for x (B×6n×H×W, H and W multiples of the window size), computed the
    released way. Mask blocks apply when the model was built with ``is_mask`` and a mask is given."""
    n = model.num_exposures(x)
    b, _, h, w = x.shape
    e, c_in = model.embed_dim, model.in_chans
    if h % model.window_size or w % model.window_size:
        raise ValueError(f"the released forward needs H and W divisible by {model.window_size}, got {h}×{w}")
    heads = channel_attention_heads(e, n, model.ca_heads_per_exposure)
    features = [model.conv_first(x[:, i * c_in:(i + 1) * c_in]) for i in range(n)]
    slots = torch.cat([torch.stack(f.chunk(n, dim=1)).mean(dim=0) for f in features], dim=1)
    x0 = model.patch_embed.norm(to_tokens(slots))
    t = model.mlp(x0)
    for stage, channel_block, mlp in zip(model.layers, model.channel_layers, model.mlps):
        t = masked_tb(stage, t, h, w, mask_map)
        t = mlp(icab(channel_block, to_image(t + x0, h, w), n, heads))
    body = to_image(model.norm(t), h, w)
    return torch.sigmoid(model.conv_end(model.conv_after_body(body) + model.conv_skip(features[n // 2])))


def to_tokens(image: torch.Tensor) -> torch.Tensor:
    return image.flatten(2).transpose(1, 2)


def to_image(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, c = tokens.shape
    return tokens.transpose(1, 2).view(b, c, h, w)


def masked_tb(stage: MaskedTB, t: torch.Tensor, h: int, w: int, mask_map: torch.Tensor | None) -> torch.Tensor:
    y = t
    for block in stage.residual_group.blocks:
        y = msab(block, y, h, w, mask_map)
    return to_tokens(stage.conv(to_image(y, h, w))) + t


def msab(block: MSAB, t: torch.Tensor, h: int, w: int, mask_map: torch.Tensor | None) -> torch.Tensor:
    b, _, c = t.shape
    ws, shift = block.window_size, block.shift_size
    u = block.norm1(t).view(b, h, w, c)
    a = block.conv_cnn1(u.permute(0, 3, 1, 2))
    z = block.cab.mlp(F.adaptive_avg_pool2d(a, 1))
    cab = a * torch.sigmoid(z + z)
    sab = a * torch.sigmoid(block.sab.conv2d(torch.cat([a.mean(dim=1, keepdim=True), a.amax(dim=1, keepdim=True)], 1)))
    conv_branch = to_tokens(block.conv_cnn2(cab + sab))
    if block.is_mask and mask_map is not None:
        importance = torch.sigmoid(u.mean(dim=-1, keepdim=True)).permute(0, 3, 1, 2)
        use_mask = torch.floor(torch.rand(1, device=t.device) + block.adl_drop_rate)
        u = u * ((1 - use_mask) * importance + use_mask * mask_map).permute(0, 2, 3, 1)
    if shift:
        u = torch.roll(u, shifts=(-shift, -shift), dims=(1, 2))
    windows = partition(u, ws).view(-1, ws * ws, c)
    mask = shift_mask(h, w, ws, shift).to(t.device) if shift else None
    attended = window_attention(block, windows, mask).view(-1, ws, ws, c)
    u = reverse(attended, ws, h, w)
    if shift:
        u = torch.roll(u, shifts=(shift, shift), dims=(1, 2))
    t = t + block.drop_path(u.reshape(b, h * w, c))
    return t + block.drop_path(block.mlp(block.norm2(t))) + conv_branch


def partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, c)


def reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    b = windows.shape[0] // (h * w // ws // ws)
    x = windows.view(b, h // ws, w // ws, ws, ws, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


def shift_mask(h: int, w: int, ws: int, shift: int) -> torch.Tensor:
    """nW×ws²×ws²: −100 between tokens from different regions of the shifted image, else 0."""
    regions = torch.zeros(1, h, w, 1)
    label = 0
    for rows in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for cols in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            regions[:, rows, cols, :] = label
            label += 1
    windows = partition(regions, ws).view(-1, ws * ws)
    mask = windows.unsqueeze(1) - windows.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


def relative_position_index(ws: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    relative[:, :, 0] += ws - 1
    relative[:, :, 1] += ws - 1
    relative[:, :, 0] *= 2 * ws - 1
    return relative.sum(-1)


def window_attention(block: MSAB, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    attn_module = block.attn
    b_, n, c = x.shape
    heads = attn_module.num_heads
    qkv = attn_module.qkv(x).reshape(b_, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * attn_module.scale, qkv[1], qkv[2]
    attn = q @ k.transpose(-2, -1)
    index = relative_position_index(attn_module.window_size).to(x.device)
    bias = attn_module.relative_position_bias_table[index.view(-1)].view(n, n, -1).permute(2, 0, 1).contiguous()
    attn = attn + bias.unsqueeze(0)
    if mask is not None:
        nw = mask.shape[0]
        attn = attn.view(b_ // nw, nw, heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, heads, n, n)
    attn = attn.softmax(dim=-1)
    return attn_module.proj((attn @ v).transpose(1, 2).reshape(b_, n, c))


def icab(block: ICAB, v: torch.Tensor, n: int, heads: int) -> torch.Tensor:
    b, c, h, w = v.shape
    normed = to_image(block.norm1_x.body(to_tokens(v)), h, w)
    f = to_tokens(v + channel_attention(block.attn, normed, n, heads))
    return f + block.mlp(block.norm2(f))


def channel_attention(mca: MultiExposureChannelAttention, w: torch.Tensor, n: int, heads: int) -> torch.Tensor:
    """MCA on B×C×H×W: tiled anchor, 1×1 convolutions, L2 normalisation over space, per-head
    channel attention, ``project_out``."""
    b, c, h, wd = w.shape
    slot = c // n
    anchor = w[:, (n // 2) * slot:(n // 2 + 1) * slot].repeat(1, n, 1, 1)
    q, k, v = (conv(x).reshape(b, heads, c // heads, h * wd)
               for conv, x in ((mca.q, anchor), (mca.k, w), (mca.v, w)))
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    out = (q @ k.transpose(-2, -1)).softmax(dim=-1) @ v
    return mca.project_out(out.reshape(b, c, h, wd))
