"""The reference-residual network: it starts as the reference exposure, keeps the flag through
checkpoints and phases, and leaves the released network untouched."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets.preprocess import build_network_input
from evaluation.baselines import reference_exposure_baseline
from models.checkpoint import load_model, released_state_dict, save_model
from models.registry import architecture_name, smnet_tiny
from models.smnet import REFERENCE_EPS, SMNet


def _bracket(num_exposures: int, size: tuple[int, int], seed: int = 0) -> tuple[list[np.ndarray], list[float]]:
    rng = np.random.default_rng(seed)
    ldrs = [rng.uniform(0.05, 0.9, size=(*size, 3)).astype(np.float32) for _ in range(num_exposures)]
    return ldrs, [2.0 * k for k in range(num_exposures)]


@pytest.mark.parametrize("num_exposures, size", [(3, (24, 40)), (4, (19, 13)), (2, (8, 8))])
def test_a_new_network_outputs_the_reference_exposure(num_exposures, size):
    ldrs, stops = _bracket(num_exposures, size)
    x = torch.from_numpy(build_network_input(ldrs, stops))[None]
    model = smnet_tiny(reference_residual=True).eval()
    with torch.no_grad():
        out = model(x)[0].permute(1, 2, 0).numpy()
    expected = reference_exposure_baseline(ldrs, stops)
    assert expected.min() > REFERENCE_EPS  # inside the range the logit keeps
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-7)


def test_the_correction_trains_and_reaches_the_whole_network():
    ldrs, stops = _bracket(3, (16, 16))
    x = torch.from_numpy(build_network_input(ldrs, stops))[None]
    model = smnet_tiny(reference_residual=True)
    loss = model(x).sub(0.5).abs().mean()
    loss.backward()
    assert model.conv_end.weight.grad.abs().sum() > 0  # the zero-initialised head learns first
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    model.zero_grad()
    model(x).sub(0.5).abs().mean().backward()
    assert model.conv_first[0].weight.grad.abs().sum() > 0  # then the gradient reaches the input layers


def test_the_released_network_is_unchanged():
    assert "reference_residual" not in SMNet().config and not SMNet().reference_residual
    torch.manual_seed(0)
    plain = smnet_tiny()
    assert plain.conv_end.weight.abs().sum() > 0  # the released initialisation, not zeros
    ldrs, stops = _bracket(3, (16, 16))
    x = torch.from_numpy(build_network_input(ldrs, stops))[None]
    residual = smnet_tiny(reference_residual=True)
    residual.load_state_dict(plain.state_dict())  # the same weights, read the other way
    with torch.no_grad():
        assert not torch.allclose(plain(x), residual(x))


def test_checkpoints_keep_the_flag(tmp_path):
    model = smnet_tiny(reference_residual=True)
    torch.nn.init.normal_(model.conv_end.weight, std=0.01)
    save_model(tmp_path / "residual.pth", model)
    loaded = load_model(tmp_path / "residual.pth")
    assert loaded.reference_residual and architecture_name(loaded.config) == "smnet_tiny"
    ldrs, stops = _bracket(3, (16, 24))
    x = torch.from_numpy(build_network_input(ldrs, stops))[None]
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model.eval()(x))
    with pytest.raises(ValueError, match="reference_residual"):
        released_state_dict(model)  # the released code would read these weights as the plain network
