"""Benchmark datasets (Kalantari / Prabhakar / Tel layouts): scene reading, preprocessing, PyTorch datasets."""
from .cache import CACHE_MODES, NpySceneCache, SceneReader
from .hdr_dataset import HDRFullImageDataset, HDRTrainDataset
from .preprocess import build_network_input, exposure_times
from .scene import (
    Scene,
    SceneError,
    SceneLayout,
    check_scene_files,
    find_ldr_files,
    list_scenes,
    load_scene,
    read_exposures,
    read_segments,
    reference_ldr_file,
    write_segments,
)

__all__ = [
    "CACHE_MODES",
    "HDRFullImageDataset",
    "HDRTrainDataset",
    "NpySceneCache",
    "Scene",
    "SceneError",
    "SceneLayout",
    "SceneReader",
    "build_network_input",
    "check_scene_files",
    "exposure_times",
    "find_ldr_files",
    "list_scenes",
    "load_scene",
    "read_exposures",
    "read_segments",
    "reference_ldr_file",
    "write_segments",
]
