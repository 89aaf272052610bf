"""Network input as the released checkpoints expect it, and the training-time crop and flip."""
from __future__ import annotations

import functools
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


# ----------------------------------------------------------------------------- LDR codes

LDR_CODE_SCALES = (float(2**16), 255.0)
"""What the LDR codes of a stored exposure are divided by, by table number: 16-bit files (and
8-bit ones read the released way, ``--released_8bit_scaling``) by 2**16, 8-bit files by 255."""
CODE_RANGE = 2**16


@functools.lru_cache(maxsize=None)
def code_values(table: int) -> np.ndarray:
    """LDR value of every code 0 … 2**16 - 1 of one table, float32 (read-only): exactly what
    decoding does (``utils.image_io.read_ldr_frame``: the code in float32 divided by the scale,
    clipped to [0, 1])."""
    codes = np.arange(CODE_RANGE, dtype=np.float32)
    values = np.clip(codes / np.float32(LDR_CODE_SCALES[table]), 0.0, 1.0)
    values.flags.writeable = False
    return values


class _CodeBank:
    """The lookup blocks of one device: for every (code table, exposure time t) met so far, the
    2**16 float32 values ``LDR**2.2 / t`` of the codes, computed on the host as
    ``build_network_input`` computes them (so looking codes up is bit for bit the same)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.slots: dict[tuple[int, float], int] = {}
        self.values = torch.empty(0, device=device)

    def slots_of(self, tables: np.ndarray, times: np.ndarray) -> np.ndarray:
        """The block number of every (table, time) pair of the two same-shaped arrays."""
        blocks = []
        for table, time in zip(tables.reshape(-1).tolist(), times.reshape(-1).tolist()):
            if (table, time) not in self.slots:
                block = np.power(code_values(table), np.float32(GAMMA)) / np.float32(time)
                self.values = torch.cat([self.values, torch.from_numpy(block).to(self.device)])
                self.slots[(table, time)] = len(self.slots)
            blocks.append(self.slots[(table, time)])
        return np.asarray(blocks, dtype=np.int64).reshape(tables.shape)


_BANKS: dict[str, _CodeBank] = {}


def encode_ldr(ldr: np.ndarray) -> tuple[np.ndarray, int]:
    """The codes (uint16, same shape) and table number that reproduce a decoded LDR image (float32
    in [0, 1]) exactly; raises ValueError for values no table holds (not from an 8- or 16-bit file)."""
    for table, scale in enumerate(LDR_CODE_SCALES):
        codes = np.rint(np.asarray(ldr, dtype=np.float32) * np.float32(scale))
        if codes.min(initial=0) >= 0 and codes.max(initial=0) < CODE_RANGE:
            codes = codes.astype(np.uint16)
            if np.array_equal(code_values(table)[codes], ldr):
                return codes, table
    raise ValueError("LDR values are not those of an 8- or 16-bit file")


def network_input_from_codes(codes: torch.Tensor, tables: Union[np.ndarray, torch.Tensor],
                             times: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
    """``build_network_input`` for a batch of LDR codes, on their device: B×n×3×p×p uint16 codes,
    B×n table numbers and B×n exposure times t (float32; both host arrays, read without touching
    the device) → B×6n×p×p float32, per exposure ``[LDR**2.2 / t, LDR]``, bit for bit: the linear
    part is looked up (a power on the device may differ in the last bit), the LDR is the code
    divided by its scale, as decoding divides it. Crops travel to the device as codes, a quarter
    of the bytes of the float32 input."""
    batch, count = codes.shape[:2]
    device = codes.device
    tables, times = np.asarray(tables, dtype=np.int64), np.asarray(times, dtype=np.float32)
    bank = _BANKS.setdefault(str(device), _CodeBank(device))
    offsets = torch.from_numpy((bank.slots_of(tables, times) * CODE_RANGE).astype(np.int32))
    scales = torch.from_numpy(np.asarray(LDR_CODE_SCALES, dtype=np.float32)[tables])
    out = torch.empty((batch, count, 2, *codes.shape[2:]), device=device)
    # the codes as int32 by way of int16 (unsigned tensors have few kernels on some devices)
    index = torch.empty(codes.shape, dtype=torch.int32, device=device)
    index.copy_(codes.view(torch.int16)).bitwise_and_(CODE_RANGE - 1)
    out[:, :, 1].copy_(index).div_(scales.to(device).view(batch, count, 1, 1, 1))  # a tensor: a true division
    index.add_(offsets.to(device).view(batch, count, 1, 1, 1))
    out[:, :, 0].copy_(bank.values.index_select(0, index.view(-1)).view(codes.shape))
    return out.view(batch, CHANNELS_PER_EXPOSURE * count, *codes.shape[-2:])


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


def input_ldrs(inputs: torch.Tensor) -> torch.Tensor:
    """The LDR channels of a (6n)×H×W network input as an n×3×H×W view (no copy): what a sample
    carries as ``ldrs``."""
    count = inputs.shape[0] // CHANNELS_PER_EXPOSURE
    return inputs.view(count, CHANNELS_PER_EXPOSURE, *inputs.shape[1:])[:, 3:]


def full_image_sample(inputs: torch.Tensor, exposures: Sequence[float], scene: str, segments: torch.Tensor,
                      label: Optional[torch.Tensor] = None) -> dict[str, object]:
    """A whole scene as the datasets hand it out: ``input`` (the (6n)×H×W network input),
    ``ldrs`` (its n×3×H×W LDRs, shortest first, a view of the input), ``exposures`` (n stops),
    ``segments``, ``scene`` and, when there is one, ``label``. Consumers read the LDRs and stops
    from here instead of slicing the input."""
    stops = torch.as_tensor(np.asarray(exposures, dtype=np.float32))
    count = inputs.shape[0] // CHANNELS_PER_EXPOSURE
    if inputs.shape[0] % CHANNELS_PER_EXPOSURE or count != stops.numel():
        raise ValueError(f"scene {scene}: a {inputs.shape[0]}-channel input for {stops.numel()} stops")
    sample: dict[str, object] = {"input": inputs, "ldrs": input_ldrs(inputs), "exposures": stops,
                                 "segments": segments, "scene": scene}
    if label is not None:
        sample["label"] = label
    return sample


def sample_exposures(sample: Mapping[str, object]) -> tuple[list[np.ndarray], list[float]]:
    """A sample's LDRs as H×W×3 float32 arrays in [0, 1] (shortest first) and their stops."""
    ldrs = torch.as_tensor(sample["ldrs"])
    return [ldr.permute(1, 2, 0).numpy() for ldr in ldrs], [float(s) for s in torch.as_tensor(sample["exposures"])]


def reference_ldr(sample: Mapping[str, object]) -> np.ndarray:
    """The reference (middle) exposure of a sample as H×W×3 float32 in [0, 1]."""
    ldrs, _ = sample_exposures(sample)
    return ldrs[len(ldrs) // 2]
