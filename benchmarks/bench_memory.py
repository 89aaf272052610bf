"""Peak activation memory of a one-pass GPU forward of the default SMNet, estimated without a GPU.

    python -m benchmarks.bench_memory                          # 1000×1500 (padded to 1024×1536)
    python -m benchmarks.bench_memory --size 1000x1500 --amp fp16 --pad_multiple 128

Method: the forward pass runs on fake CUDA tensors (``FakeTensorMode``: every operation computes
the shape, dtype and device of its result and allocates nothing), so it takes the code paths of a
CUDA device: its inference chunk sizes (``models.blocks.INFERENCE_CHUNKING``) and autocast's CUDA
rules (switched on directly, since ``torch.autocast`` turns CUDA off without a driver). Attention
on fake tensors always takes PyTorch's math kernel, which is also what CUDA runs for these shapes
(its fused kernels need the head width, 10, to be a multiple of 4 in float32 or 8 in half
precision, and flash attention takes no additive mask); it computes the logits in float32 even
for half-precision inputs. A dispatch mode adds up the bytes of the storages alive on the device
after every operation and keeps the largest sum: the peak of ``torch.cuda.max_memory_allocated``
up to the caching allocator's rounding, with the weights, the input and the window layouts
included. Workspaces inside a kernel (cuBLAS, cuDNN) and the CUDA context are not counted.
"""
from __future__ import annotations

import argparse
import contextlib
import warnings
from typing import Iterator, NamedTuple

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from models import blocks
from models.blocks import WindowLayouts
from models.inference import TEST_PAD_MULTIPLE, eval_mode, resolve_amp
from models.smnet import SMNet
from models.window_attention import WindowLayout

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class PeakMemory(TorchDispatchMode):
    """Bytes of the storages alive on ``device_type`` (counted from the first operation that
    produces them), after every operation, and the largest such sum."""

    def __init__(self, device_type: str = "cuda") -> None:
        super().__init__()
        self.device_type = device_type
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def _forget_freed(self) -> None:
        for key in [key for key, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key not in self.live:
            self.live[key] = (StorageWeakRef(storage), storage.nbytes())
            self.current += storage.nbytes()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self._forget_freed()  # before the outputs exist: what the operation's inputs leave alive
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor) and leaf.device.type == self.device_type:
                self._track(leaf)
        self.peak = max(self.peak, self.current)
        return out


@contextlib.contextmanager
def cuda_autocast(dtype: torch.dtype | None) -> Iterator[None]:
    """CUDA autocast to ``dtype`` (None: off) that also works without a driver, for fake CUDA
    tensors: the same switches ``torch.autocast`` sets, set directly."""
    if dtype is None:
        yield
        return
    previous = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", previous[0])
        torch.set_autocast_dtype("cuda", previous[1])


class _WithLayouts(nn.Module):
    """``model.forward_with_layouts`` as a module's forward, for ``torch.func.functional_call``."""

    def __init__(self, model: SMNet, layouts: WindowLayouts) -> None:
        super().__init__()
        self.model = model
        self.layouts = layouts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_with_layouts(x, None, self.layouts)


def _like_on_cuda(tensor: torch.Tensor) -> torch.Tensor:
    """A (fake, inside ``FakeTensorMode``) CUDA tensor of ``tensor``'s shape and dtype."""
    return torch.empty(tensor.shape, dtype=tensor.dtype, device="cuda")


def fake_cuda_forward(model: SMNet, shape: tuple[int, ...], amp: str | None = None,
                      meter: PeakMemory | None = None) -> torch.Tensor:
    """Inference forward of ``model`` (in eval mode) on a fake CUDA input of ``shape``, under CUDA
    autocast ``amp``; returns the (fake) output. With ``meter``, the weights, input and window
    layouts are created under it, so its peak counts them.

    The window layouts are built on the CPU (building one indexes by data, which fake tensors
    cannot) and their tensors recreated on the fake device; the values do not matter here.
    """
    cpu_layouts = model.window_layouts(torch.empty(()).expand(shape))
    fake_mode = FakeTensorMode()
    with fake_mode, meter or contextlib.nullcontext(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
        state = {f"model.{name}": _like_on_cuda(value)
                 for name, value in (*model.named_parameters(), *model.named_buffers())}
        layouts = {key: WindowLayout(*(_like_on_cuda(v) if isinstance(v, torch.Tensor) else v for v in layout))
                   for key, layout in cpu_layouts.items()}
        x = torch.empty(shape, device="cuda")
        with torch.no_grad(), eval_mode(model), cuda_autocast(AMP_DTYPES.get(amp)):
            return torch.func.functional_call(_WithLayouts(model, layouts), state, (x,))


class Estimate(NamedTuple):
    amp: str
    chunked: bool
    peak_bytes: int


def estimate(model: SMNet, shape: tuple[int, ...], amp: str | None, chunked: bool) -> Estimate:
    """Peak device memory of one inference forward, with the CUDA chunking or the whole image."""
    meter = PeakMemory("cuda")
    setting = blocks.INFERENCE_CHUNKING.get("cuda") if chunked else None
    saved = blocks.INFERENCE_CHUNKING.get("cuda")
    blocks.INFERENCE_CHUNKING["cuda"] = setting
    try:
        fake_cuda_forward(model, shape, amp, meter)
    finally:
        blocks.INFERENCE_CHUNKING["cuda"] = saved
    return Estimate(amp or "fp32", chunked, meter.peak)


def padded_shape(height: int, width: int, multiple: int, exposures: int = 3) -> tuple[int, int, int, int]:
    """B×C×H×W of the network input for a height×width image padded to ``multiple``."""
    return 1, 6 * exposures, height + (-height) % multiple, width + (-width) % multiple


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1000x1500", help="HxW of the image before padding")
    parser.add_argument("--pad_multiple", type=int, default=TEST_PAD_MULTIPLE)
    parser.add_argument("--amp", nargs="+", default=["none", "fp16", "bf16"], choices=["none", "fp16", "bf16"])
    args = parser.parse_args()

    height, _, width = args.size.partition("x")
    shape = padded_shape(int(height), int(width or height), args.pad_multiple)
    model = SMNet().eval()
    chunking = blocks.INFERENCE_CHUNKING.get("cuda")
    print(f"default SMNet, input {tuple(shape)} (an {args.size} image padded to a multiple of {args.pad_multiple}), "
          f"fake CUDA device, CUDA chunking {chunking}")
    for amp_name in args.amp:
        amp, _ = resolve_amp(amp_name, "cuda")
        for chunked in (True, False):
            result = estimate(model, shape, amp, chunked)
            print(f"  {result.amp:>4} {'chunked' if chunked else 'whole image':>11}: "
                  f"peak {result.peak_bytes / 2**30:.2f} GiB ({result.peak_bytes / 1e9:.2f} GB)")


if __name__ == "__main__":
    main()
