"""Full-image inference: the released test protocol (pad to a multiple, one pass, clamp, crop).

The released evaluation pads every test image by reflection at the bottom and right to a
multiple of 128 before the forward pass; the metric-guided training pass pads to a multiple
of 16. ``reconstruct`` keeps both available so results match the released numbers exactly.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

TEST_PAD_MULTIPLE = 128
"""Padding multiple of the released test protocol."""

GUIDED_PAD_MULTIPLE = 16
"""Padding multiple of the metric-guided pass over the training scenes."""


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad a B×C×H×W tensor by reflection at the bottom and right so H and W divide by ``multiple``."""
    height, width = x.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if not (pad_h or pad_w):
        return x
    if pad_h >= height or pad_w >= width:
        # Reflection cannot pad by more than the size minus one; repeat it in steps.
        step_h, step_w = min(pad_h, height - 1), min(pad_w, width - 1)
        x = F.pad(x, (0, step_w, 0, step_h), mode="reflect")
        return pad_to_multiple(x, multiple) if (step_h < pad_h or step_w < pad_w) else x
    return F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")


def autocast_context(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``amp`` in {None, 'bf16', 'fp16'} on ``device``."""
    if amp in (None, "", "none", "fp32"):
        return contextlib.nullcontext()
    dtypes = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
    if amp not in dtypes:
        raise ValueError(f"unknown --amp {amp!r}: use bf16 or fp16")
    return torch.autocast(device.type, dtype=dtypes[amp])


@torch.inference_mode()
def reconstruct(model: nn.Module, inputs: torch.Tensor, multiple: int = TEST_PAD_MULTIPLE,
                amp: str | None = None) -> torch.Tensor:
    """One-pass reconstruction of B×(6n)×H×W inputs: pad to ``multiple``, forward, clamp to
    [0, 1], crop back to H×W. Returns float32 B×3×H×W on the inputs' device."""
    height, width = inputs.shape[-2:]
    with autocast_context(inputs.device, amp):
        out = model(pad_to_multiple(inputs, multiple))
    return out[..., :height, :width].float().clamp(0.0, 1.0)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
