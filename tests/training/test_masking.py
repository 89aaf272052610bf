"""Mask and loss maps of the masked training step (docs/METHOD.md, "Masked training step")."""
import pytest
import torch

from training.masking import build_loss_map, build_mask_map


def _random_segments(batch: int = 3, size: int = 24, num_ids: int = 12, seed: int = 0) -> torch.Tensor:
    """B×H×W IDs in irregular blocks of varied sizes (some IDs absent from some samples)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, num_ids, (batch, 1, size // 4, size // 3 + 1), generator=generator).float()
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="nearest")[:, 0].long()


def _masked_counts(segments: torch.Tensor, mask: torch.Tensor) -> dict[tuple[int, int], tuple[int, int]]:
    """{(sample, id): (pixels, masked pixels)}."""
    counts = {}
    for b in range(segments.shape[0]):
        for segment_id in segments[b].unique().tolist():
            inside = segments[b] == segment_id
            counts[(b, segment_id)] = (int(inside.sum()), int((mask[b, 0][inside] == 0).sum()))
    return counts


def test_exact_masked_count_per_sample_and_segment():
    segments = _random_segments()
    ratio_table = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.33, 0.9, 1.0, 1.7, 0.05, 0.75, 0.6, -0.2])
    mask = build_mask_map(segments, ratio_table, torch.Generator().manual_seed(1))
    assert mask.shape == (3, 1, 24, 24) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    for (_, segment_id), (pixels, masked) in _masked_counts(segments, mask).items():
        ratio = min(max(float(ratio_table[segment_id]), 0.0), 1.0)
        assert masked == round(pixels * ratio), (segment_id, pixels, masked)


def test_rounding_is_half_to_even():
    segments = torch.zeros(1, 1, 10, dtype=torch.long)
    segments[0, 0, 5:] = 1  # two segments of 5 pixels
    ratio_table = torch.tensor([0.5, 0.3])  # 2.5 → 2, 1.5 → 2
    mask = build_mask_map(segments, ratio_table, torch.Generator().manual_seed(0))
    assert int((mask[0, 0, 0, :5] == 0).sum()) == 2
    assert int((mask[0, 0, 0, 5:] == 0).sum()) == 2


def test_samples_are_masked_independently():
    segments = torch.zeros(4, 16, 16, dtype=torch.long)  # the same single segment in every sample
    mask = build_mask_map(segments, torch.tensor([0.5]), torch.Generator().manual_seed(3))
    assert all(int((mask[b] == 0).sum()) == 128 for b in range(4))
    for a in range(4):
        for b in range(a + 1, 4):
            assert not torch.equal(mask[a], mask[b])


def test_reproducible_with_a_generator():
    segments = _random_segments(seed=5)
    ratio_table = torch.rand(12, generator=torch.Generator().manual_seed(0))
    first = build_mask_map(segments, ratio_table, torch.Generator().manual_seed(42))
    again = build_mask_map(segments, ratio_table, torch.Generator().manual_seed(42))
    other = build_mask_map(segments, ratio_table, torch.Generator().manual_seed(43))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("ratio, expected", [(0.0, 1.0), (1.0, 0.0), (3.0, 0.0), (-1.0, 1.0)])
def test_ratio_edge_cases(ratio, expected):
    segments = _random_segments()
    mask = build_mask_map(segments, torch.full((12,), ratio))
    assert torch.all(mask == expected)


def test_mask_is_uniform_inside_a_segment():
    # One 10×10 segment next to an unmasked one; each of its pixels should be masked ~30 % of the time.
    segments = torch.zeros(1, 10, 20, dtype=torch.long)
    segments[:, :, 10:] = 1
    ratio_table = torch.tensor([0.3, 0.0])
    generator = torch.Generator().manual_seed(0)
    draws = 1500
    masked = torch.zeros(10, 10)
    for _ in range(draws):
        mask = build_mask_map(segments, ratio_table, generator)[0, 0]
        assert torch.all(mask[:, 10:] == 1)
        masked += 1 - mask[:, :10]
    frequency = masked / draws
    # Binomial std at p = 0.3, n = 1500 is 0.012; allow 5 std for every one of the 100 pixels.
    assert float((frequency - 0.3).abs().max()) < 0.06
    assert float(frequency.mean()) == pytest.approx(0.3, abs=1e-6)  # exactly 30 masked per draw


def test_loss_map_holds_segment_weights():
    segments = _random_segments()
    weight_table = torch.linspace(0.5, 2.0, 12)
    loss_map = build_loss_map(segments, weight_table)
    assert loss_map.shape == (3, 1, 24, 24) and loss_map.dtype == torch.float32
    assert torch.equal(loss_map[:, 0], weight_table[segments])
    # B×1×H×W segments are accepted as well.
    assert torch.equal(build_loss_map(segments.unsqueeze(1), weight_table), loss_map)


def test_mask_map_accepts_channel_dim_and_rejects_bad_shapes():
    segments = _random_segments()
    ratio_table = torch.full((12,), 0.5)
    generator_a, generator_b = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(build_mask_map(segments.unsqueeze(1), ratio_table, generator_a),
                       build_mask_map(segments, ratio_table, generator_b))
    with pytest.raises(ValueError):
        build_mask_map(segments[0], ratio_table)
