"""The released-style transcription the forward benchmark compares against computes what SMNet
computes: the released fixtures, CPU inference in chunks, and the gradients of a masked
training forward."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.released_forward import released_forward
from models.checkpoint import load_model
from models.smnet import SMNet

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.mark.parametrize("io_path", sorted(FIXTURES.glob("*.io.pt")), ids=lambda p: p.name)
def test_transcription_reproduces_the_released_fixtures(io_path: Path) -> None:
    io = torch.load(io_path, weights_only=True)
    model = load_model(io_path.with_name(io_path.name.replace(".io.pt", ".pth")),
                       is_mask=io["is_mask"], adl_drop_rate=io["adl_drop_rate"]).eval()
    with torch.no_grad():
        out = released_forward(model, io["input"], io.get("mask_map"))
    assert (out - io["output"]).abs().max() <= 1e-5


def test_chunked_inference_of_the_default_network_matches_the_transcription() -> None:
    """128×128 has 256 windows: SMNet's CPU inference runs them in chunks, the shift-masked
    border windows apart; 2 exposures use another channel-attention head count."""
    torch.manual_seed(0)
    model = SMNet().eval()
    x = torch.rand(1, 12, 128, 128)
    with torch.inference_mode():
        assert torch.allclose(model(x), released_forward(model, x), atol=1e-5)


def test_masked_training_forward_and_gradients_match_the_transcription() -> None:
    torch.manual_seed(0)
    # Width 24 on 3 exposures: 12 channel-attention heads of 2 channels, so q and k get gradients.
    model = SMNet(embed_dim=24, depths=(2, 2), num_heads=(2, 2), drop_path_rate=0.0, is_mask=True,
                  adl_drop_rate=1.0).train()
    x = torch.rand(2, 18, 48, 64)
    mask_map = (torch.rand(2, 1, 48, 64) > 0.5).float()
    out = model(x, mask_map)
    expected = released_forward(model, x, mask_map)
    assert torch.allclose(out, expected, atol=1e-5)
    grad_out = torch.randn_like(out)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out, params, grad_out, allow_unused=True)
    expected_grads = torch.autograd.grad(expected, params, grad_out, allow_unused=True)
    for (name, _), got, want in zip(model.named_parameters(), grads, expected_grads):
        if "norm1_y" in name:  # in the checkpoints, never used
            assert got is None and want is None
            continue
        assert want.abs().max() > 0, name
        assert (got - want).abs().max() <= 1e-4 * want.abs().max(), name


def test_transcription_refuses_sizes_off_the_window_grid() -> None:
    model = SMNet(embed_dim=12, depths=(2,), num_heads=(2,))
    with pytest.raises(ValueError, match="divisible by 8"):
        released_forward(model, torch.rand(1, 18, 30, 32))
