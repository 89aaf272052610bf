"""The code paths a GPU takes, run on the CPU: compilation into one graph per input size, chunked
inference on CUDA (on fake CUDA tensors), the per-device cache of the position index, and the
benchmarks' GPU settings."""
from __future__ import annotations

import warnings
from typing import Iterator

import pytest
import torch
from torch._dynamo.utils import counters

from benchmarks.bench_memory import PeakMemory, estimate, fake_cuda_forward, padded_shape
from benchmarks.bench_train import grad_scaler
from models import blocks, window_attention
from models.inference import resolve_amp
from models.smnet import SMNet
from models.window_attention import WindowAttention, relative_position_index, window_layout

TINY = dict(embed_dim=12, depths=(2, 2), num_heads=(2, 2), window_size=8)
ONE_STAGE = dict(embed_dim=12, depths=(2,), num_heads=(2,), window_size=8)  # a plain and a shifted block


@pytest.fixture
def fresh_dynamo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Dynamo's caches and counters reset, and the window layouts not yet built, as in a fresh
    process: the first compiled call is the one that used to build them."""
    monkeypatch.setattr(window_attention, "_layouts", {})
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def graph_breaks() -> int:
    return sum(counters["graph_break"].values())


def test_explain_finds_one_graph_and_no_break_per_input_size(fresh_dynamo: None) -> None:
    torch.manual_seed(0)
    model = SMNet(**ONE_STAGE).eval()
    for size in [(32, 48), (36, 50)]:  # the second is padded to 40×56 inside the graph
        with torch.no_grad():
            explanation = torch._dynamo.explain(model)(torch.rand(1, 18, *size))
        assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_compiled_network_is_one_graph_per_size_and_matches_eager(fresh_dynamo: None, training: bool) -> None:
    """A training crop size, then another size: one new graph each, no break, no fallback to
    eager, and the outputs of the uncompiled network (masked training included)."""
    torch.manual_seed(0)
    model = SMNet(**ONE_STAGE, is_mask=True, adl_drop_rate=0.5).train(training)
    graphs = []

    def counting_backend(graph: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(graph)
        return graph.forward

    compiled = torch.compile(model, backend=counting_backend)
    for size in [(32, 32), (30, 44)]:  # the second is padded to 32×48 inside the graph
        x = torch.rand(2, 18, *size)
        mask_map = (torch.rand(2, 1, *size) > 0.5).float()
        with torch.set_grad_enabled(training):
            torch.manual_seed(1)  # the mask block and drop path draw random numbers
            out = compiled(x, mask_map)
            torch.manual_seed(1)
            expected = model(x, mask_map)
        assert torch.allclose(out, expected, atol=1e-6)
        if training:
            out.mean().backward()
    assert len(graphs) == 2
    assert graph_breaks() == 0, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 2


def test_inference_chunk_sizes_follow_the_device_type() -> None:
    with torch.no_grad():
        assert blocks.inference_chunking("cuda") == blocks.INFERENCE_CHUNKING["cuda"] is not None
        assert blocks.inference_chunking("cpu") == blocks.INFERENCE_CHUNKING["cpu"] is not None
        assert blocks.INFERENCE_CHUNKING["cuda"].windows > blocks.INFERENCE_CHUNKING["cpu"].windows
        assert blocks.inference_chunking("mps") is None  # no setting: the whole image
    assert blocks.inference_chunking("cuda") is None  # training keeps every intermediate anyway


def test_chunked_inference_with_the_cuda_chunk_sizes_equals_the_whole_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA chunk sizes, run on the CPU on an image with several chunks of windows and of
    tokens, give the output of the whole-image path."""
    torch.manual_seed(0)
    model = SMNet(**TINY).eval()
    cuda = blocks.INFERENCE_CHUNKING["cuda"]
    x = torch.rand(1, 18, 520, 600)  # 65×75 windows, 312,000 tokens
    assert 65 * 75 > 2 * cuda.windows and 520 * 600 > cuda.tokens
    monkeypatch.setitem(blocks.INFERENCE_CHUNKING, "cpu", None)
    with torch.no_grad():
        whole = model(x)
    monkeypatch.setitem(blocks.INFERENCE_CHUNKING, "cpu", cuda)
    chunk_runs = []
    original_chunks = window_attention.WindowLayout.chunks

    def recording_chunks(layout: window_attention.WindowLayout, windows_per_chunk: int) -> Iterator:
        runs = list(original_chunks(layout, windows_per_chunk))
        chunk_runs.append(len(runs))
        return iter(runs)

    monkeypatch.setattr(window_attention.WindowLayout, "chunks", recording_chunks)
    with torch.no_grad():
        chunked = model(x)
    assert chunk_runs and min(chunk_runs) >= 3  # several chunks of plain windows, then the border ones
    assert torch.allclose(chunked, whole, atol=1e-5)


def test_fake_cuda_inference_runs_the_chunked_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """On (fake) CUDA tensors, inference goes through ``forward_in_chunks`` with the CUDA chunk
    size; with the CUDA entry removed it takes the whole-image path and holds more memory."""
    model = SMNet(**TINY).eval()
    monkeypatch.setitem(blocks.INFERENCE_CHUNKING, "cuda", blocks.Chunking(windows=4, tokens=256))
    sizes = []
    chunked_forward = blocks.MSAB.forward_in_chunks

    def recording_forward_in_chunks(self, t, u, c, layout, windows_per_chunk):  # noqa: ANN001, ANN202
        assert t.device.type == "cuda"
        sizes.append(windows_per_chunk)
        return chunked_forward(self, t, u, c, layout, windows_per_chunk)

    monkeypatch.setattr(blocks.MSAB, "forward_in_chunks", recording_forward_in_chunks)
    shape = padded_shape(40, 56, 8)
    out = fake_cuda_forward(model, shape, amp="fp16")
    assert out.device.type == "cuda" and out.shape == (1, 3, 40, 56)
    assert sizes == [4] * 4  # every block
    chunked = estimate(model, shape, "fp16", chunked=True).peak_bytes
    whole = estimate(model, shape, "fp16", chunked=False).peak_bytes
    assert len(sizes) == 2 * 4  # the estimate's chunked run added 4; the whole-image run none
    assert 0 < chunked < whole


def test_peak_memory_counts_live_storages() -> None:
    meter = PeakMemory("cpu")
    with meter:
        a = torch.ones(1000)  # 4 kB
        b = a * 2  # 8 kB alive
        del a
        c = b[:10] + 1  # a freed: 4 kB + 40 B
        del b
        d = c.view(2, 5) * 3  # b freed
    assert meter.peak == 8000
    assert meter.current == 80 and d.numel() == 10


def test_position_index_is_cached_per_device() -> None:
    meta = relative_position_index(8, "meta")
    assert meta.device.type == "meta"
    assert relative_position_index(8, torch.device("meta")) is meta  # copied to the device once
    assert window_layout(16, 24, 8, 4, "meta").position_index is meta


def test_forward_passes_reuse_one_position_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every block of every forward gathers its bias with the cached index: nothing is copied
    to the device per call."""
    pointers = []
    gather = WindowAttention.relative_position_bias

    def recording_bias(self: WindowAttention, index: torch.Tensor | None = None) -> torch.Tensor:
        pointers.append(None if index is None else index.data_ptr())
        return gather(self, index)

    monkeypatch.setattr(WindowAttention, "relative_position_bias", recording_bias)
    model = SMNet(**TINY).eval()
    x = torch.rand(1, 18, 32, 32)
    with torch.no_grad():
        model(x)
        model(x)
    with torch.enable_grad():
        model(x)
    assert len(pointers) == 3 * 4
    assert set(pointers) == {relative_position_index(8, "cpu").data_ptr()}


def test_the_training_benchmark_scales_losses_only_for_float16_on_cuda() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    amp, note = resolve_amp("fp16", cpu)
    assert amp is None and note  # float32 on the CPU
    assert grad_scaler(amp, cpu) is None
    assert grad_scaler("bf16", cuda) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # without a GPU the scaler warns and turns itself off
        scaler = grad_scaler("fp16", cuda)
    assert isinstance(scaler, torch.amp.GradScaler) and scaler._device == "cuda"
