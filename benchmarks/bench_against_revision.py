"""This tree's network forward and training step against those of an earlier git revision, timed in
turn in one process (paired ratios, so the machine's drift cancels): what a refactor's "no change
beyond noise" rests on.

The revision's ``models`` and ``training`` packages are read from ``git archive`` into a temporary
folder and imported under their own names; both networks get the same weights and inputs, and the
outputs are compared too.

    python -m benchmarks.bench_against_revision --base HEAD~3
    python -m benchmarks.bench_against_revision --base v1.0 --size 128 --batch_size 4 --repeats 9
"""
from __future__ import annotations

import argparse
import importlib
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

import torch

from benchmarks.common import MatmulProbe, describe_machine, paired_ratio, time_alternately

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "training", "datasets", "utils", "evaluation")


def import_revision(revision: str, folder: Path) -> dict[str, ModuleType]:
    """``models.smnet`` and ``training.losses`` as they are at ``revision`` (imported from ``folder``)."""
    archive = subprocess.run(["git", "archive", revision, *PACKAGES], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    current = {name: module for name, module in sys.modules.items() if name.split(".")[0] in PACKAGES}
    for name in current:
        del sys.modules[name]
    sys.path.insert(0, str(folder))
    try:
        modules = {name: importlib.import_module(name) for name in ("models.smnet", "training.losses")}
    finally:
        sys.path.remove(str(folder))
        for name in [n for n in sys.modules if n.split(".")[0] in PACKAGES]:
            del sys.modules[name]
        sys.modules.update(current)
    return modules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the git revision to compare with")
    parser.add_argument("--size", type=int, default=128, help="square crop side")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tiny", action="store_true", help="the demo checkpoint's network instead of the released one")
    args = parser.parse_args()
    from models.registry import ARCHITECTURES
    from models.smnet import SMNet
    from training.losses import mu_l1_loss

    device = torch.device("cpu")
    architecture = ARCHITECTURES["smnet_tiny" if args.tiny else "smnet"]
    with tempfile.TemporaryDirectory() as folder:
        old = import_revision(args.base, Path(folder))
    torch.manual_seed(0)
    new_net = SMNet(img_size=args.size, is_mask=True, **architecture)
    old_net = old["models.smnet"].SMNet(img_size=args.size, is_mask=True, **architecture)
    old_net.load_state_dict(new_net.state_dict())
    x = torch.rand(args.batch_size, 18, args.size, args.size)
    label = torch.rand(args.batch_size, 3, args.size, args.size)
    for net in (new_net, old_net):
        net.eval()
    with torch.no_grad():
        difference = (new_net(x) - old_net(x)).abs().max().item()
    print(f"{describe_machine(device)}; {'smnet_tiny' if args.tiny else 'smnet'}, batch {args.batch_size} × "
          f"{args.size}², against {args.base} (read from {Path(old['models.smnet'].__file__).parent.parent}); "
          f"largest output difference {difference:.2e}")

    def forward(net: torch.nn.Module):
        def run() -> None:
            with torch.no_grad():
                net(x)
        return run

    def step(net: torch.nn.Module, loss_fn):
        optimiser = torch.optim.Adam(net.parameters(), lr=1e-6)

        def run() -> None:
            loss = loss_fn(net(x), label)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        return run

    probe = MatmulProbe(device)
    new, base = time_alternately([forward(new_net), forward(old_net)], [1, 1], probe, repeats=args.repeats)
    print(f"forward:       this tree {new.seconds * 1e3:8.1f} ms, {args.base} {base.seconds * 1e3:8.1f} ms, "
          f"paired ratio {paired_ratio(new, base):.3f}")
    for net in (new_net, old_net):
        net.train()
    new, base = time_alternately([step(new_net, mu_l1_loss), step(old_net, old["training.losses"].mu_l1_loss)], [1, 1],
                                 probe, repeats=args.repeats)
    print(f"training step: this tree {new.seconds * 1e3:8.1f} ms, {args.base} {base.seconds * 1e3:8.1f} ms, "
          f"paired ratio {paired_ratio(new, base):.3f}")


if __name__ == "__main__":
    main()
