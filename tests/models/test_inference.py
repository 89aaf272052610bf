"""Tiled inference: tile layout, blend weights, agreement with the one-pass reconstruction and
the largest input the network ever receives; degenerate padding cases."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from datasets.preprocess import build_network_input
from datasets.synthetic import render_scene
from models.checkpoint import load_model
from models.inference import blend_weights_1d, pad_to_multiple, reconstruct, reconstruct_tiled, tile_starts

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_n3_32x32.pth"
EXPOSURES = 3


class PixelwiseModel(nn.Module):
    """A purely local network: a 1×1 convolution from 6n channels to 3, shifted and clamped to
    [0, 1]. Each output pixel depends on its own input pixel only, so tiling cannot change it."""

    def __init__(self, exposures: int = EXPOSURES, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(6 * exposures, 3, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator) * 0.3)
            self.conv.bias.copy_(torch.full((3,), 0.5))

    def forward(self, x: torch.Tensor, mask_map: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x).clamp(0.0, 1.0)


class InputRecorder(nn.Module):
    """Forwards to ``model`` and records the spatial size of every input it is handed."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.sizes: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor, mask_map: torch.Tensor | None = None) -> torch.Tensor:
        self.sizes.append(tuple(x.shape[-2:]))
        return self.model(x, mask_map)

    @property
    def largest_area(self) -> int:
        return max(h * w for h, w in self.sizes)


@pytest.fixture(scope="module")
def tiny_smnet() -> nn.Module:
    return load_model(FIXTURE).eval()


def scene_input(size: tuple[int, int], seed: int = 5) -> torch.Tensor:
    """1×18×H×W network input of a generated three-exposure scene."""
    scene = render_scene(np.random.default_rng(seed), size)
    return torch.from_numpy(build_network_input(scene.ldrs, scene.exposures)).unsqueeze(0)


# ---------------------------------------------------------------------------
# Tile layout and blend weights
# ---------------------------------------------------------------------------

LAYOUTS = [(length, tile, overlap)
           for length in (1, 2, 7, 31, 32, 33, 64, 100, 127, 250, 1001)
           for tile, overlap in ((1, 0), (8, 0), (8, 7), (16, 4), (32, 8), (48, 16), (64, 32), (128, 64))]


def test_tile_starts_cover_the_length_with_the_requested_overlap() -> None:
    for length, tile, overlap in LAYOUTS:
        starts = tile_starts(length, tile, overlap)
        size = min(tile, length)
        context = f"length {length}, tile {tile}, overlap {overlap}: {starts}"
        assert starts[0] == 0, context
        assert starts[-1] + size == length, context
        assert all(0 <= s <= length - size for s in starts), context
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        assert all(gap > 0 for gap in gaps), context
        # Neighbours share at least `overlap` pixels, so together the tiles cover [0, length).
        assert all(size - gap >= overlap for gap in gaps), context
        covered = torch.zeros(length, dtype=torch.bool)
        for s in starts:
            covered[s:s + size] = True
        assert covered.all(), context
        # Evenly spaced, and no more tiles than needed for the overlap.
        assert not gaps or max(gaps) - min(gaps) <= 1, context
        assert len(starts) == (1 if length <= tile else math.ceil((length - overlap) / (tile - overlap))), context


def test_one_tile_when_it_is_at_least_the_length() -> None:
    assert tile_starts(50, 50, 10) == [0]
    assert tile_starts(50, 64, 10) == [0]
    assert tile_starts(51, 50, 10) == [0, 1]


@pytest.mark.parametrize("tile, overlap", [(0, 0), (-8, 0), (8, 8), (8, 9), (8, -1)])
def test_invalid_tile_or_overlap_is_refused(tile: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        tile_starts(100, tile, overlap)


def test_blend_weights_sum_to_one_at_every_pixel() -> None:
    for length, tile, overlap in LAYOUTS:
        windows = blend_weights_1d(length, tile, overlap)
        assert [start for start, _ in windows] == tile_starts(length, tile, overlap)
        total = torch.zeros(length, dtype=torch.float64)
        coverage = torch.zeros(length, dtype=torch.int64)
        for start, weights in windows:
            assert weights.dtype == torch.float32 and weights.numel() == min(tile, length)
            assert (weights >= 0).all() and (weights <= 1).all()
            total[start:start + weights.numel()] += weights.double()
            coverage[start:start + weights.numel()] += 1
        context = f"length {length}, tile {tile}, overlap {overlap}"
        assert torch.allclose(total, torch.ones(length, dtype=torch.float64), atol=1e-6), context
        # A pixel inside one tile only takes that tile's value unchanged.
        for start, weights in windows:
            alone = coverage[start:start + weights.numel()] == 1
            assert torch.equal(weights[alone], torch.ones(int(alone.sum()))), context


def test_blend_ramps_are_smooth_across_an_overlap() -> None:
    (_, first), (second_start, second) = blend_weights_1d(100, 64, 28)
    shared = first[second_start:]
    assert shared.numel() == 28
    assert (shared[1:] < shared[:-1]).all()  # falls monotonically from ~1 to ~0
    assert torch.allclose(shared + second[:28], torch.ones(28), atol=1e-6)
    assert 0.0 < float(shared[-1]) < 0.01 and 0.99 < float(shared[0]) < 1.0


# ---------------------------------------------------------------------------
# Tiled versus one-pass reconstruction
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("size, tile", [((37, 45), 64), ((37, 45), 45), ((40, 24), 40)])
def test_a_tile_covering_the_image_is_the_one_pass_reconstruction(tiny_smnet: nn.Module,
                                                                  size: tuple[int, int], tile: int) -> None:
    x = scene_input(size)
    expected = reconstruct(tiny_smnet, x, 16)
    tiled = reconstruct_tiled(tiny_smnet, x, tile, overlap=8, multiple=16)
    assert tiled.shape == (1, 3, *size) and tiled.device.type == "cpu"
    assert torch.equal(tiled, expected)


@pytest.mark.parametrize("size, tile, overlap, multiple", [
    ((37, 53), 16, 4, 8),
    ((64, 80), 32, 0, 16),
    ((45, 31), 20, 7, 8),
    ((17, 90), 24, 12, 128),
    ((61, 47), 16, 12, 16),  # up to four tiles per axis over a pixel
    ((1, 40), 16, 4, 8),
])
def test_tiling_does_not_change_a_pixelwise_network(size: tuple[int, int], tile: int, overlap: int,
                                                    multiple: int) -> None:
    model = PixelwiseModel().eval()
    x = torch.rand(2, 6 * EXPOSURES, *size, generator=torch.Generator().manual_seed(1)) * 2
    expected = reconstruct(model, x, multiple)
    assert 0.0 < float(expected.mean()) < 1.0
    tiled = reconstruct_tiled(model, x, tile, overlap, multiple=multiple)
    assert tiled.shape == (2, 3, *size)
    assert torch.allclose(tiled, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("size, tile, overlap, multiple", [((64, 96), 48, 16, 16), ((57, 83), 40, 16, 32)])
def test_tiled_smnet_stays_close_to_one_pass(tiny_smnet: nn.Module, size: tuple[int, int], tile: int,
                                             overlap: int, multiple: int) -> None:
    # SMNet's channel attention pools over its whole input and its borders see padding, so tiles
    # are not exact; measured mean differences are ~1e-5 to 2e-3 of a mean output near 0.46.
    x = scene_input(size)
    one_pass = reconstruct(tiny_smnet, x, multiple)
    tiled = reconstruct_tiled(tiny_smnet, x, tile, overlap, multiple=multiple)
    difference = (tiled - one_pass).abs()
    assert float(difference.mean()) < 5e-3
    assert float(difference.max()) < 0.2
    assert float(tiled.min()) >= 0.0 and float(tiled.max()) <= 1.0


@pytest.mark.parametrize("tile, multiple, padded_tile", [(32, 16, 32), (40, 16, 48), (48, 128, 128)])
def test_the_network_input_is_bounded_by_the_padded_tile(tile: int, multiple: int, padded_tile: int) -> None:
    # Device memory follows the largest input handed to the network: it must not grow with the image.
    for size in ((40, 50), (130, 70), (300, 257)):
        recorder = InputRecorder(PixelwiseModel())
        x = torch.rand(1, 6 * EXPOSURES, *size)
        reconstruct_tiled(recorder, x, tile, 8, multiple=multiple)
        rows, cols = len(tile_starts(size[0], tile, 8)), len(tile_starts(size[1], tile, 8))
        assert len(recorder.sizes) == rows * cols
        assert all(h <= padded_tile and w <= padded_tile for h, w in recorder.sizes), recorder.sizes
        assert recorder.largest_area <= padded_tile**2
    one_pass = InputRecorder(PixelwiseModel())
    reconstruct(one_pass, torch.rand(1, 6 * EXPOSURES, 300, 257), multiple)
    assert one_pass.largest_area > padded_tile**2  # the one-pass input does grow with the image


def test_tiled_inference_runs_on_the_device_given() -> None:
    model = PixelwiseModel()
    x = torch.rand(1, 6 * EXPOSURES, 50, 70)
    out = reconstruct_tiled(model, x, 32, 8, multiple=8, device="cpu")
    assert out.device.type == "cpu" and out.dtype == torch.float32


# ---------------------------------------------------------------------------
# Padding of degenerate sizes (the general cases are in test_model.py)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(1, 5), (3, 1), (1, 1), (1, 130), (2, 2)])
@pytest.mark.parametrize("multiple", [4, 16])
def test_pad_to_multiple_handles_single_rows_and_columns(size: tuple[int, int], multiple: int) -> None:
    x = torch.rand(1, 2, *size)
    padded = pad_to_multiple(x, multiple)
    assert padded.shape[-2] % multiple == 0 and padded.shape[-1] % multiple == 0
    assert padded.shape[-2] - size[0] < multiple and padded.shape[-1] - size[1] < multiple
    assert torch.equal(padded[..., :size[0], :size[1]], x)
    if size[0] == 1:  # a single row is repeated downwards
        assert torch.equal(padded[..., -1, :size[1]], x[..., 0, :])
    if size[1] == 1:
        assert torch.equal(padded[..., :size[0], -1], x[..., :, 0])


def test_one_pixel_high_image_reconstructs() -> None:
    model = PixelwiseModel()
    x = torch.rand(1, 6 * EXPOSURES, 1, 37)
    assert torch.allclose(reconstruct(model, x, 16), model(x), atol=1e-6)
