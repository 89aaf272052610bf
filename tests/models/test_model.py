"""SMNet: released fixtures, checkpoint formats, exposure counts, sizes, autocast and gradients."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from benchmarks.released_forward import channel_attention, to_image, to_tokens
from models.checkpoint import (
    CheckpointError,
    load_model,
    read_checkpoint,
    released_state_dict,
    save_model,
)
from models.channel_attention import MultiExposureChannelAttention, channel_attention_heads
from models.inference import pad_to_multiple, reconstruct
from models.smnet import SMNet
from models import blocks
from models.window_attention import (
    WindowAttention,
    attention,
    shift_attention_mask,
    window_layout,
    window_partition,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SHARED_REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference"
TINY = dict(embed_dim=12, depths=(2, 2), num_heads=(2, 2), window_size=8)


class Opaque:
    """Stands for any Python object that only full unpickling could restore."""


def run_fixture(io_path: Path) -> float:
    io = torch.load(io_path, weights_only=True)
    model = load_model(io_path.with_name(io_path.name.replace(".io.pt", ".pth")),
                       is_mask=io["is_mask"], adl_drop_rate=io["adl_drop_rate"]).eval()
    with torch.no_grad():
        out = model(io["input"], io.get("mask_map"))
    assert out.shape == io["output"].shape
    return (out - io["output"]).abs().max().item()


@pytest.mark.parametrize("io_path", sorted(FIXTURES.glob("*.io.pt")), ids=lambda p: p.name)
def test_released_fixtures_are_reproduced(io_path: Path) -> None:
    assert run_fixture(io_path) <= 1e-5


def test_fixture_set_includes_the_masked_one() -> None:
    masked = [torch.load(p, weights_only=True) for p in FIXTURES.glob("*.io.pt")]
    assert any(io["is_mask"] and io.get("mask_map") is not None for io in masked)


def test_full_size_fixture() -> None:
    paths = sorted(SHARED_REFERENCE.glob("full_*.io.pt"))
    if not paths:
        pytest.skip(f"the default-size fixture is not present under {SHARED_REFERENCE}")
    for io_path in paths:
        assert run_fixture(io_path) <= 1e-5


def test_default_network_matches_the_released_key_list() -> None:
    model = SMNet()
    assert sum(p.numel() for p in model.parameters()) == 1_292_499
    assert sum(p.numel() for p in model.conv_first.parameters()) == 68_220
    listed = {}
    for line in (FIXTURES / "smnet_state_dict.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape, _kind = line.split("\t")
            listed[key] = tuple(int(v) for v in re.findall(r"\d+", shape))
    released = {k.removeprefix("module."): tuple(v.shape) for k, v in released_state_dict(model).items()}
    assert released == listed


def test_released_state_dict_round_trips_through_the_loader(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SMNet(**TINY).eval()
    path = tmp_path / "released.pth"
    torch.save({"state_dict": released_state_dict(model)}, path)
    loaded = load_model(path).eval()
    x = torch.rand(1, 18, 24, 40)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_project_and_bare_checkpoints_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = SMNet(**TINY, is_mask=True).eval()
    save_model(tmp_path / "project.pth", model, epoch=3)
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    x = torch.rand(2, 18, 32, 32)
    with torch.no_grad():
        expected = model(x)
        for name in ("project.pth", "bare.pth"):
            loaded = load_model(tmp_path / name, is_mask=True).eval()
            assert torch.equal(loaded(x), expected), name
    assert read_checkpoint(tmp_path / "project.pth")["epoch"] == 3


def test_wrong_checkpoint_lists_missing_unexpected_and_misshaped_keys(tmp_path: Path) -> None:
    state = SMNet(**TINY).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["conv_end.bias"]
    state["conv_after_body.weight"] = torch.zeros(12, 12, 5, 5)
    torch.save({"state_dict": state, "config": SMNet(**TINY).config}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "other.pth")
    message = str(err.value)
    assert "other.pth" in message
    assert "missing keys: conv_end.bias" in message
    assert "unexpected keys: extra.weight" in message
    assert "conv_after_body.weight (12, 12, 5, 5) vs (12, 12, 3, 3)" in message


def test_foreign_and_pickled_files_are_refused(tmp_path: Path) -> None:
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match="not an SMNet state dict"):
        load_model(tmp_path / "foreign.pth")

    torch.save({"state_dict": {}, "object": Opaque()}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="refused to load"):
        read_checkpoint(tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="no such file"):
        read_checkpoint(tmp_path / "absent.pth")
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch file"):
        read_checkpoint(tmp_path / "notes.pth")
    (tmp_path / "short.pth").write_bytes(b"hello")
    with pytest.raises(CheckpointError, match="not a .*PyTorch file"):
        read_checkpoint(tmp_path / "short.pth")


@pytest.mark.parametrize("exposures", [1, 2, 3, 4, 5, 6])
def test_every_exposure_count_runs_with_the_default_width(exposures: int) -> None:
    heads = channel_attention_heads(60, exposures)
    assert 60 % heads == 0 and heads % exposures == 0
    model = SMNet(depths=(1,), num_heads=(6,)).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 6 * exposures, 16, 16))
    assert out.shape == (1, 3, 16, 16)
    assert torch.isfinite(out).all()


def test_head_count_follows_the_released_rule_and_rejects_unsupported_counts() -> None:
    assert [channel_attention_heads(60, n) for n in range(1, 7)] == [4, 6, 12, 12, 20, 30]
    with pytest.raises(ValueError, match=r"7 exposures are not supported.*supported counts: \[1, 2, 3, 4, 5, 6, 10"):
        channel_attention_heads(60, 7)
    with pytest.raises(ValueError, match="expected a B"):
        SMNet(**TINY)(torch.rand(1, 20, 16, 16))


@pytest.mark.parametrize("size", [(17, 23), (8, 9), (33, 8), (50, 61), (4, 4), (1, 1), (1, 9), (3, 2)])
def test_odd_sizes_pad_and_crop(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = SMNet(**TINY).eval()
    x = torch.rand(1, 18, *size)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, 3, *size)
        padded = pad_to_multiple(x, 8)
        assert torch.allclose(out, model(padded)[..., : size[0], : size[1]], atol=1e-6)
        assert reconstruct(model, x).shape == (1, 3, *size)


def test_pad_to_multiple_reflects_at_bottom_and_right_only() -> None:
    x = torch.arange(12.0).view(1, 1, 3, 4)
    padded = pad_to_multiple(x, 8)
    assert padded.shape == (1, 1, 8, 8)
    assert torch.equal(padded[..., :3, :4], x)
    assert torch.equal(padded[0, 0, 3, :4], x[0, 0, 1])  # reflection, not replication
    tall = pad_to_multiple(torch.rand(1, 2, 5, 130), 128)
    assert tall.shape == (1, 2, 128, 256)


def test_reconstruct_reproduces_the_released_test_protocol() -> None:
    torch.manual_seed(0)
    model = SMNet(**TINY).eval()
    x = torch.rand(1, 18, 100, 70)
    manual = torch.nn.functional.pad(x, (0, 128 - 70, 0, 128 - 100), mode="reflect")
    with torch.no_grad():
        expected = model(manual)[..., :100, :70].clamp(0, 1)
    assert torch.equal(reconstruct(model, x), expected)


def test_window_layout_gathers_shifted_windows_like_roll_and_partition() -> None:
    h, w, ws, shift = 24, 24, 8, 4
    x = torch.rand(2, h, w, 5)
    layout = window_layout(h, w, ws, shift)
    windows = window_partition(torch.roll(x, (-shift, -shift), dims=(1, 2)), ws).reshape(2, 9, ws * ws, 5)
    # Only the last row and column of windows mix regions: of 3×3 windows, 2, 5, 6, 7 and 8.
    # The plain windows come first, then those that need the shift mask.
    border = [2, 5, 6, 7, 8]
    assert layout.num_plain == 4
    gathered = x.reshape(2, h * w, 5).index_select(1, layout.order)
    assert torch.equal(gathered, windows[:, [0, 1, 3, 4] + border].reshape(2, -1, 5))
    assert sorted(layout.order.tolist()) == list(range(h * w))
    assert torch.equal(layout.border_mask, shift_attention_mask(h, w, ws, shift)[border])
    assert not layout.border_mask.eq(0).all(dim=(1, 2)).any()
    chunks = list(layout.chunks(3))
    assert [len(tokens) // (ws * ws) for tokens, _ in chunks] == [3, 1, 3, 2]
    assert [mask is None for _, mask in chunks] == [True, True, False, False]
    assert torch.equal(torch.cat([tokens for tokens, _ in chunks]), layout.order)


def test_window_attention_equals_full_masked_attention() -> None:
    torch.manual_seed(0)
    h, w, ws, shift = 16, 24, 8, 4
    attn = WindowAttention(12, ws, 3)
    windows = torch.rand(2, (h // ws) * (w // ws), ws * ws, 12)
    mask = shift_attention_mask(h, w, ws, shift)

    qkv = attn.qkv(windows).view(-1, ws * ws, 3, 3, 4).permute(2, 0, 3, 1, 4)
    bias = attn.relative_position_bias().unsqueeze(0) + mask.repeat(2, 1, 1).unsqueeze(1)
    ref = torch.softmax(qkv[0] @ qkv[1].transpose(-1, -2) * attn.scale + bias, -1) @ qkv[2]
    ref = attn.proj(ref.transpose(1, 2).reshape(2, -1, ws * ws, 12))
    with torch.no_grad():
        assert torch.allclose(attn(windows, mask), ref, atol=1e-5)
    assert torch.allclose(attn(windows, mask), ref, atol=1e-5)  # the gradient-enabled path


def test_inference_in_chunks_equals_the_whole_image_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU inference runs windows and tokens in chunks; the result must not depend on it."""
    torch.manual_seed(0)
    model = SMNet(**TINY).eval()
    x = torch.rand(1, 18, 40, 56)  # 5×7 windows: plain and border windows in several chunks
    monkeypatch.setitem(blocks.INFERENCE_CHUNKING, "cpu", None)
    with torch.no_grad():
        whole = model(x)
    monkeypatch.setitem(blocks.INFERENCE_CHUNKING, "cpu", blocks.Chunking(windows=4, tokens=300))
    calls = []
    chunked_forward = blocks.MSAB.forward_in_chunks

    def counting_forward_in_chunks(self, *args):  # noqa: ANN001, ANN002, ANN202
        calls.append(args[-1])
        return chunked_forward(self, *args)

    monkeypatch.setattr(blocks.MSAB, "forward_in_chunks", counting_forward_in_chunks)
    with torch.no_grad():
        chunked = model(x)
    assert calls and set(calls) == {4}, "the chunked path did not run"
    assert torch.allclose(chunked, whole, atol=1e-6)


@pytest.mark.parametrize("bias_shape", [(2, 16, 16), (4, 2, 16, 16)])
def test_attention_paths_agree_with_the_formula(bias_shape: tuple[int, ...]) -> None:
    qkv = torch.randn(4, 16, 3, 2, 8).permute(2, 0, 3, 1, 4)  # strided, as in the network
    q, k, v = qkv.unbind(0)
    bias = torch.randn(bias_shape, requires_grad=True)
    formula = torch.softmax(q @ k.transpose(-2, -1) * 0.3 + bias, dim=-1) @ v
    training = attention(qkv, bias, 0.3)  # BiasedAttention
    with torch.no_grad():
        inference = attention(qkv, bias, 0.3)  # the fused kernel
        full_bias = bias.expand(4, 2, 16, 16) if bias.dim() == 3 else bias
        fused = F.scaled_dot_product_attention(q, k, v, attn_mask=full_bias, scale=0.3)
    for result in (training, inference, fused):
        assert torch.allclose(result, formula, atol=1e-5)


def test_bfloat16_autocast_stays_close_to_float32() -> None:
    torch.manual_seed(0)
    model = SMNet(**TINY).eval()
    x = torch.rand(1, 18, 32, 32)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.bfloat16
    assert (low.float() - reference).abs().max() < 0.05
    assert (low.float() - reference).abs().mean() < 0.01


def test_gradient_reaches_every_parameter_with_a_mask_map() -> None:
    torch.manual_seed(0)
    # 24 channels: 12 channel-attention heads of 2 channels (with 1 channel per head the
    # channel softmax is constant and the query weights would rightly get no gradient).
    model = SMNet(**{**TINY, "embed_dim": 24}, is_mask=True, adl_drop_rate=1.0).train()
    x = torch.rand(2, 18, 32, 32)
    mask_map = (torch.rand(2, 1, 32, 32) > 0.5).float()
    out = model(x, mask_map)
    out.mean().backward()
    unused = {"norm1_y"}  # kept for the released checkpoints, never used (see docs/METHOD.md)
    for name, param in model.named_parameters():
        if any(part in name for part in unused):
            assert param.grad is None, name
            continue
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_training_works_after_a_first_forward_at_a_new_size_in_inference_mode() -> None:
    """Layouts and position indices cached during evaluation must stay usable by autograd."""
    torch.manual_seed(0)
    model = SMNet(**TINY)
    x = torch.rand(1, 18, 40, 56)  # a size no other test uses, so the caches are built here
    with torch.inference_mode():
        expected = model.eval()(x)
    out = model(x)
    out.mean().backward()
    assert torch.allclose(out.detach(), expected, atol=1e-6)
    assert model.conv_first[0].weight.grad is not None


def test_mask_map_changes_the_output_only_when_masking_is_on() -> None:
    torch.manual_seed(0)
    x = torch.rand(1, 18, 32, 32)
    mask_map = torch.zeros(1, 1, 32, 32)
    plain = SMNet(**TINY).eval()
    masked = SMNet(**TINY, is_mask=True, adl_drop_rate=1.0).eval()
    masked.load_state_dict(plain.state_dict())
    with torch.no_grad():
        assert torch.equal(plain(x, mask_map), plain(x))
        assert not torch.allclose(masked(x, mask_map), masked(x))
        assert torch.equal(masked(x), plain(x))


def test_torch_compile_matches_eager() -> None:
    pytest.importorskip("torch._dynamo")
    torch.manual_seed(0)
    model = SMNet(embed_dim=12, depths=(2,), num_heads=(2,)).eval()
    x = torch.rand(1, 18, 16, 16)
    try:
        compiled = torch.compile(model, backend="eager")
    except RuntimeError as err:  # pragma: no cover - platform without dynamo support
        pytest.skip(f"torch.compile unavailable: {err}")
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-6)


@pytest.mark.parametrize("batched_bias", [False, True])
@pytest.mark.parametrize("layout", ["permuted", "strided"])
def test_biased_attention_gradients_match_autograd(batched_bias: bool, layout: str) -> None:
    """Training attention computes its own backward; it must equal autograd through the formula,
    for q, k, v packed as a permuted view (as in the network) or in a layout with gaps."""
    from models.window_attention import BiasedAttention

    torch.manual_seed(0)
    if layout == "permuted":
        qkv = torch.randn(4, 7, 3, 2, 5, dtype=torch.float64).permute(2, 0, 3, 1, 4)
    else:
        qkv = torch.randn(3, 4, 2, 7, 10, dtype=torch.float64)[..., ::2]
    qkv = qkv.detach().requires_grad_()
    bias = torch.randn(*((4,) if batched_bias else ()), 2, 7, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: BiasedAttention.apply(*a, 0.4), (qkv, bias))
    q, k, v = qkv.unbind(0)
    reference = torch.softmax(q @ k.transpose(-2, -1) * 0.4 + bias, dim=-1) @ v
    assert torch.allclose(BiasedAttention.apply(qkv, bias, 0.4), reference)


def test_keep_freed_memory_reuses_large_blocks(run_python) -> None:
    """After the malloc setting, a freed full-image activation is reused, not faulted in anew."""
    script = (
        "import resource, torch\n"
        "from utils.cpu_memory import keep_freed_memory\n"
        "assert keep_freed_memory()\n"
        "for _ in range(16):\n"  # the heap settles after a few blocks (alignment padding)
        "    torch.ones(64 << 20, dtype=torch.uint8)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(4):\n"
        "    torch.ones(64 << 20, dtype=torch.uint8)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    done = run_python(script)
    assert done.returncode == 0, done.stderr
    faults = done.stdout
    # Each 64 MiB block fresh from the system would fault in 16384 pages of 4 KiB.
    assert int(faults) < 16384


@pytest.mark.parametrize("batch, exposures", [(1, 3), (2, 1), (2, 2), (3, 5), (1, 6)])
def test_channel_attention_from_the_gram_matrix_matches_the_convolutions(batch: int, exposures: int) -> None:
    torch.manual_seed(exposures)
    mca = MultiExposureChannelAttention(60)
    heads = channel_attention_heads(60, exposures)
    w = torch.randn(batch, 300, 60, requires_grad=True)
    expected = to_tokens(channel_attention(mca, to_image(w, 20, 15), exposures, heads))
    result = mca(w, exposures, heads)
    assert torch.allclose(result, expected, atol=1e-5)
    grad_out = torch.randn_like(result)
    expected_grads = torch.autograd.grad(expected, [w, *mca.parameters()], grad_out)
    grads = torch.autograd.grad(result, [w, *mca.parameters()], grad_out)
    for got, want in zip(grads, expected_grads):
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_channel_attention_under_autocast_does_not_overflow_on_large_images(dtype: torch.dtype) -> None:
    """The Gram matrix sums over every pixel: 4096 pixels of magnitude 5 exceed float16's range."""
    torch.manual_seed(0)
    mca = MultiExposureChannelAttention(60)
    w = torch.randn(1, 4096, 60) * 5
    expected = mca(w, 3, 12)
    with torch.autocast("cpu", dtype=dtype):
        result = mca(w, 3, 12)
    assert result.dtype == dtype
    assert torch.isfinite(result).all()
    assert (result.float() - expected).abs().max() < 0.05 * expected.abs().max()


@pytest.mark.parametrize("key", ["conv_end.weight", "module.conv_end.weight", "_orig_mod.conv_end.weight",
                                 "module._orig_mod.conv_end.weight", "_orig_mod.module.conv_end.weight"])
def test_wrapper_prefixes_are_stripped_in_any_order(key):
    from models.checkpoint import strip_wrapper_prefixes
    from training.resume import parameter_order

    assert strip_wrapper_prefixes(key) == "conv_end.weight"
    assert parameter_order({key: torch.zeros(1)}, {"conv_end.weight"}) == ["conv_end.weight"]
