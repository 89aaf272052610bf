"""Real radiance maps for generated scenes: HDR panoramas and photographs from two Debian packages.

The OpenEXR sources are converted to Radiance .hdr (linear RGB, float32 as read by
`utils.image_io.read_hdr`), shrunk so that the long side is at most `MAX_SIDE` pixels, and
written with the licence texts beside them:

* `blender-data`: the eight 1024×512 studio-light world panoramas (CC0, HDRI Haven);
* `psychtoolbox-3-common`: five photographs of ILM's OpenEXR sample images (BSD-style licence).

Command line (downloads the two .deb files with `apt-get download` unless `--packages` names a
folder that already holds them, or their extracted trees)::

    python -m datasets.fetch_radiance --out datasets/radiance [--packages /tmp/x]
"""
from __future__ import annotations

import argparse
import gzip
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from utils.image_io import write_hdr

from .scene import PathLike

MAX_SIDE = 720
_BLENDER_DIR = "usr/share/blender/datafiles/studiolights/world"
_ILM_DIR = "usr/share/psychtoolbox-3/PsychDemos/OpenEXRImages"
# output name -> (Debian package, EXR path inside the package)
SOURCES: dict[str, tuple[str, str]] = {
    **{name: ("blender-data", f"{_BLENDER_DIR}/{name}.exr")
       for name in ("city", "courtyard", "forest", "interior", "night", "studio", "sunrise", "sunset")},
    **{name: ("psychtoolbox-3-common", f"{_ILM_DIR}/{name}.exr")
       for name in ("CandleGlass", "Desk", "GoldenGate", "Ocean", "StillLife")},
}
# licence file written beside the maps -> (Debian package, path of the text copied verbatim)
LICENSES: dict[str, tuple[str, str]] = {
    "LICENSE-blender-studiolights.txt": ("blender-data", f"{_BLENDER_DIR}/license.txt"),
    "LICENSE-ILM-OpenEXR.txt": ("psychtoolbox-3-common", f"{_ILM_DIR}/Contents.m"),
}
PACKAGES = ("blender-data", "psychtoolbox-3-common")


def read_exr(path: PathLike) -> np.ndarray:
    """Read an OpenEXR image as H×W×3 float32 linear RGB (alpha dropped, NaN and negatives zeroed)."""
    import OpenEXR  # imported here so that the rest of the package does not need it

    with OpenEXR.File(str(path)) as exr:
        channels = exr.channels()
        if "RGB" in channels or "RGBA" in channels:
            rgb = (channels.get("RGB") or channels["RGBA"]).pixels[..., :3]
        else:
            rgb = np.stack([channels[c].pixels for c in "RGB"], axis=-1)
    rgb = np.nan_to_num(rgb.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return np.maximum(rgb, 0.0)


def shrink(image: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """Downsize (area averaging, which keeps radiance units) so that the long side is ≤ `max_side`."""
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def package_version(root: Path, package: str) -> str:
    """The Debian version of an extracted package, from the first line of its changelog."""
    changelog = root / "usr/share/doc" / package / "changelog.Debian.gz"
    if not changelog.is_file():
        return "unknown"
    with gzip.open(changelog, "rt") as stream:
        first = stream.readline()
    return first.split("(", 1)[1].split(")", 1)[0] if "(" in first else "unknown"


def extract_packages(packages_dir: Path, root: Path) -> Path:
    """Extract the packages' .deb files found in `packages_dir` (downloading missing ones) into `root`.

    A `packages_dir` that already holds the extracted trees (`usr/share/...`) is returned as it is.
    """
    if all((packages_dir / path).is_file() for _, path in SOURCES.values()):
        return packages_dir
    for package in PACKAGES:
        if not list(packages_dir.glob(f"{package}_*.deb")):
            subprocess.run(["apt-get", "download", package], cwd=packages_dir, check=True)
        deb = sorted(packages_dir.glob(f"{package}_*.deb"))[-1]
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def convert(root: Path, out_dir: Path, max_side: int = MAX_SIDE) -> dict[str, str]:
    """Write every source as `<name>.hdr` plus the licence texts into `out_dir`; returns package versions."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, (_, path) in SOURCES.items():
        write_hdr(out_dir / f"{name}.hdr", shrink(read_exr(root / path), max_side))
    for name, (_, path) in LICENSES.items():
        shutil.copyfile(root / path, out_dir / name)
    return {package: package_version(root, package) for package in PACKAGES}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Convert the packaged OpenEXR radiance maps to Radiance .hdr.")
    parser.add_argument("--out", required=True, type=Path, help="folder for the .hdr maps and licence texts")
    parser.add_argument("--packages", type=Path, default=None,
                        help="folder with the .deb files or their extracted trees (default: download them)")
    parser.add_argument("--max_side", type=int, default=MAX_SIDE, help="longest image side after shrinking")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        packages_dir = args.packages.resolve() if args.packages else Path(scratch)
        root = extract_packages(packages_dir, Path(scratch) / "root")
        versions = convert(root, args.out, args.max_side)
    print(f"wrote {len(SOURCES)} radiance maps to {args.out} from "
          + ", ".join(f"{package} {version}" for package, version in versions.items()))


if __name__ == "__main__":
    main()
