"""Training loss: μ-law L1 with the loss map, the VGG-19 perceptual term, and finding its weights."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training import losses
from training.losses import (
    HDRLoss,
    PerceptualLoss,
    VGG19Features,
    VGGWeightsNotFoundError,
    build_loss,
    load_vgg19,
    mu_l1_loss,
    resize_loss_map,
)


def _mu(value: float) -> float:
    return math.log(1 + 5000 * value) / math.log(5001)


class TwoScales(nn.Module):
    """A stand-in feature extractor: the image itself and its 2×2 average pool."""

    def forward(self, image):
        return [image, F.avg_pool2d(image, 2)]


@pytest.fixture(scope="module")
def random_vgg_file(tmp_path_factory) -> Path:
    """A randomly initialised VGG-19 trunk saved in the torchvision layout (plus a classifier key)."""
    path = tmp_path_factory.mktemp("vgg") / "hub" / "checkpoints" / "vgg19-random.pth"
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    state = dict(VGG19Features().state_dict())
    state["classifier.6.bias"] = torch.zeros(1000)  # torchvision keys beyond the trunk are ignored
    torch.save(state, path)
    return path


@pytest.fixture
def no_cached_weights(monkeypatch, tmp_path):
    """Empty torch hub and Hugging Face caches, whatever this machine has."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(losses, "hf_cache_candidates", lambda: [])


# ----------------------------------------------------------------------------- μ-law L1


def test_mu_l1_matches_the_formula_by_hand():
    pred = torch.tensor([0.1, 0.5, 0.0, 1.0]).view(1, 1, 2, 2).repeat(1, 3, 1, 1)
    label = torch.tensor([0.2, 0.5, 0.3, 0.9]).view(1, 1, 2, 2).repeat(1, 3, 1, 1)
    expected = sum(abs(_mu(p) - _mu(y)) for p, y in [(0.1, 0.2), (0.5, 0.5), (0.0, 0.3), (1.0, 0.9)]) / 4
    assert float(mu_l1_loss(pred, label)) == pytest.approx(expected, rel=1e-5)


def test_loss_map_weights_pixels_and_broadcasts_over_channels():
    pred = torch.tensor([0.1, 0.5, 0.0, 1.0]).view(1, 1, 2, 2).repeat(2, 3, 1, 1)
    label = torch.tensor([0.2, 0.5, 0.3, 0.9]).view(1, 1, 2, 2).repeat(2, 3, 1, 1)
    loss_map = torch.tensor([2.0, 7.0, 0.0, 0.5]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)
    # mean |T(ŷ)W − T(y)W| = mean W·|T(ŷ) − T(y)| for W ≥ 0
    expected = (2.0 * abs(_mu(0.1) - _mu(0.2)) + 0.0 + 0.0 + 0.5 * abs(_mu(1.0) - _mu(0.9))) / 4
    assert float(mu_l1_loss(pred, label, loss_map)) == pytest.approx(expected, rel=1e-5)
    assert float(mu_l1_loss(pred, label, torch.ones_like(loss_map))) == pytest.approx(float(mu_l1_loss(pred, label)))
    assert float(mu_l1_loss(pred, label, torch.zeros_like(loss_map))) == 0.0


# ----------------------------------------------------------------------------- perceptual term


def test_loss_map_is_resized_bilinearly_with_corners_aligned():
    loss_map = torch.arange(16.0).view(1, 1, 4, 4)
    resized = resize_loss_map(loss_map, (2, 2))
    # align_corners=True keeps the four corner values exactly.
    assert resized.view(-1).tolist() == [0.0, 3.0, 12.0, 15.0]
    assert resize_loss_map(loss_map, (4, 4)) is loss_map


def test_perceptual_term_by_hand_with_a_stand_in_extractor():
    torch.manual_seed(0)
    pred, label = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    loss_map = torch.rand(2, 1, 4, 4) + 0.5
    value = PerceptualLoss(TwoScales())(pred, label, loss_map)

    tp, tl = losses.mu_tonemap(pred), losses.mu_tonemap(label)
    small_map = F.interpolate(loss_map, size=(2, 2), mode="bilinear", align_corners=True)
    expected = ((tp * loss_map - tl * loss_map).abs().mean()
                + (F.avg_pool2d(tp, 2) * small_map - F.avg_pool2d(tl, 2) * small_map).abs().mean())
    assert float(value) == pytest.approx(float(expected), rel=1e-6)
    # Zero weight everywhere silences it; no map means weight 1.
    assert float(PerceptualLoss(TwoScales())(pred, label, torch.zeros_like(loss_map))) == 0.0
    unweighted = (tp - tl).abs().mean() + (F.avg_pool2d(tp, 2) - F.avg_pool2d(tl, 2)).abs().mean()
    assert float(PerceptualLoss(TwoScales())(pred, label)) == pytest.approx(float(unweighted), rel=1e-6)


def test_hdr_loss_combines_terms_and_only_the_prediction_gets_gradients():
    torch.manual_seed(1)
    pred = torch.rand(1, 3, 8, 8, requires_grad=True)
    label = torch.rand(1, 3, 8, 8, requires_grad=True)
    loss_map = torch.rand(1, 1, 8, 8)
    terms = HDRLoss(0.5, TwoScales())(pred, label, loss_map)
    assert float(terms["loss"].detach()) == pytest.approx(float(terms["l1"] + 0.5 * terms["perceptual"]), rel=1e-6)
    assert not terms["l1"].requires_grad and not terms["perceptual"].requires_grad
    terms["loss"].backward()
    assert pred.grad is not None and float(pred.grad.abs().sum()) > 0

    label.grad = None
    PerceptualLoss(TwoScales())(pred, label, loss_map).backward()
    assert label.grad is None  # the label's features are computed without a graph

    plain = HDRLoss(0.0)(pred, label, loss_map)
    assert float(plain["perceptual"]) == 0.0 and float(plain["loss"].detach()) == float(plain["l1"])
    with pytest.raises(ValueError):
        HDRLoss(0.005, None)


def test_vgg_trunk_features_are_the_five_relu_layers_frozen_in_eval_mode():
    vgg = VGG19Features()
    features = vgg(torch.rand(1, 3, 32, 32))
    assert [tuple(f.shape[1:]) for f in features] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4),
                                                    (512, 2, 2)]
    assert all(float(f.min()) >= 0 for f in features)  # each one right after a ReLU
    assert not any(p.requires_grad for p in vgg.parameters())
    vgg.train()
    assert not vgg.training


def test_vgg_state_keys_from_torchvision_timm_and_wrappers():
    weight = torch.zeros(1)
    torchvision_style = {"features.0.weight": weight, "classifier.0.weight": weight}
    timm_features_only = {"features_0.weight": weight}
    wrapped = {"state_dict": {"module.features.0.weight": weight}, "epoch": 3}
    for data in (torchvision_style, timm_features_only, wrapped):
        assert list(losses._unwrap_vgg_state(data)) == ["features.0.weight"]


# ----------------------------------------------------------------------------- finding the weights


def test_missing_vgg_weights_give_a_clear_error(no_cached_weights):
    with pytest.raises(VGGWeightsNotFoundError) as info:
        build_loss(le_lambda=0.005)
    message = str(info.value)
    assert "no ImageNet VGG-19 weights were found" in message
    assert "--vgg_weights PATH" in message and "--le_lambda 0" in message
    assert "checkpoints" in message and "Hugging Face" in message  # where it looked
    with pytest.raises(VGGWeightsNotFoundError, match="no such file"):
        load_vgg19("/nonexistent/vgg19.pth")
    assert build_loss(le_lambda=0.0).perceptual is None  # the term off needs no weights


def test_vgg_weights_from_a_file_and_from_the_torch_hub_cache(random_vgg_file, monkeypatch):
    expected = torch.load(random_vgg_file, weights_only=True)["features.28.weight"]
    vgg = load_vgg19(random_vgg_file)
    assert torch.equal(vgg.features[28].weight, expected)

    monkeypatch.setenv("TORCH_HOME", str(random_vgg_file.parents[2]))
    monkeypatch.setattr(losses, "hf_cache_candidates", lambda: [])
    assert torch.equal(load_vgg19().features[28].weight, expected)

    loss = build_loss(0.005, random_vgg_file)
    pred, label = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    terms = loss(pred, label, torch.ones(2, 1, 32, 32))
    assert float(terms["perceptual"]) > 0


def test_a_file_that_is_not_vgg_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="not a VGG-19 state dict"):
        load_vgg19(path)


def test_linear_term_adds_lambda_times_the_linear_l1_with_the_loss_map():
    pred = torch.tensor([[[[0.55, 0.01]]]]).expand(1, 3, 1, 2).clone().requires_grad_(True)
    label = torch.tensor([[[[0.95, 0.02]]]]).expand(1, 3, 1, 2)
    loss_map = torch.tensor([[[[2.0, 1.0]]]])
    plain = HDRLoss(le_lambda=0.0)(pred, label, loss_map)["loss"]
    total = HDRLoss(le_lambda=0.0, linear_lambda=0.5)(pred, label, loss_map)
    by_hand = (2.0 * 0.4 + 1.0 * 0.01) / 2
    assert math.isclose(float(total["loss"] - plain), 0.5 * by_hand, rel_tol=1e-5)
    assert math.isclose(float(total["l1"]), float(plain), rel_tol=1e-6)  # the logged l1 stays the μ-law term
    # the highlight's error now pulls harder than in the μ-law term alone
    mu_grad, = torch.autograd.grad(plain, pred)
    both_grad, = torch.autograd.grad(total["loss"], pred)
    assert both_grad[0, 0, 0, 0].abs() > 2 * mu_grad[0, 0, 0, 0].abs()
    assert build_loss(0.0, linear_lambda=0.5).linear_lambda == 0.5


@pytest.mark.parametrize("weight", [-0.1, float("nan")])
def test_linear_term_weight_must_be_a_weight(weight):
    with pytest.raises(ValueError, match="linear_lambda"):
        HDRLoss(le_lambda=0.0, linear_lambda=weight)


def test_the_loss_names_its_terms_and_the_trainer_logs_them(tmp_path):
    from datasets.synthetic import make_dataset
    from segmask.segment import segment_split, superpixel_masks
    from training.trainer import main

    pred, label = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    assert HDRLoss(0.0).term_names == ("l1", "perceptual")
    with_linear = HDRLoss(0.0, linear_lambda=1.0)
    assert with_linear.term_names == ("l1", "perceptual", "linear_l1")
    assert set(with_linear(pred, label)) == {"loss", "l1", "perceptual", "linear_l1"}
    data = make_dataset(tmp_path / "data", num_train=1, num_test=0, size=(48, 64), seed=2)
    segment_split(data, "Training", lambda image: superpixel_masks(image, n_segments=4), min_area=10, progress=False)
    assert main(1, ["--preset", "tiny", "--dataset_dir", str(data), "--logdir", str(tmp_path / "run"), "--epochs", "1",
                    "--phase1_epochs", "1", "--max_steps", "1", "--num_workers", "0", "--train_patch_size", "32",
                    "--batch_size", "2", "--no_progress", "--test_path", "none", "--linear_lambda", "1"]) == 0
    log = (tmp_path / "run" / "train.log").read_text()
    assert "linear_l1 " in log and "perceptual " in log
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/l1", "train/perceptual", "train/linear_l1"} <= set(events.Tags()["scalars"])
