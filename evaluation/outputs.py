"""What ``test.py`` writes: reconstructed scenes (linear .hdr, tone-mapped previews, side-by-side
comparisons), comparison tables of mean metrics, JSON summaries, and the checkpoints to run.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from datasets.preprocess import reference_ldr
from evaluation.previews import side_by_side
from evaluation.regions import RegionSettings, sample_region_map
from utils.cli import UsageError
from utils.safe_paths import broken_link
from utils.image_io import write_hdr, write_png
from utils.tonemap import tonemap_for_display

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar")


class CheckpointListError(UsageError):
    """A --pretrained_model path that names no checkpoint."""


def list_checkpoints(path: str | Path) -> list[Path]:
    """``path`` itself when it is a file, else every ``*.pth``/``*.pt``/``*.tar`` file directly
    inside the folder, sorted by name."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        for entry in path.iterdir():
            why = broken_link(entry) if entry.suffix in CHECKPOINT_SUFFIXES else None
            if why:
                raise CheckpointListError(f"--pretrained_model {path}: {entry} is {why}; remove or repair the link")
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
    μ-law error, and with ``regions`` the region map of ``evaluation.regions``). Nothing is
    written when ``save_images`` is False. Usable as the ``on_scene`` callback of
    ``evaluation.evaluate.evaluate_scenes``."""

    def __init__(self, save_dir: str | Path, operator: str = "reinhard", side_by_side: bool = False,
                 save_images: bool = True, suffix: str = "", regions: RegionSettings | None = None) -> None:
        self.save_dir = Path(save_dir)
        self.operator = operator
        self.side_by_side = side_by_side
        self.regions = regions
        self.save_images = save_images
        self.suffix = suffix
        self.written = 0
        """Scenes whose files are complete."""

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
            regions = sample_region_map(sample, self.regions) if self.regions is not None else None
            write_png(paths["side_by_side"], side_by_side(reference_ldr(sample), pred, label, self.operator,
                                                          regions=regions))
        self.written += 1
