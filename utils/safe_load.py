"""Reading tensor files without running code: ``torch.load(..., weights_only=True)`` with errors
that name the file and say what is wrong with it instead of a torch traceback."""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from .cli import UsageError


class TensorFileError(UsageError):
    """A file that is missing, not a PyTorch file, or one that only full unpickling could read."""


def looks_like_torch_file(path: Path) -> bool:
    """A zip archive (torch.save's format) or a pickle stream (its legacy format)."""
    with path.open("rb") as handle:
        head = handle.read(2)
    return zipfile.is_zipfile(path) or head[:1] == b"\x80"


def _offending_global(message: str) -> str:
    """`` (here: pathlib.PosixPath)`` from torch's several-paragraph refusal, or nothing."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
    return f" (here: {found.group(1)})" if found else ""


def load_tensors(path: str | os.PathLike, what: str = "file") -> Any:
    """The tensors and plain containers saved in ``path``; ``what`` names the file in errors
    (e.g. ``"--vgg_weights"``). A file that would need arbitrary unpickling is refused."""
    path = Path(path)
    if not path.is_file():
        raise TensorFileError(f"{what} {path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not looks_like_torch_file(path):
            raise TensorFileError(f"{what} {path}: not a PyTorch file (neither a zip archive nor a pickle)") from None
        raise TensorFileError(
            f"{what} {path}: refused to load: the file holds Python objects beyond tensors and plain containers"
            f"{_offending_global(str(err))}, and loading it would need full unpickling, which can run arbitrary "
            "code") from None
    except Exception as err:  # truncated zips, text files, foreign formats: torch raises many types
        first_line = (str(err).strip().splitlines() or [""])[0]
        raise TensorFileError(f"{what} {path}: not a readable PyTorch file ({type(err).__name__}: {first_line})"
                              ) from None
