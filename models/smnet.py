"""SMNet, the SMHDR network: shared shallow extractor, four stages of masked window blocks each
followed by channel attention across exposures, and a skip from the reference exposure.

Parameter names and shapes match the released checkpoints (``models.checkpoint`` loads them).
"""
from __future__ import annotations

from typing import Sequence

import torch
from timm.layers import Mlp, trunc_normal_
from torch import nn

from .blocks import MSAB, MaskedTB, WindowLayouts, image_as_tokens, map_token_chunks, tokens_as_image
from .channel_attention import ICAB, channel_attention_heads
from .padding import pad_to_multiple
from .window_attention import window_layout


class PatchEmbedNorm(nn.Module):
    """Holds the token LayerNorm under the released name ``patch_embed.norm``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(tokens)


REFERENCE_EPS = 1e-6
"""Floor (and 1 − ceiling) of the reference radiance a ``reference_residual`` network starts from:
below the darkest well-exposed value (code 0.02 at 3 stops, about 2e-5), so it biases only
crushed pixels, by under 0.001 in μ-law."""


class SMNet(nn.Module):
    """The SMHDR network. ``SMNet()`` is the released configuration (1,292,499 parameters).

    Input: B×(in_chans·n)×H×W, per exposure ``[LDR^2.2 / t, LDR]``, shortest exposure first.
    Output: B×3×H×W linear HDR in [0, 1]. ``mask_map`` (B×1×H×W, 1 keep / 0 masked) is used by
    the mask blocks when the network is built with ``is_mask``. Any H×W works: the input is
    padded by reflection to a multiple of the window size and the output cropped back.

    With ``reference_residual`` (an addition, off in the released network) the output is
    ``sigmoid(logit(reference radiance) + head)`` instead of ``sigmoid(head)``, the head starting
    at zero: the network corrects the reference exposure rather than rebuilding it.

    Under ``torch.compile`` only ``forward_with_layouts`` is traced: ``forward`` runs eagerly and
    fetches the window layouts of the padded size (their construction indexes by data), so the
    compiled network is one graph per input size, without breaks.
    """

    def __init__(self, img_size: int = 128, in_chans: int = 6, embed_dim: int = 60,
                 depths: Sequence[int] = (6, 6, 6, 6), num_heads: Sequence[int] = (6, 6, 6, 6),
                 window_size: int = 8, mlp_ratio: float = 2.0, drop_path_rate: float = 0.1,
                 is_mask: bool = False, adl_drop_rate: float = 0.75,
                 ca_heads_per_exposure: int = 4, channel_mlp_ratio: float = 4.0,
                 reference_residual: bool = False) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {list(depths)} and num_heads {list(num_heads)} differ in length")
        self.config = dict(img_size=img_size, in_chans=in_chans, embed_dim=embed_dim, depths=list(depths),
                           num_heads=list(num_heads), window_size=window_size, mlp_ratio=mlp_ratio,
                           drop_path_rate=drop_path_rate, is_mask=is_mask, adl_drop_rate=adl_drop_rate,
                           ca_heads_per_exposure=ca_heads_per_exposure, channel_mlp_ratio=channel_mlp_ratio)
        if reference_residual:  # recorded only when on, so the released configs read as before
            self.config["reference_residual"] = True
        self.reference_residual = reference_residual
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.window_size = window_size
        self.ca_heads_per_exposure = ca_heads_per_exposure

        self.conv_first = nn.Sequential(*(
            nn.Conv2d(in_chans if i == 0 else embed_dim, embed_dim, 3, padding=1, padding_mode="reflect")
            for i in range(3)))
        self.patch_embed = PatchEmbedNorm(embed_dim)
        self.mlp = Mlp(embed_dim, embed_dim)

        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.layers = nn.ModuleList(
            MaskedTB(embed_dim, depth, heads, window_size, mlp_ratio, rates[start:start + depth],
                     is_mask, adl_drop_rate)
            for depth, heads, start in zip(depths, num_heads, starts))
        self.channel_layers = nn.ModuleList(ICAB(embed_dim, channel_mlp_ratio) for _ in depths)
        self.mlps = nn.ModuleList(Mlp(embed_dim, embed_dim) for _ in depths)
        self.norm = nn.LayerNorm(embed_dim)

        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, padding=1)
        self.conv_skip = nn.Conv2d(embed_dim, embed_dim, 3, padding=1)
        self.conv_end = nn.Conv2d(embed_dim, 3, 3, padding=1)
        self.apply(self._init_weights)
        if reference_residual:  # a new network starts as the reference exposure itself
            nn.init.zeros_(self.conv_end.weight)
            nn.init.zeros_(self.conv_end.bias)
        # (window size, shift) of every block: the window layouts a forward pass needs.
        self.window_keys = sorted({(block.window_size, block.shift_size)
                                   for block in self.modules() if isinstance(block, MSAB)})

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def num_exposures(self, x: torch.Tensor) -> int:
        """Exposure count of an input, with a clear error when its channels do not fit."""
        channels = x.shape[1]
        if x.dim() != 4 or channels % self.in_chans:
            raise ValueError(f"expected a B×({self.in_chans}·n)×H×W input, got shape {tuple(x.shape)}")
        return channels // self.in_chans

    def shallow_features(self, x: torch.Tensor, num_exposures: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Shared conv_first per exposure; each exposure's E channels averaged into E/n → slots
        concatenated in exposure order. Returns (slots B×E×H×W, reference features B×E×H×W)."""
        b, _, h, w = x.shape
        n, e = num_exposures, self.embed_dim
        exposures = x.reshape(b * n, self.in_chans, h, w)
        if not torch.is_grad_enabled():
            # Inference: channels-last like the rest of the network, so the convolutions skip a
            # layout change. Their backward is about twice as slow that way, so training stays NCHW.
            exposures = exposures.contiguous(memory_format=torch.channels_last)
        f = self.conv_first(exposures).view(b, n, e, h, w)
        slots = f.view(b, n, n, e // n, h, w).mean(dim=2).reshape(b, e, h, w)
        return slots, f[:, n // 2]

    @torch.compiler.disable  # eager: building a layout indexes by data
    def window_layouts(self, x: torch.Tensor) -> WindowLayouts:
        """The cached window layouts of every block for ``x``'s padded size, by (window size, shift)."""
        self.num_exposures(x)  # a clear error for a malformed input, before anything else
        height, width = x.shape[-2:]
        height, width = height + (-height) % self.window_size, width + (-width) % self.window_size
        return {(ws, shift): window_layout(height, width, ws, shift, x.device) for ws, shift in self.window_keys}

    @torch.compiler.disable(recursive=False)  # this frame only: the call below is compiled
    def forward(self, x: torch.Tensor, mask_map: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_with_layouts(x, mask_map, self.window_layouts(x))

    def forward_with_layouts(self, x: torch.Tensor, mask_map: torch.Tensor | None,
                             layouts: WindowLayouts) -> torch.Tensor:
        """The network on an input whose padded size has the window ``layouts`` given."""
        n = self.num_exposures(x)
        heads = channel_attention_heads(self.embed_dim, n, self.ca_heads_per_exposure)
        height, width = x.shape[-2:]
        x = pad_to_multiple(x, self.window_size)
        if mask_map is not None:
            mask_map = pad_to_multiple(mask_map, self.window_size)
        h, w = x.shape[-2:]
        mask_tokens = None if mask_map is None else mask_map.reshape(x.shape[0], h * w, 1)

        slots, f_ref = self.shallow_features(x, n)
        x0 = self.patch_embed(image_as_tokens(slots))
        t = self.mlp(x0)
        for stage, channel_block, mlp in zip(self.layers, self.channel_layers, self.mlps):
            t = stage(t, h, w, mask_tokens, layouts)
            t = map_token_chunks(mlp, channel_block(t + x0, n, heads))
        body = tokens_as_image(self.norm(t), h, w)
        y = self.conv_end(self.conv_after_body(body) + self.conv_skip(f_ref))
        if self.reference_residual:
            y = y + self.reference_logit(x, n)
        return torch.sigmoid(y)[..., :height, :width]

    def reference_logit(self, x: torch.Tensor, num_exposures: int) -> torch.Tensor:
        """The logit of the reference exposure's linear radiance (its ``LDR^2.2 / t`` channels),
        what a ``reference_residual`` network corrects: where the reference is well exposed it is
        the answer up to noise, so the network only has to learn what the reference lacks."""
        first = self.in_chans * (num_exposures // 2)
        radiance = x[:, first:first + 3].float()
        return torch.logit(radiance.clamp(REFERENCE_EPS, 1.0 - REFERENCE_EPS))
