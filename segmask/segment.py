"""Semantic segment maps (`masks.npy`) for every scene of a split, as the training expects them.

For each scene, in sorted order, the reference (middle) LDR is segmented, by the Segment
Anything automatic mask generator (``--mode sam``, the released procedure), by SLIC
superpixels (``--mode superpixel``, no weights needed) or not at all (``--mode random``: one
segment per scene). The masks are painted largest first with a new ID each over a background
ID, segments under ``--min_area`` pixels fall back to the background, and the IDs are
renumbered consecutively, continuing from the previous scene so they are unique in the split.

    python segmask/segment.py --dataset_dir data/Kalantari --sam_checkpoint pretrain_model/sam_vit_h_4b8939.pth
    python -m segmask.segment --dataset_dir data/synthetic --mode superpixel
"""
from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from tqdm import tqdm

from datasets.options import add_data_options, scene_layout
from datasets.scene import (
    SceneLayout,
    list_scenes,
    read_segments,
    reference_ldr_file,
    scene_input_files,
    write_segments,
)
from utils.cli import UsageError, add_debug_option, add_device_options, add_inert_options, inert_notes, run_cli
from utils.distributed import resolve_device
from utils.image_io import read_ldr_uint8, write_png
from utils.safe_load import load_tensors
from utils.safe_paths import refuse_overwriting

MIN_AREA = 1000
DEFAULT_SUPERPIXELS = 32
DEFAULT_CHECKPOINT_DIR = Path(__file__).resolve().parents[1] / "pretrain_model"  # where download.sh puts them
CHECKPOINT_FILES = {
    "vit_h": "sam_vit_h_4b8939.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_b": "sam_vit_b_01ec64.pth",
}
# SamAutomaticMaskGenerator settings of the released masks.
RELEASED_GENERATOR_SETTINGS: dict[str, Any] = {
    "points_per_side": 32,
    "pred_iou_thresh": 0.90,
    "stability_score_thresh": 0.92,
    "crop_n_layers": 0,
    "min_mask_region_area": 0,
}
MODES = ("sam", "superpixel", "random")

MaskRecord = Mapping[str, Any]  # SAM's record format: {'segmentation': H×W bool, 'area': int, ...}
MaskProposer = Callable[[np.ndarray], list[MaskRecord]]


class SamCheckpointError(FileNotFoundError):
    """The SAM checkpoint file is missing."""


class SegmentIdError(UsageError):
    """Existing masks of different scenes share segment IDs."""


# --- painting and numbering (pure functions) ---------------------------------------------------

def mask_area(record: MaskRecord) -> int:
    """The record's 'area', or its pixel count when the record has none."""
    if "area" in record:
        return int(record["area"])
    return int(np.count_nonzero(record["segmentation"]))


def paint_masks(masks: Sequence[MaskRecord], shape: tuple[int, int], start_id: int,
                min_area: int = MIN_AREA) -> tuple[np.ndarray, int]:
    """Paint masks into an H×W int64 ID map; returns (ids, the first ID free for the next scene).

    The map starts as background; masks are painted from largest to smallest area (a smaller
    mask overwrites a larger one), each with a new ID. Segments left with fewer than
    `min_area` visible pixels fall back to the background, and the IDs present are renumbered
    consecutively from `start_id` (background first, then in painting order).
    """
    canvas = np.zeros(shape, dtype=np.int64)  # 0 = background, k = k-th painted mask
    order = sorted(range(len(masks)), key=lambda k: -mask_area(masks[k]))  # stable for ties
    for label, k in enumerate(order, start=1):
        segmentation = np.asarray(masks[k]["segmentation"], dtype=bool)
        if segmentation.shape != tuple(shape):
            raise ValueError(f"mask {k} has shape {segmentation.shape}, expected {tuple(shape)}")
        canvas[segmentation] = label

    too_small = np.bincount(canvas.ravel(), minlength=len(masks) + 1) < min_area
    too_small[0] = False
    canvas[too_small[canvas]] = 0

    present = np.unique(canvas)
    ids = np.searchsorted(present, canvas).astype(np.int64) + start_id
    return ids, start_id + len(present)


def segment_colours(ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """H×W×3 uint8 preview: a random but fixed colour per segment ID."""
    preview = np.zeros(ids.shape + (3,), dtype=np.uint8)
    for segment_id in np.unique(ids):
        colour = np.random.default_rng([seed, int(segment_id)]).integers(0, 256, size=3)
        preview[ids == segment_id] = colour
    return preview


# --- mask proposals ----------------------------------------------------------------------------

def superpixel_masks(image: np.ndarray, n_segments: int = DEFAULT_SUPERPIXELS) -> list[MaskRecord]:
    """SLIC superpixels of an RGB image (about `n_segments` regions) as SAM-style mask records."""
    from skimage.segmentation import slic

    labels = slic(image, n_segments=n_segments, compactness=10.0, start_label=0, channel_axis=-1)
    records = []
    for label in np.unique(labels):
        segmentation = labels == label
        records.append({"segmentation": segmentation, "area": int(np.count_nonzero(segmentation))})
    return records


def build_tiny_sam() -> torch.nn.Module:
    """A very small SAM (64-pixel input, 1-block encoder): for tests of the real SAM code path."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    img_size, patch_size, dim = 64, 16, 32
    grid = img_size // patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=img_size, patch_size=patch_size, embed_dim=dim, depth=1, num_heads=1, mlp_ratio=2.0,
            out_chans=dim, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True, window_size=0, global_attn_indexes=(),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim, image_embedding_size=(grid, grid), input_image_size=(img_size, img_size),
            mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3, transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=1),
            transformer_dim=dim, iou_head_depth=1, iou_head_hidden_dim=16,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def _sam_architectures() -> dict[str, Callable[[], torch.nn.Module]]:
    from segment_anything import sam_model_registry

    return {"vit_h": sam_model_registry["vit_h"], "vit_l": sam_model_registry["vit_l"],
            "vit_b": sam_model_registry["vit_b"], "tiny": build_tiny_sam}


SAM_MODEL_TYPES = ("vit_h", "vit_l", "vit_b", "tiny")


def default_checkpoint(model_type: str) -> Path:
    """Where segmask/download.sh puts the official checkpoint of `model_type`."""
    if model_type not in CHECKPOINT_FILES:
        raise SamCheckpointError(f"model type {model_type!r} has no official checkpoint; pass --sam_checkpoint")
    return DEFAULT_CHECKPOINT_DIR / CHECKPOINT_FILES[model_type]


def check_checkpoint(checkpoint: Union[str, Path]) -> Path:
    """The checkpoint path, or a SamCheckpointError explaining how to get it (nothing is downloaded)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise SamCheckpointError(
            f"SAM checkpoint not found: {checkpoint}. Download the official checkpoints with "
            "`bash segmask/download.sh` (or pass --sam_checkpoint PATH); "
            "`--mode superpixel` needs no weights."
        )
    return checkpoint


def build_sam(model_type: str = "vit_h", checkpoint: Optional[Union[str, Path]] = None,
              device: Union[str, torch.device] = "cpu") -> torch.nn.Module:
    """A SAM model of `model_type` with the weights of `checkpoint` (default: the official file)."""
    if model_type not in SAM_MODEL_TYPES:
        raise UsageError(f"--model_type must be one of {SAM_MODEL_TYPES}, got {model_type!r}")
    checkpoint = check_checkpoint(checkpoint if checkpoint is not None else default_checkpoint(model_type))
    model = _sam_architectures()[model_type]()
    state = load_tensors(checkpoint, "SAM checkpoint")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise UsageError(f"SAM checkpoint {checkpoint} does not fit --model_type {model_type}: "
                                 f"{str(err).splitlines()[0]}") from None
    return model.to(device).eval()


class SamMaskProposer:
    """SamAutomaticMaskGenerator on a lazily loaded model (no loading when every scene is done)."""

    def __init__(self, model_type: str = "vit_h", checkpoint: Optional[Union[str, Path]] = None,
                 device: Union[str, torch.device] = "cpu", **generator_settings: Any):
        self.model_type = model_type
        self.checkpoint = check_checkpoint(checkpoint if checkpoint is not None else default_checkpoint(model_type))
        self.device = device
        self.settings = {**RELEASED_GENERATOR_SETTINGS, **generator_settings}
        self._generator = None

    def __call__(self, image: np.ndarray) -> list[MaskRecord]:
        if self._generator is None:
            from segment_anything import SamAutomaticMaskGenerator

            model = build_sam(self.model_type, self.checkpoint, self.device)
            self._generator = SamAutomaticMaskGenerator(model, **self.settings)
        return self._generator.generate(image)


def no_masks(image: np.ndarray) -> list[MaskRecord]:
    """The 'random' mode: no masks, so the whole scene is one (background) segment."""
    return []


# --- one split ---------------------------------------------------------------------------------

def _preview_path(scene_dir: Path, layout: SceneLayout) -> Path:
    return scene_dir / layout.masks_preview_file


def segment_scene(scene_dir: Path, propose: MaskProposer, start_id: int, layout: SceneLayout = SceneLayout(),
                  min_area: int = MIN_AREA) -> tuple[np.ndarray, int]:
    """Segment one scene's reference LDR, write masks.npy and masks.png; returns (ids, next_id)."""
    image = read_ldr_uint8(reference_ldr_file(scene_dir, layout))
    ids, next_id = paint_masks(propose(image), image.shape[:2], start_id, min_area)
    write_segments(scene_dir / layout.masks_file, ids)
    write_png(_preview_path(scene_dir, layout), segment_colours(ids))
    return ids, next_id


def _check_unique_ids(ids_by_scene: dict[str, np.ndarray]) -> None:
    owner: dict[int, str] = {}
    for name, ids in ids_by_scene.items():
        for segment_id in ids.tolist():
            if segment_id in owner:
                raise SegmentIdError(
                    f"segment ID {segment_id} is used by scenes {owner[segment_id]} and {name}; "
                    "regenerate the split with --overwrite"
                )
            owner[segment_id] = name


def segment_split(dataset_dir: Union[str, Path], split: str = "Training", propose: MaskProposer = no_masks,
                  layout: SceneLayout = SceneLayout(), overwrite: bool = False, min_area: int = MIN_AREA,
                  progress: bool = True) -> int:
    """Write masks for every scene of a split in sorted order; returns the next free segment ID.

    Scenes that already have masks are kept (unless `overwrite`); their largest ID sets where
    the next scene continues, so an interrupted run resumes with the same numbering.
    """
    next_id = 0
    ids_by_scene: dict[str, np.ndarray] = {}
    scene_dirs = list_scenes(dataset_dir, split)
    for scene_dir in scene_dirs:  # before anything is written: the maps never replace a scene's own files
        refuse_overwriting([scene_dir / layout.masks_file, _preview_path(scene_dir, layout)],
                           scene_input_files(scene_dir, layout), how=f"--masks_file {layout.masks_file}")
    scenes = tqdm(scene_dirs, desc=f"segmenting {split}", unit="scene", disable=not progress)
    for scene_dir in scenes:
        masks_path = scene_dir / layout.masks_file
        if masks_path.is_file() and not overwrite:
            ids = read_segments(masks_path, scene_dir.name)
            next_id = max(next_id, int(ids.max()) + 1)
        else:
            ids, next_id = segment_scene(scene_dir, propose, next_id, layout, min_area)
        ids_by_scene[scene_dir.name] = np.unique(ids)
        scenes.set_postfix(next_id=next_id)
    _check_unique_ids(ids_by_scene)
    return next_id


# --- command line ------------------------------------------------------------------------------

INERT_OPTIONS = {"dataset_mode": ("train", "the split segmented is --train_path (released: the same); "
                                            "--test_path is accepted too")}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Write semantic segment maps (masks.npy) for a dataset split.")
    add_data_options(parser, splits=("train", "test"), cache=False)
    parser.add_argument("--mode", "--mask_mode", dest="mode", choices=MODES, default="sam",
                        help="sam: Segment Anything; superpixel: SLIC, no weights; random: one segment per scene")
    parser.add_argument("--sam_checkpoint", type=Path, default=None,
                        help="SAM weights (default: <repository>/pretrain_model/<official file of --model_type>)")
    parser.add_argument("--model_type", choices=(*SAM_MODEL_TYPES, "default"), default="vit_h",
                        help="SAM architecture of the checkpoint ('tiny' is a small test architecture)")
    add_device_options(parser, "where SAM runs: auto (cuda when available, else cpu), cpu, cuda, cuda:N", amp=False)
    parser.add_argument("--overwrite", action="store_true", help="segment scenes that already have masks again")
    parser.add_argument("--min_area", type=int, default=MIN_AREA,
                        help="segments with fewer pixels fall back to the background ID")
    parser.add_argument("--n_segments", type=int, default=DEFAULT_SUPERPIXELS, help="superpixel mode: about this many regions")
    parser.add_argument("--points_per_side", type=int, default=RELEASED_GENERATOR_SETTINGS["points_per_side"])
    parser.add_argument("--pred_iou_thresh", type=float, default=RELEASED_GENERATOR_SETTINGS["pred_iou_thresh"])
    parser.add_argument("--stability_score_thresh", type=float,
                        default=RELEASED_GENERATOR_SETTINGS["stability_score_thresh"])
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    add_debug_option(parser)
    add_inert_options(parser.add_argument_group("released options without effect here"), INERT_OPTIONS)
    args = parser.parse_args(argv)
    if args.model_type == "default":  # the released name of ViT-H
        args.model_type = "vit_h"
    return args


def make_proposer(args: argparse.Namespace) -> MaskProposer:
    """The mask proposer the command-line options ask for."""
    if args.mode == "random":
        return no_masks
    if args.mode == "superpixel":
        return partial(superpixel_masks, n_segments=args.n_segments)
    return SamMaskProposer(args.model_type, args.sam_checkpoint, args.device,
                           points_per_side=args.points_per_side, pred_iou_thresh=args.pred_iou_thresh,
                           stability_score_thresh=args.stability_score_thresh)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    for note in inert_notes(args, INERT_OPTIONS):
        print(note)

    def segment() -> int:
        layout = scene_layout(args)
        args.device = resolve_device(args.device)
        count = segment_split(args.dataset_dir, args.train_path, make_proposer(args), layout, args.overwrite,
                              args.min_area, progress=not args.no_progress)
        print(f"{args.dataset_dir / args.train_path}: {count} segment IDs (0..{count - 1})")
        return 0

    return run_cli(segment, args.debug)


if __name__ == "__main__":
    sys.exit(main())
