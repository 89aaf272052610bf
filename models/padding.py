"""Reflection padding to a multiple of a size, for inputs of any size (even 1×1): the network pads
to its window size, the test protocol to 128, the metric-guided pass to 16."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad a B×C×H×W tensor by reflection at the bottom and right so H and W divide by ``multiple``."""
    height, width = x.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if not (pad_h or pad_w):
        return x
    if (height == 1 and pad_h) or (width == 1 and pad_w):
        # A single row or column cannot be reflected: repeat it, then pad the other axis.
        x = F.pad(x, (0, pad_w if width == 1 else 0, 0, pad_h if height == 1 else 0), mode="replicate")
        return pad_to_multiple(x, multiple)
    if pad_h >= height or pad_w >= width:
        # Reflection cannot pad by more than the size minus one; repeat it in steps.
        step_h, step_w = min(pad_h, height - 1), min(pad_w, width - 1)
        x = F.pad(x, (0, step_w, 0, step_h), mode="reflect")
        return pad_to_multiple(x, multiple) if (step_h < pad_h or step_w < pad_w) else x
    return F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
