"""Generated scenes: benchmark layout, camera model, label units, saturation, motion, determinism."""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from datasets import list_scenes, load_scene
from datasets.preprocess import exposure_times
from datasets.synthetic import main, make_dataset, render_scene, saturated_fraction
from utils.image_io import read_ldr, write_hdr

FIXTURE_SIZE = (64, 80)  # the size of the synthetic_dataset fixture's scenes


def _relative_error_to_label(ldr: np.ndarray, stop: float, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|LDR**2.2 / t − label| / label on well-exposed pixels, and the well-exposed mask."""
    linear = ldr ** 2.2 / 2.0 ** stop
    well_exposed = (ldr > 0.15).all(axis=2) & (ldr < 0.9).all(axis=2)
    error = np.abs(linear - label).max(axis=2) / np.maximum(label.max(axis=2), 1e-6)
    return error, well_exposed


def test_dataset_is_written_in_the_benchmark_layout(synthetic_dataset):
    assert [p.name for p in list_scenes(synthetic_dataset, "Training")] == ["scene_0001", "scene_0002", "scene_0003"]
    assert len(list_scenes(synthetic_dataset, "Test")) == 2
    scene_dir = synthetic_dataset / "Training" / "scene_0001"
    assert sorted(p.name for p in scene_dir.iterdir()) == [
        "HDRImg.hdr", "exposure.txt", "input_1.tif", "input_2.tif", "input_3.tif"]
    assert (scene_dir / "exposure.txt").read_text().split() == ["0", "2", "4"]
    raw = cv2.imread(str(scene_dir / "input_1.tif"), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.shape == FIXTURE_SIZE + (3,)
    for split in ("Training", "Test"):
        for scene_path in list_scenes(synthetic_dataset, split):
            scene = load_scene(scene_path)
            assert scene.size == FIXTURE_SIZE and scene.num_exposures == 3


def test_ldrs_are_sorted_shortest_exposure_first(synthetic_dataset):
    scene = load_scene(synthetic_dataset / "Training" / "scene_0002")
    means = scene.ldrs.mean(axis=(1, 2, 3))
    assert means[0] < means[1] < means[2]


def test_label_is_in_network_input_units_and_in_0_1():
    scene = render_scene(np.random.default_rng(5), (96, 128))
    assert scene.label.min() >= 0 and 0.8 < scene.label.max() <= 1.0
    # the reference exposure sees the label's geometry: LDR**2.2 / t matches up to noise
    error, well_exposed = _relative_error_to_label(scene.ldrs[1], scene.exposures[1], scene.label)
    assert well_exposed.mean() > 0.3
    assert np.median(error[well_exposed]) < 0.03 and np.mean(error[well_exposed] > 0.25) < 0.005
    # radiance 1.0 is white in the shortest exposure: the sky is not clipped there
    assert saturated_fraction(scene.ldrs[0]) < 0.01


def test_bright_parts_are_hundreds_of_times_brighter_than_shadows():
    for seed in range(4):
        scene = render_scene(np.random.default_rng(seed), (96, 128))
        saturated = scene.ldrs[1].max(axis=2) >= 0.99
        luminance = scene.label.mean(axis=2)
        assert luminance[saturated].mean() / np.percentile(luminance, 1) > 200


@pytest.mark.parametrize("exposures", [(0, 2, 4), (0, 3, 6)])
def test_reference_exposure_clips_5_to_20_percent(exposures):
    for seed in range(8):
        scene = render_scene(np.random.default_rng(seed), (96, 128), exposures)
        assert 0.05 <= saturated_fraction(scene.ldrs[1]) <= 0.20, f"seed {seed}"


def test_saturation_holds_in_the_written_files(synthetic_dataset):
    for scene_dir in list_scenes(synthetic_dataset, "Training"):
        assert 0.05 <= saturated_fraction(read_ldr(scene_dir / "input_2.tif")) <= 0.20


def test_other_exposures_are_misaligned_with_the_label():
    scene = render_scene(np.random.default_rng(2), (96, 128))
    times = exposure_times(scene.exposures)
    assert times.tolist() == [1, 4, 16]
    for index in (0, 2):
        error, well_exposed = _relative_error_to_label(scene.ldrs[index], scene.exposures[index], scene.label)
        assert np.mean(error[well_exposed] > 0.25) > 0.01, f"exposure {index} looks aligned"


def test_generation_is_deterministic_under_a_seed(tmp_path):
    first = make_dataset(tmp_path / "a", 2, 1, size=(32, 48), seed=7)
    second = make_dataset(tmp_path / "b", 2, 1, size=(32, 48), seed=7)
    other = make_dataset(tmp_path / "c", 2, 1, size=(32, 48), seed=8)
    for relative in ("Training/scene_0002/input_3.tif", "Training/scene_0001/HDRImg.hdr", "Test/scene_0001/input_1.tif"):
        assert (first / relative).read_bytes() == (second / relative).read_bytes()
        assert (first / relative).read_bytes() != (other / relative).read_bytes()


def test_scenes_differ_from_each_other(synthetic_dataset):
    labels = [load_scene(p).label for p in list_scenes(synthetic_dataset, "Training")]
    assert not np.allclose(labels[0], labels[1])


def test_command_line_with_other_exposures(tmp_path):
    main(["--out", str(tmp_path / "d"), "--train", "1", "--test", "1", "--size", "40", "56",
          "--seed", "3", "--exposures", "0", "3", "6"])
    scene = load_scene(tmp_path / "d" / "Test" / "scene_0001")
    assert scene.exposures.tolist() == [0, 3, 6] and scene.size == (40, 56)
    assert 0.05 <= saturated_fraction(scene.ldrs[1]) <= 0.20


def test_scenes_from_a_user_radiance_map(tmp_path):
    rng = np.random.default_rng(0)
    radiance = np.exp(rng.normal(0, 2, size=(50, 70, 3))).astype(np.float32)
    write_hdr(tmp_path / "map.hdr", radiance)
    out = make_dataset(tmp_path / "d", 2, 0, size=(32, 40), seed=1, from_hdr=[tmp_path / "map.hdr"])
    scene = load_scene(out / "Training" / "scene_0001")
    assert scene.size == (32, 40)
    assert scene.label.min() >= 0 and 0.5 < scene.label.max() <= 1.0


def test_refuses_to_mix_into_an_existing_dataset(tmp_path):
    make_dataset(tmp_path, 1, 1, size=(32, 32))
    with pytest.raises(FileExistsError, match="not empty"):
        make_dataset(tmp_path, 2, 1, size=(32, 32))
    make_dataset(tmp_path, 2, 1, size=(32, 32), overwrite=True)
    assert len(list_scenes(tmp_path, "Training")) == 2


def test_exposures_must_increase():
    with pytest.raises(ValueError, match="increasing"):
        render_scene(np.random.default_rng(0), (32, 32), exposures=(4, 2, 0))


def test_a_small_dataset_takes_seconds(tmp_path):
    start = time.perf_counter()
    make_dataset(tmp_path, num_train=8, num_test=3, size=(256, 256), seed=0)
    assert time.perf_counter() - start < 15
