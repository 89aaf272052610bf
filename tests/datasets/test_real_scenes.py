"""Scenes from real radiance maps: layout, clipping, split by source, determinism, label, motion."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from datasets import HDRFullImageDataset, list_scenes, load_scene
from datasets.preprocess import exposure_times
from datasets.real_scenes import (RADIANCE_DIR, TEST_SOURCES, load_radiance_maps, main, make_real_dataset,
                                  SceneSpread, render_real_scene, split_sources, vary_colour)
from datasets.synthetic import SATURATED_RANGE, saturated_fraction

SIZE = (64, 80)


@pytest.fixture(scope="module")
def real_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 Training and 3 Test scenes of 64×80 from the repository's radiance maps."""
    out = tmp_path_factory.mktemp("real") / "data"
    make_real_dataset(out, num_train=4, num_test=3, size=SIZE, seed=5)
    return out


def test_radiance_maps_are_in_the_repository():
    maps = load_radiance_maps()
    assert len(maps) >= 10 and set(TEST_SOURCES) <= set(maps)
    for image in maps.values():
        assert image.dtype == np.float32 and image.ndim == 3 and max(image.shape[:2]) <= 1024
        assert np.isfinite(image).all() and image.min() >= 0
    assert (RADIANCE_DIR / "LICENSE-blender-studiolights.txt").is_file()
    assert (RADIANCE_DIR / "LICENSE-ILM-OpenEXR.txt").is_file()


def test_scenes_load_in_the_benchmark_layout(real_dataset):
    for split, count in (("Training", 4), ("Test", 3)):
        scenes = list_scenes(real_dataset, split)
        assert len(scenes) == count
        for scene_dir in scenes:
            assert sorted(p.name for p in scene_dir.iterdir()) == [
                "HDRImg.hdr", "exposure.txt", "input_1.tif", "input_2.tif", "input_3.tif"]
            scene = load_scene(scene_dir)
            assert scene.size == SIZE and scene.num_exposures == 3
            assert np.diff(scene.exposures).tolist() in ([2.0, 2.0], [3.0, 3.0]) and scene.exposures[0] == 0
            assert 0.0 <= scene.label.min() and scene.label.max() <= 1.0
        dataset = HDRFullImageDataset(real_dataset, split, cache="memory")
        sample = dataset[0]
        assert tuple(sample["input"].shape) == (18,) + SIZE and tuple(sample["label"].shape) == (3,) + SIZE


def test_reference_exposure_clips_as_in_the_benchmarks(real_dataset):
    low, high = SATURATED_RANGE
    for split in ("Training", "Test"):
        for scene_dir in list_scenes(real_dataset, split):
            scene = load_scene(scene_dir)
            assert low <= saturated_fraction(scene.ldrs[scene.reference_index]) <= high, scene_dir


def test_training_and_test_scenes_never_share_a_source(real_dataset):
    record = json.loads((real_dataset / "scenes.json").read_text())
    used = {split: {name for scene in scenes.values() for name in [scene["background"], *scene["objects"]]}
            for split, scenes in record.items()}
    assert used["Test"] <= set(TEST_SOURCES)
    assert not used["Training"] & used["Test"]
    for scenes in record.values():
        assert all(scene["background"] not in scene["objects"] for scene in scenes.values())
    names = list(load_radiance_maps())
    assert not set(split_sources(names, "Training")) & set(split_sources(names, "Test"))


def test_generation_is_deterministic_in_the_seed(real_dataset, tmp_path):
    again = tmp_path / "again"
    make_real_dataset(again, num_train=2, num_test=1, size=SIZE, seed=5)
    other = tmp_path / "other"
    make_real_dataset(other, num_train=1, num_test=0, size=SIZE, seed=6)
    for split, name in (("Training", "scene_0001"), ("Training", "scene_0002"), ("Test", "scene_0001")):
        for file in ("input_1.tif", "input_3.tif", "HDRImg.hdr", "exposure.txt"):
            assert (again / split / name / file).read_bytes() == (real_dataset / split / name / file).read_bytes()
    first = "Training/scene_0001/input_2.tif"
    assert (other / first).read_bytes() != (real_dataset / first).read_bytes()


def test_label_is_the_reference_radiance_where_not_clipped(real_dataset):
    for split in ("Training", "Test"):
        for scene_dir in list_scenes(real_dataset, split):
            scene = load_scene(scene_dir)
            ref = scene.reference_index
            ldr = scene.ldrs[ref]
            radiance = ldr**2.2 / float(exposure_times(scene.exposures)[ref])
            # channel values well inside the range (a strongly coloured pixel may have one dark channel)
            well_exposed = (ldr > 0.15) & (ldr < 0.9)
            # relative to the pixel's brightest channel: the label's RGBE encoding shares one exponent
            error = np.abs(radiance - scene.label) / np.maximum(scene.label.max(axis=2, keepdims=True), 1e-6)
            assert well_exposed.mean() > 0.05
            assert np.median(error[well_exposed]) < 0.03 and np.mean(error[well_exposed] > 0.1) < 0.01, scene_dir


def test_colour_variation_permutes_rebalances_and_keeps_radiance_valid():
    """One variation for all views of a scene: a red-only view and a green-only view get the
    same channel mapping; gains average 1; nothing goes negative."""
    red = np.zeros((8, 8, 3), np.float32)
    red[..., 0] = 1.0
    grey = np.full((8, 8, 3), 0.5, np.float32)
    seen = set()
    for seed in range(12):
        varied_red, varied_grey = vary_colour(np.random.default_rng(seed), [red, grey])
        assert varied_red.dtype == np.float32 and varied_red.min() >= 0 and varied_grey.min() >= 0
        seen.add(int(np.argmax(varied_red[0, 0])))
        # a grey pixel keeps its mean brightness: the gains average 1
        assert abs(float(varied_grey.mean()) - 0.5) < 1e-5
    assert seen == {0, 1, 2}


def test_colour_variation_is_opt_in_and_for_training_scenes_only(monkeypatch, tmp_path):
    calls = []
    original = vary_colour

    def spy(rng, views):
        calls.append(len(views))
        return original(rng, views)

    monkeypatch.setattr("datasets.real_scenes.vary_colour", spy)
    make_real_dataset(tmp_path / "plain", num_train=2, num_test=1, size=SIZE, seed=5)
    assert not calls
    make_real_dataset(tmp_path / "train", num_train=2, num_test=0, size=SIZE, seed=5, colour_variation=True)
    assert calls and all(count == 3 for count in calls)
    calls.clear()
    main(["--out", str(tmp_path / "test"), "--train", "0", "--test", "2", "--size", *map(str, SIZE),
          "--colour_variation"])
    assert not calls
    main(["--out", str(tmp_path / "cli"), "--train", "1", "--test", "0", "--size", *map(str, SIZE),
          "--colour_variation"])
    assert calls


def test_objects_move_between_exposures():
    """A green object over a grey ramp: its footprint differs from frame to frame."""
    ramp = np.repeat(np.geomspace(0.01, 1.0, 200, dtype=np.float32)[None, :, None], 160, axis=0)
    maps = {"grey": np.repeat(ramp, 3, axis=2), "green": np.zeros((160, 200, 3), np.float32)}
    maps["green"][..., 1] = 1.0
    size = (96, 128)
    for seed in range(3):
        scene = render_real_scene(np.random.default_rng(seed), maps, "grey", ["green"], size, (0.0, 2.0, 4.0))
        masks = [(ldr[..., 1] > 2 * ldr[..., 0] + 0.05) for ldr in scene.ldrs]
        assert all(mask.sum() > 20 for mask in masks)
        for a, b in ((masks[0], masks[1]), (masks[1], masks[2])):
            assert (a ^ b).sum() / (a | b).sum() > 0.2


def test_command_line_with_fixed_exposures(tmp_path):
    main(["--out", str(tmp_path / "cli"), "--train", "1", "--test", "1", "--size", "48", "64",
          "--exposures", "0", "3", "6"])
    for split in ("Training", "Test"):
        scene = load_scene(list_scenes(tmp_path / "cli", split)[0])
        assert scene.exposures.tolist() == [0.0, 3.0, 6.0] and scene.size == (48, 64)


def _green_object_footprints(spread: SceneSpread, seed: int) -> list[np.ndarray]:
    ramp = np.repeat(np.geomspace(0.01, 1.0, 200, dtype=np.float32)[None, :, None], 160, axis=0)
    maps = {"grey": np.repeat(ramp, 3, axis=2), "green": np.zeros((160, 200, 3), np.float32)}
    maps["green"][..., 1] = 1.0
    scene = render_real_scene(np.random.default_rng(seed), maps, "grey", ["green"], (96, 128), (0.0, 2.0, 4.0),
                              spread=spread)
    return [(ldr[..., 1] > 2 * ldr[..., 0] + 0.05) for ldr in scene.ldrs]


def test_the_spread_sets_object_count_size_and_speed():
    assert not any(mask.any() for mask in _green_object_footprints(SceneSpread(objects=(0, 0)), 0))
    def centre(mask: np.ndarray) -> np.ndarray:
        return np.argwhere(mask).mean(axis=0)

    for seed in range(3):
        small = _green_object_footprints(SceneSpread(objects=(1, 1), object_size=(0.1, 0.1), speed=(0.02, 0.02)), seed)
        large = _green_object_footprints(SceneSpread(objects=(1, 1), object_size=(0.4, 0.4), speed=(0.15, 0.15)), seed)
        assert large[1].sum() > 8 * small[1].sum() > 0
        # per exposure step the slow object moves about 0.02 × 96 px, the fast one 0.15 × 96 px (plus shake)
        slow, fast = (np.linalg.norm(centre(frames[2]) - centre(frames[1])) for frames in (small, large))
        assert slow < 5 and fast > 10


def test_a_static_scene_from_a_tripod_agrees_in_every_frame():
    """No objects and no shake: every frame, exposure-normalised, is the label where it is well exposed."""
    maps = load_radiance_maps()
    scene = render_real_scene(np.random.default_rng(1), maps, "courtyard", ["sunrise", "Desk"], SIZE,
                              (0.0, 2.0, 4.0), spread=SceneSpread(objects=(0, 0), shake=0.0))
    for ldr, time in zip(scene.ldrs, exposure_times(scene.exposures)):
        well_exposed = (ldr > 0.15) & (ldr < 0.9)
        error = np.abs(ldr**2.2 / float(time) - scene.label) / np.maximum(scene.label.max(axis=2, keepdims=True), 1e-6)
        assert well_exposed.mean() > 0.02 and np.quantile(error[well_exposed], 0.99) < 0.1


@pytest.mark.parametrize("clipped", [(0.02, 0.04), (0.2, 0.25)])
def test_the_spread_sets_how_much_the_reference_clips(tmp_path, clipped):
    spread = SceneSpread(clipped=clipped)
    make_real_dataset(tmp_path / "data", num_train=0, num_test=3, size=SIZE, seed=2, spread=spread)
    low, high = spread.accepted_clipping()
    for scene_dir in list_scenes(tmp_path / "data", "Test"):
        scene = load_scene(scene_dir)
        assert low <= saturated_fraction(scene.ldrs[scene.reference_index]) <= high, scene_dir


@pytest.mark.parametrize("bad", [["--clipped", "0.3", "0.2"], ["--clipped", "0.5", "1.0"], ["--objects", "2", "1"],
                                 ["--speed", "-0.1", "0.1"], ["--shake", "-1"]])
def test_a_spread_that_cannot_be_drawn_is_refused(tmp_path, bad, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--out", str(tmp_path / "x"), "--train", "0", "--test", "1", *bad])
    assert stop.value.code == 2 and bad[0] in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
