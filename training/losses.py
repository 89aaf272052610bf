"""Training loss of SMHDR: μ-law L1 and the VGG-19 "local-enhanced" perceptual term, both
weighted per pixel by the loss map of the metric-guided update (docs/METHOD.md, "Loss").

The perceptual term needs ImageNet VGG-19 weights. They are never downloaded here and a
randomly initialised VGG is never used in their place: ``load_vgg19`` takes them from
``--vgg_weights PATH`` or from the local torch hub / Hugging Face caches, and otherwise raises
``VGGWeightsNotFoundError`` explaining how to provide them (or ``--le_lambda 0`` to train
without the term).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from utils.cli import UsageError
from utils.safe_load import load_tensors
from utils.tonemap import mu_tonemap

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Indices in VGG-19's `features` of the ReLUs after conv1_1, conv2_1, conv3_1, conv4_1, conv5_1.
VGG19_LAYER_ENDS = {"relu1_1": 1, "relu2_1": 6, "relu3_1": 11, "relu4_1": 20, "relu5_1": 29}
HF_REPO_ID = "timm/vgg19.tv_in1k"
HF_FILENAMES = ("model.safetensors", "pytorch_model.bin")
DEFAULT_LE_LAMBDA = 0.005


class VGGWeightsNotFoundError(FileNotFoundError):
    """No ImageNet VGG-19 weights were found for the perceptual loss."""


# ----------------------------------------------------------------------------- μ-law L1


def apply_loss_map(image: torch.Tensor, loss_map: torch.Tensor | None) -> torch.Tensor:
    """B×C×H×W image times a B×1×H×W loss map (broadcast over channels); None means all ones."""
    return image if loss_map is None else image * loss_map


def mu_l1_loss(pred: torch.Tensor, label: torch.Tensor, loss_map: torch.Tensor | None = None) -> torch.Tensor:
    """mean |T(ŷ)·W − T(y)·W| with T the μ-law tone map and W the loss map (docs/METHOD.md)."""
    return (apply_loss_map(mu_tonemap(pred), loss_map) - apply_loss_map(mu_tonemap(label), loss_map)).abs().mean()


def linear_l1_loss(pred: torch.Tensor, label: torch.Tensor, loss_map: torch.Tensor | None = None) -> torch.Tensor:
    """mean |ŷ·W − y·W| on linear radiance: unlike the μ-law term, it weighs an error in a
    highlight as much as the same error in a shadow (what PSNR-l measures)."""
    return (apply_loss_map(pred, loss_map) - apply_loss_map(label, loss_map)).abs().mean()


# ----------------------------------------------------------------------------- VGG-19 features


def build_vgg19_trunk() -> nn.Sequential:
    """VGG-19's ``features`` (timm's layer table), numbered as in torchvision and timm.

    Built directly rather than through ``timm.create_model`` so that the unused 120M-parameter
    classifier is never allocated; the ReLUs are not in-place so every feature map stays intact.
    """
    from timm.models.vgg import cfgs  # deferred: only needed when the perceptual term is on

    layers: list[nn.Module] = []
    channels = 3
    for item in cfgs["vgg19"]:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            channels = int(item)
    return nn.Sequential(*layers)


class VGG19Features(nn.Module):
    """VGG-19's convolutional trunk up to relu5_1, returning the five relu*_1 feature maps.

    Parameters are frozen and the module stays in eval mode (``train()`` is a no-op), so it can
    live inside a training loss without being updated. Keys are ``features.N.weight`` /
    ``features.N.bias`` as in torchvision and timm.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = build_vgg19_trunk()[: max(VGG19_LAYER_ENDS.values()) + 1]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> VGG19Features:
        return self  # always eval mode

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Features of an image in [0, 1] (ImageNet-normalised here), shallow to deep."""
        x = (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)
        outputs, start = [], 0
        for end in VGG19_LAYER_ENDS.values():
            x = self.features[start:end + 1](x)
            outputs.append(x)
            start = end + 1
        return outputs


def _unwrap_vgg_state(data: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``features.N.*`` tensors from a torchvision / timm state dict, possibly wrapped."""
    for key in ("state_dict", "model"):
        if isinstance(data.get(key), Mapping):
            data = data[key]
    state = {}
    for key, value in data.items():
        if not isinstance(value, torch.Tensor):
            continue
        key = re.sub(r"features_(\d+)\.", r"features.\1.", key.removeprefix("module."))  # timm features_only
        if "features." in key:
            state[key[key.index("features."):]] = value
    return state


def _read_weights_file(path: Path) -> Mapping[str, Any]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    data = load_tensors(path, "--vgg_weights")
    if not isinstance(data, Mapping):
        raise UsageError(f"--vgg_weights {path}: expected a state dict, found {type(data).__name__}")
    return data


def load_vgg19_state(model: VGG19Features, path: str | os.PathLike) -> None:
    """Load a torchvision- or timm-style VGG-19 state dict file into ``model`` (trunk keys only)."""
    path = Path(path)
    if not path.is_file():
        raise VGGWeightsNotFoundError(f"VGG-19 weights file not found: {path}")
    state = _unwrap_vgg_state(_read_weights_file(path))
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    misshaped = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or misshaped:
        raise UsageError(f"--vgg_weights {path} is not a VGG-19 state dict: missing {missing[:4]}, mis-shaped {misshaped[:4]} "
                         "(expected torchvision/timm keys features.N.weight / features.N.bias)")
    model.load_state_dict({k: state[k] for k in expected})


def torch_hub_candidates() -> list[Path]:
    """torchvision VGG-19 checkpoints already in the torch hub cache (``vgg19-*.pth``)."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return sorted(folder.glob("vgg19-*.pth")) if folder.is_dir() else []


def hf_cache_candidates() -> list[Path]:
    """timm's VGG-19 weights already in the local Hugging Face cache (never downloads)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return []
    found = []
    for filename in HF_FILENAMES:
        cached = try_to_load_from_cache(HF_REPO_ID, filename)
        if isinstance(cached, str):
            found.append(Path(cached))
    return found


def _searched_places() -> str:
    hf_home = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
    return (f"{Path(torch.hub.get_dir()) / 'checkpoints'}/vgg19-*.pth (torchvision) and the Hugging Face cache "
            f"under {hf_home} ({HF_REPO_ID}: {', '.join(HF_FILENAMES)})")


def find_vgg19_weights(weights_path: str | os.PathLike | None = None) -> Path:
    """The VGG-19 weights file to use: ``weights_path`` when given, else the first cached copy."""
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise VGGWeightsNotFoundError(f"--vgg_weights {path}: no such file")
        return path
    for candidate in [*torch_hub_candidates(), *hf_cache_candidates()]:
        if candidate.is_file():
            return candidate
    raise VGGWeightsNotFoundError(
        "no ImageNet VGG-19 weights were found for the perceptual loss (le_lambda > 0). Looked in: "
        f"{_searched_places()}. Pass --vgg_weights PATH (a torchvision vgg19 state dict such as "
        "vgg19-dcbb9e9d.pth, or timm's vgg19.tv_in1k weights), or train without the perceptual term "
        "with --le_lambda 0.")


def load_vgg19(weights_path: str | os.PathLike | None = None) -> VGG19Features:
    """A frozen, eval-mode VGG-19 trunk with ImageNet weights (see ``find_vgg19_weights``)."""
    path = find_vgg19_weights(weights_path)
    model = VGG19Features()
    load_vgg19_state(model, path)
    return model


# ----------------------------------------------------------------------------- losses


FeatureExtractor = Callable[[torch.Tensor], Sequence[torch.Tensor]]


def resize_loss_map(loss_map: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The loss map resized to a feature map's H×W (bilinear, corners aligned)."""
    if tuple(loss_map.shape[-2:]) == tuple(size):
        return loss_map
    return F.interpolate(loss_map, size=tuple(size), mode="bilinear", align_corners=True)


class PerceptualLoss(nn.Module):
    """Σ_layers mean |φ_l(T(ŷ))·W_l − φ_l(T(y))·W_l|, W_l the loss map resized to layer l.

    ``extractor`` maps an image in [0, 1] to a list of feature maps (``VGG19Features``:
    ImageNet normalisation, then relu1_1 … relu5_1).
    """

    def __init__(self, extractor: nn.Module) -> None:
        super().__init__()
        self.extractor = extractor

    def forward(self, pred: torch.Tensor, label: torch.Tensor, loss_map: torch.Tensor | None = None) -> torch.Tensor:
        pred_features = self.extractor(mu_tonemap(pred))
        with torch.no_grad():
            label_features = self.extractor(mu_tonemap(label))
        total = pred.new_zeros((), dtype=torch.float32)
        for fake, real in zip(pred_features, label_features):
            weight = None if loss_map is None else resize_loss_map(loss_map.to(fake.dtype), fake.shape[-2:])
            total = total + (apply_loss_map(fake, weight) - apply_loss_map(real, weight)).abs().float().mean()
        return total


class HDRLoss(nn.Module):
    """μ-law L1 + ``le_lambda`` · perceptual (the paper's loss) + ``linear_lambda`` · linear L1
    (an addition, off by default), all weighted by the loss map.

    ``forward`` returns a dict: ``loss`` (the total to back-propagate) and each term by name,
    unweighted and detached (``term_names``): ``l1`` (the μ-law term), ``perceptual`` (0 when the
    perceptual term is off) and, with ``linear_lambda`` > 0, ``linear_l1``. The trainer logs
    whatever terms it returns.
    """

    def __init__(self, le_lambda: float = DEFAULT_LE_LAMBDA, extractor: nn.Module | None = None,
                 linear_lambda: float = 0.0) -> None:
        super().__init__()
        for name, weight in (("le_lambda", le_lambda), ("linear_lambda", linear_lambda)):
            if not weight >= 0:
                raise ValueError(f"{name} must be >= 0, got {weight}")
        if le_lambda > 0 and extractor is None:
            raise ValueError("le_lambda > 0 needs a feature extractor (see load_vgg19)")
        self.le_lambda = le_lambda
        self.linear_lambda = linear_lambda
        self.perceptual = PerceptualLoss(extractor) if le_lambda > 0 else None

    def forward(self, pred: torch.Tensor, label: torch.Tensor,
                loss_map: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        pred, label = pred.float(), label.float()
        loss_map = None if loss_map is None else loss_map.float()
        l1 = mu_l1_loss(pred, label, loss_map)
        terms = {"l1": l1, "perceptual": torch.zeros_like(l1)}
        total = l1
        if self.linear_lambda > 0:
            terms["linear_l1"] = linear_l1_loss(pred, label, loss_map)
            total = total + self.linear_lambda * terms["linear_l1"]
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(pred, label, loss_map)
            total = total + self.le_lambda * terms["perceptual"]
        return {"loss": total, **{name: value.detach() for name, value in terms.items()}}

    @property
    def term_names(self) -> tuple[str, ...]:
        """The names of the terms ``forward`` returns besides ``loss``."""
        return ("l1", "perceptual") + (("linear_l1",) if self.linear_lambda > 0 else ())


def build_loss(le_lambda: float = DEFAULT_LE_LAMBDA, vgg_weights: str | os.PathLike | None = None,
               linear_lambda: float = 0.0) -> HDRLoss:
    """The training loss; loads VGG-19 only when the perceptual term is on."""
    return HDRLoss(le_lambda, load_vgg19(vgg_weights) if le_lambda > 0 else None, linear_lambda)
