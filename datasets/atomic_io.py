"""Atomic file writes: readers in other processes see the old file or the new one, never half of one."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")


def save_npy_atomically(path: Path, array: np.ndarray) -> None:
    """np.save to a temporary file in the same folder, then rename it over `path`."""
    temporary = _temporary_name(path)
    try:
        with open(temporary, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomically(path: Path, text: str) -> None:
    """Write text to a temporary file in the same folder, then rename it over `path`."""
    temporary = _temporary_name(path)
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
