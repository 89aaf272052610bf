"""What ``test.py`` writes: reconstructed scenes (linear .hdr, tone-mapped previews, side-by-side
comparisons), comparison tables of mean metrics, JSON summaries, and the checkpoints to run.
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from utils.evaluation import reference_ldr
from utils.image_io import write_hdr, write_png
from utils.metrics import metric_columns
from utils.previews import side_by_side
from utils.tonemap import tonemap_for_display

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar")
METHOD_KEY = "method"


class CheckpointListError(ValueError):
    """A --pretrained_model path that names no checkpoint."""


def list_checkpoints(path: str | Path) -> list[Path]:
    """``path`` itself when it is a file, else every ``*.pth``/``*.pt``/``*.tar`` file directly
    inside the folder, sorted by name."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
        if not found:
            raise CheckpointListError(
                f"{path}: the folder holds no checkpoint files ({', '.join('*' + s for s in CHECKPOINT_SUFFIXES)})")
        return found
    raise CheckpointListError(f"{path}: no such checkpoint file or folder")


def output_folders(checkpoints: Sequence[Path], save_dir: str | Path, from_folder: bool) -> dict[Path, Path]:
    """Output folder per checkpoint: ``save_dir`` itself for a single file given directly, else one
    sub-folder per checkpoint named after its file (stem; the suffix added when stems clash)."""
    save_dir = Path(save_dir)
    if not from_folder:
        return {checkpoints[0]: save_dir}
    stems = [p.stem for p in checkpoints]
    return {p: save_dir / (p.stem if stems.count(p.stem) == 1 else p.name.replace(".", "_")) for p in checkpoints}


def as_hwc(image: torch.Tensor) -> Any:
    """A 3×H×W tensor as an H×W×3 float32 NumPy array."""
    return image.detach().to("cpu", torch.float32).permute(1, 2, 0).contiguous().numpy()


class SceneOutputWriter:
    """Writes each scene's prediction into ``save_dir``: ``<scene><suffix>.hdr`` (linear Radiance
    RGBE), ``<scene><suffix>.png`` (tone mapped with ``operator`` for a display) and, with
    ``side_by_side``, ``<scene><suffix>_side_by_side.png`` (reference LDR | prediction | label |
    μ-law error). Nothing is written when ``save_images`` is False. Usable as the ``on_scene``
    callback of ``utils.evaluation.evaluate_scenes``."""

    def __init__(self, save_dir: str | Path, operator: str = "reinhard", side_by_side: bool = False,
                 save_images: bool = True, suffix: str = "") -> None:
        self.save_dir = Path(save_dir)
        self.operator = operator
        self.side_by_side = side_by_side
        self.save_images = save_images
        self.suffix = suffix

    def paths(self, scene: str) -> dict[str, Path]:
        stem = f"{scene}{self.suffix}"
        return {"hdr": self.save_dir / f"{stem}.hdr", "preview": self.save_dir / f"{stem}.png",
                "side_by_side": self.save_dir / f"{stem}_side_by_side.png"}

    def __call__(self, sample: Mapping[str, object], prediction: torch.Tensor) -> None:
        if not self.save_images:
            return
        paths = self.paths(str(sample["scene"]))
        pred = as_hwc(prediction)
        write_hdr(paths["hdr"], pred)
        write_png(paths["preview"], tonemap_for_display(pred, self.operator))
        if self.side_by_side and "label" in sample:
            label = as_hwc(torch.as_tensor(sample["label"]))
            write_png(paths["side_by_side"], side_by_side(reference_ldr(sample), pred, label, self.operator))


# ---------------------------------------------------------------------------
# Comparison tables (one row per method: its mean metrics)
# ---------------------------------------------------------------------------

def format_value(column: str, value: Any) -> str:
    """PSNR-like values with 2 decimals, SSIM 4, cvvdp JOD 3, seconds 3; '-' when missing."""
    if value is None or value == "":
        return "-"
    if not isinstance(value, (int, float)):
        return str(value)
    digits = 4 if "ssim" in column else 3 if column in ("cvvdp", "seconds") else 2
    return f"{value:.{digits}f}"


def comparison_rows(means: Mapping[str, Mapping[str, float]]) -> list[dict[str, Any]]:
    """Rows ``{"method": name, **means}`` in the given order."""
    return [{METHOD_KEY: name, **values} for name, values in means.items()]


def format_rows(rows: Sequence[Mapping[str, Any]], key: str = METHOD_KEY) -> str:
    """Plain-text table: the ``key`` column left-aligned, then every other column right-aligned."""
    columns = [c for c in metric_columns(rows) if c != key]
    lines = [[key, *columns]] + [[str(row.get(key, "")), *(format_value(c, row.get(c)) for c in columns)]
                                 for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    rendered = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                          for i, (cell, w) in enumerate(zip(line, widths))) for line in lines]
    return "\n".join([rendered[0], "-" * len(rendered[0]), *rendered[1:]])


def write_rows_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], key: str = METHOD_KEY) -> None:
    """One CSV line per row, full precision; the ``key`` column first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = [key, *(c for c in metric_columns(rows) if c != key)]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def _json_ready(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_json(path: str | Path, data: Mapping[str, Any]) -> None:
    """Indented JSON; paths become strings, NaN becomes null (infinite PSNR stays Infinity)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_ready(data), indent=2) + "\n")


def describe_protocol(multiple: int, tile: int, tile_overlap: int, amp: str | None) -> dict[str, Any]:
    """The inference protocol as recorded in summary.json."""
    padding = f"reflection at the bottom and right to a multiple of {multiple}"
    protocol: dict[str, Any] = {
        "mode": "tiled" if tile > 0 else "one pass (released protocol)",
        "padding": padding + (" (per tile)" if tile > 0 else ""),
        "pad_multiple": multiple,
        "clamp": [0.0, 1.0],
        "crop": "back to the label's size",
        "mask_map": None,
        "tile": tile,
        "tile_overlap": tile_overlap if tile > 0 else 0,
        "tile_blend": "separable raised-cosine ramps across overlaps, weights summing to 1" if tile > 0 else None,
        "amp": amp or "fp32",
    }
    return protocol


def means_with_seconds(means: Mapping[str, float], seconds: Iterable[float]) -> dict[str, float]:
    """Mean metrics plus the mean seconds per scene (a 'seconds' column)."""
    seconds = list(seconds)
    return {**means, "seconds": sum(seconds) / len(seconds) if seconds else float("nan")}
