"""μ-law tone mapping shared by the loss, the metric-guided update and the metrics."""
from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import torch

MU = 5000.0

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def mu_tonemap(hdr: Array, mu: float = MU) -> Array:
    """T(h) = log(1 + μh) / log(1 + μ) for a NumPy array or a tensor (linear HDR in [0, 1])."""
    if isinstance(hdr, torch.Tensor):
        return torch.log1p(mu * hdr) / math.log1p(mu)
    return np.log1p(mu * hdr) / math.log1p(mu)
