"""Schedules, per-segment PSNR-μ and the metric-guided table update (docs/METHOD.md)."""
import math

import pytest
import torch

from training.curriculum import (
    PSNR_CAP_DB,
    SegmentTables,
    build_lr_scheduler,
    is_guided_update_epoch,
    learning_rate,
    mask_ratio,
    segment_psnr_mu,
    update_tables,
)
from utils.tonemap import mu_tonemap


# ----------------------------------------------------------------------------- mask ratio


@pytest.mark.parametrize(
    "epoch, expected",
    [(1, 0.0), (300, 0.0), (301, 0.018), (325, 0.45), (350, 0.9), (351, 0.882), (399, 0.018), (400, 0.0)],
)
def test_mask_ratio_matches_training_table(epoch, expected):
    assert mask_ratio(epoch) == pytest.approx(expected, abs=1e-12)


def test_mask_ratio_without_curriculum_is_constant_in_phase_2():
    assert mask_ratio(300, curriculum=False) == 0.0
    assert [mask_ratio(e, curriculum=False) for e in (301, 350, 351, 400)] == [0.75] * 4
    assert mask_ratio(340, curriculum=False, constant_ratio=0.5) == 0.5


def test_mask_ratio_scales_to_short_runs():
    # 6 phase-1 epochs, 4 phase-2 epochs: halves of 2 epochs.
    ratios = [mask_ratio(e, phase1_epochs=6, total_epochs=10) for e in range(1, 11)]
    assert ratios == pytest.approx([0, 0, 0, 0, 0, 0, 0.45, 0.9, 0.45, 0.0])
    assert mask_ratio(3, phase1_epochs=2, total_epochs=2) == 0.0
    assert mask_ratio(450) == 0.0


def test_mask_ratio_rejects_zero_based_epochs():
    with pytest.raises(ValueError):
        mask_ratio(0)


# ----------------------------------------------------------------------------- learning rate


def _cosine(e, period, lr=5e-4, eta_min=5e-5):
    return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * e / period)) / 2


@pytest.mark.parametrize(
    "epoch, expected",
    [
        (1, 5e-4),
        (300, _cosine(299, 400)),
        (301, 5e-4),  # phase 2 restarts: docs/METHOD.md's e = 300
        (350, _cosine(49, 100)),
        (351, 2.75e-4),  # e = 350, half way down
        (400, _cosine(99, 100)),
    ],
)
def test_learning_rate_at_key_epochs(epoch, expected):
    assert learning_rate(epoch) == pytest.approx(expected, rel=1e-12)


def test_learning_rate_values_are_in_range_and_end_near_eta_min():
    rates = [learning_rate(e) for e in range(1, 401)]
    assert all(5e-5 <= r <= 5e-4 for r in rates)
    assert rates[299] < rates[298] and rates[300] == pytest.approx(5e-4)
    assert rates[-1] == pytest.approx(5.011e-5, rel=1e-3)


def test_lambda_lr_scheduler_follows_learning_rate_and_resumes():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=5e-4)
    sched = build_lr_scheduler(opt, phase1_epochs=6, total_epochs=10)
    seen = []
    for epoch in range(1, 11):
        assert sched.last_epoch == epoch - 1
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        if epoch == 4:
            saved = (opt.state_dict(), sched.state_dict())
    expected = [learning_rate(e, phase1_epochs=6, total_epochs=10) for e in range(1, 11)]
    assert seen == pytest.approx(expected, rel=1e-12)
    assert seen[6] == pytest.approx(5e-4)  # epoch 7 starts phase 2

    # Resume after epoch 4 into a scheduler built with a different schedule: the saved one wins.
    opt2 = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = build_lr_scheduler(opt2, phase1_epochs=300, total_epochs=400)
    opt2.load_state_dict(saved[0])
    sched2.load_state_dict(saved[1])
    resumed = []
    for _ in range(5, 11):
        resumed.append(opt2.param_groups[0]["lr"])
        sched2.step()
    assert resumed == pytest.approx(expected[4:], rel=1e-12)


def test_lambda_lr_scheduler_start_epoch():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = build_lr_scheduler(opt, start_epoch=301)
    assert sched.last_epoch == 300
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4)
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(learning_rate(302))


def test_guided_update_epochs():
    assert [e for e in range(1, 21) if is_guided_update_epoch(e)] == [5, 10, 15, 20]
    assert all(is_guided_update_epoch(e) for e in range(301, 401))
    assert is_guided_update_epoch(3, phase1_epochs=2)


# ----------------------------------------------------------------------------- per-segment PSNR-μ


def test_segment_psnr_mu_matches_per_segment_loop():
    gen = torch.Generator().manual_seed(0)
    label = torch.rand(3, 12, 10, generator=gen)
    pred = (label + 0.05 * torch.randn(3, 12, 10, generator=gen)).clamp(0, 1)
    segments = torch.randint(3, 7, (12, 10), generator=gen)
    segments[0, 0] = 42  # a one-pixel segment

    ids, psnr = segment_psnr_mu(pred, label, segments.float().unsqueeze(-1))  # H×W×1 float, as masks.npy

    assert ids.tolist() == sorted(set(segments.flatten().tolist()))
    tp, tl = mu_tonemap(pred.double()), mu_tonemap(label.double())
    for i, psnr_i in zip(ids.tolist(), psnr.tolist()):
        inside = segments == i
        mse = ((tp - tl)[:, inside] ** 2).mean().item()
        assert psnr_i == pytest.approx(20 * math.log10(1 / math.sqrt(mse)), abs=1e-4)


def test_segment_psnr_mu_caps_exact_segments_and_accepts_batch_dim():
    label = torch.rand(1, 3, 4, 4)
    pred = label.clone()
    pred[0, :, :2] += 0.1
    segments = torch.zeros(4, 4, dtype=torch.long)
    segments[2:] = 1
    ids, psnr = segment_psnr_mu(pred, label, segments)
    assert ids.tolist() == [0, 1]
    assert psnr[1].item() == PSNR_CAP_DB
    assert torch.isfinite(psnr).all() and psnr[0] < 60


# ----------------------------------------------------------------------------- tables


def test_tables_start_at_ratio_0_weight_1_and_round_trip_state():
    tables = SegmentTables(5)
    assert tables.ratio.tolist() == [0.0] * 5 and tables.weight.tolist() == [1.0] * 5
    update_tables(tables, torch.tensor([1, 3]), torch.tensor([20.0, 40.0]), R=0.5)
    assert tables.ratio.tolist() == [0.0] * 5  # nothing changes before commit
    assert tables.commit() == 2
    state = tables.state_dict()
    restored = SegmentTables(5)
    restored.load_state_dict(state)
    assert torch.equal(restored.ratio, tables.ratio) and torch.equal(restored.weight, tables.weight)
    grown = SegmentTables(6)  # a split with one more segment: the known IDs keep their values
    grown.load_state_dict(state)
    assert torch.equal(grown.ratio[:5], tables.ratio) and grown.ratio[5] == 0 and grown.weight[5] == 1
    with pytest.raises(ValueError):
        SegmentTables(5).load_state_dict({**state, "weight": torch.ones(4)})


def test_tables_are_sized_by_the_ids_in_use_whatever_their_values():
    tables = SegmentTables(torch.tensor([16_000_000, 7, 7, 3]))
    assert tables.ids.tolist() == [3, 7, 16_000_000] and tables.num_ids == 3
    update_tables(tables, torch.tensor([16_000_000, 3]), torch.tensor([20.0, 40.0]), R=0.5)
    tables.commit()
    assert tables.ratio[1] == 0 and tables.ratio[0] > 0 and tables.ratio[2] > 0
    segments = torch.tensor([[3, 16_000_000], [7, 7]])
    assert tables.index(segments).tolist() == [[0, 2], [1, 1]]
    # tables saved without IDs (indexed by ID 0..n-1) load by ID
    old = SegmentTables(torch.tensor([1, 3]))
    old.load_state_dict({"ratio": torch.tensor([0.1, 0.2, 0.3, 0.4]), "weight": torch.tensor([1.0, 2.0, 3.0, 4.0])})
    assert old.ratio.tolist() == pytest.approx([0.2, 0.4]) and old.weight.tolist() == [2.0, 4.0]


def test_update_tables_follows_softmax_formulas():
    tables = SegmentTables(10)
    ids = torch.tensor([2, 5, 7, 9])
    psnr = torch.tensor([20.0, 30.0, 35.0, 50.0])
    update_tables(tables, ids, psnr, R=0.6)
    tables.commit()

    ratio, weight = tables.ratio[ids], tables.weight[ids]
    assert ratio.tolist() == pytest.approx((0.6 * 4 * torch.softmax(0.05 * psnr, 0)).tolist(), rel=1e-6)
    assert weight.tolist() == pytest.approx((4 * torch.softmax(-0.1 * psnr, 0)).tolist(), rel=1e-6)
    assert weight.mean().item() == pytest.approx(1.0, rel=1e-6)
    assert ratio.mean().item() == pytest.approx(0.6, rel=1e-6)
    assert torch.all(ratio[1:] > ratio[:-1])  # easier segments are masked more
    assert torch.all(weight[1:] < weight[:-1])  # harder segments weigh more
    untouched = torch.tensor([0, 1, 3, 4, 6, 8])
    assert tables.ratio[untouched].eq(0).all() and tables.weight[untouched].eq(1).all()


def test_update_tables_stores_unclamped_ratio_and_switches_off():
    tables = SegmentTables(3)
    update_tables(tables, torch.tensor([0, 1, 2]), torch.tensor([10.0, 10.0, 90.0]), R=0.9)
    tables.commit()
    assert tables.ratio[2] > 1.0  # min(r, 1) is applied by the mask map, not stored

    update_tables(tables, torch.tensor([0, 1]), torch.tensor([10.0, 80.0]), R=0.3, guided_mask=False, guided_loss=False)
    tables.commit()
    assert tables.ratio[:2].tolist() == pytest.approx([0.3, 0.3])
    assert tables.weight[:2].tolist() == [1.0, 1.0]


def test_pending_sums_merge_like_an_all_reduce_of_ranks():
    scenes = [
        (torch.tensor([0, 1, 2]), torch.tensor([25.0, 31.0, 40.0])),
        (torch.tensor([3, 4]), torch.tensor([18.0, 22.0])),
        (torch.tensor([5, 6, 7, 8]), torch.tensor([30.0, 35.0, 28.0, 45.0])),
    ]
    single = SegmentTables(10)
    for ids, psnr in scenes:
        update_tables(single, ids, psnr, R=0.45)
    single.commit()

    # Two ranks, scene 2 processed by both (distributed sampler padding).
    rank0, rank1 = SegmentTables(10), SegmentTables(10)
    for ids, psnr in scenes[:2] + scenes[2:]:
        update_tables(rank0 if ids[0] < 3 else rank1, ids, psnr, R=0.45)
    update_tables(rank0, *scenes[2], R=0.45)
    reduced = rank0.pending + rank1.pending  # what all_reduce(SUM) gives every rank
    rank0.pending.copy_(reduced)
    rank0.all_reduce_pending()  # no process group: a no-op
    assert torch.equal(rank0.pending, reduced)
    rank0.commit()
    assert torch.allclose(rank0.ratio, single.ratio) and torch.allclose(rank0.weight, single.weight)
    assert rank0.ratio[9] == 0 and rank0.weight[9] == 1


def test_tables_move_between_devices_and_accept_cpu_inputs():
    tables = SegmentTables(4, device="cpu").to("meta")
    assert tables.ratio.device.type == "meta" and tables.pending.device.type == "meta"
