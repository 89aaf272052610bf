"""Atomic file writes: readers in other processes see the old file or the new one, never half of one.

Every writer of the project (checkpoints, caches, segment maps, images, tables, summaries) goes
through ``atomic_path``: the data is written to a hidden temporary file in the target's folder
and renamed over the target only once it is complete. A failure (a full disk, a crash, a bad
value found halfway) leaves the previous file untouched and no temporary file behind. The
temporary file is created with ``open`` (not ``mkstemp``), so the result gets the usual
umask-derived permissions.
"""
from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` to write to; on success it replaces ``path``.

    The parent folder is created. The temporary file keeps ``path``'s suffix, so writers that
    choose the format from the suffix (OpenCV, imageio) still do.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex}.tmp{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def save_npy_atomically(path: str | os.PathLike, array: np.ndarray) -> None:
    """np.save (no pickles) to ``path`` atomically."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Write text to ``path`` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)
