"""Network input as the released checkpoints expect it, and the training-time crop and flip."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch

from utils.tonemap import GAMMA

CHANNELS_PER_EXPOSURE = 6
"""Network input channels per exposure: the linearised image LDR**2.2 / t, then the LDR itself."""


def exposure_times(exposure_stops: Sequence[float]) -> np.ndarray:
    """Relative exposure times t_i = 2**stop_i (float32)."""
    return np.power(2.0, np.asarray(exposure_stops, dtype=np.float64)).astype(np.float32)


def build_network_input(
    ldrs: Union[Sequence[np.ndarray], np.ndarray], exposure_stops: Sequence[float]
) -> np.ndarray:
    """Stack `[LDR**2.2 / t_i, LDR]` per exposure into a (6n, H, W) float32 array.

    `ldrs` are H×W×3 RGB images in [0, 1] ordered shortest exposure first (as stored in
    a scene); the channel order follows that order.
    """
    if len(ldrs) != len(exposure_stops):
        raise ValueError(f"{len(ldrs)} LDR images but {len(exposure_stops)} exposure values")
    channels = []
    for ldr, time in zip(ldrs, exposure_times(exposure_stops)):
        ldr = np.asarray(ldr, dtype=np.float32)
        if ldr.ndim != 3 or ldr.shape[2] != 3:
            raise ValueError(f"expected H×W×3 LDR images, got shape {ldr.shape}")
        channels.append(np.power(ldr, np.float32(GAMMA)) / time)
        channels.append(ldr)
    return np.ascontiguousarray(np.concatenate(channels, axis=2).transpose(2, 0, 1), dtype=np.float32)


def random_crop_box(size: tuple[int, int], patch_size: int, generator: Optional[torch.Generator] = None
                    ) -> tuple[int, int]:
    """Top-left corner of a uniformly random patch_size×patch_size crop, drawn with torch's RNG."""
    height, width = size
    top = int(torch.randint(0, height - patch_size + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - patch_size + 1, (1,), generator=generator))
    return top, left


def random_flip_axis(generator: Optional[torch.Generator] = None) -> Optional[int]:
    """With probability 0.5 a flip, then vertical (axis 0) or horizontal (axis 1) 50/50; else None."""
    if float(torch.rand((), generator=generator)) >= 0.5:
        return None
    return 0 if float(torch.rand((), generator=generator)) < 0.5 else 1


def exposures_from_sample(sample: Mapping[str, object]) -> tuple[list[np.ndarray], list[float]]:
    """The LDR exposures (H×W×3 float32 in [0, 1], shortest first) and their stops, recovered
    from a sample's network input ``[LDR**2.2 / t, LDR]`` per exposure."""
    inputs = torch.as_tensor(sample["input"])
    count = inputs.shape[0] // CHANNELS_PER_EXPOSURE
    ldrs = [inputs[CHANNELS_PER_EXPOSURE * i + 3:CHANNELS_PER_EXPOSURE * (i + 1)].permute(1, 2, 0).numpy()
            for i in range(count)]
    stops = [float(s) for s in torch.as_tensor(sample["exposures"]).reshape(-1)]
    if len(stops) != count:
        raise ValueError(f"scene {sample['scene']}: {count} exposures in the input but {len(stops)} stops")
    return ldrs, stops


def reference_ldr(sample: Mapping[str, object]) -> np.ndarray:
    """The reference (middle) exposure of a sample as H×W×3 float32 in [0, 1]."""
    ldrs, _ = exposures_from_sample(sample)
    return ldrs[len(ldrs) // 2]
