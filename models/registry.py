"""Networks by name, as timm and Segment Anything's registries give them: ``smnet()`` is the
released network, ``smnet_tiny()`` the one of the demo checkpoint. A name fixes the architecture
(width, stages, heads, window); the constructor's other options (drop rates, mask blocks, the
training crop) stay free. Checkpoints record the name of the architecture they hold."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from .smnet import SMNet

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "smnet": dict(embed_dim=60, depths=[6, 6, 6, 6], num_heads=[6, 6, 6, 6], window_size=8),
    "smnet_tiny": dict(embed_dim=24, depths=[2, 2], num_heads=[2, 2], window_size=8),
}
"""Architecture options of each named network (1,292,499 and 76,143 parameters at 3 exposures)."""


def create_model(name: str, **options: Any) -> SMNet:
    """The named network; ``options`` override any constructor option (architecture ones too)."""
    if name not in ARCHITECTURES:
        raise KeyError(f"unknown network {name!r}; expected one of {sorted(ARCHITECTURES)}")
    return SMNet(**{**ARCHITECTURES[name], **options})


def smnet(**options: Any) -> SMNet:
    """The released SMHDR network: width 60, four stages of six blocks with six heads."""
    return create_model("smnet", **options)


def smnet_tiny(**options: Any) -> SMNet:
    """The demo checkpoint's network: width 24, two stages of two blocks with two heads."""
    return create_model("smnet_tiny", **options)


CONSTRUCTORS: dict[str, Callable[..., SMNet]] = {"smnet": smnet, "smnet_tiny": smnet_tiny}


def architecture_name(config: Mapping[str, Any]) -> str | None:
    """The name of the architecture a network config (``SMNet.config``) is, or None for a custom one."""
    for name, options in ARCHITECTURES.items():
        if all(list(config.get(key, [])) == list(value) if isinstance(value, list) else config.get(key) == value
               for key, value in options.items()):
            return name
    return None
