"""Denoising networks and their registry.

Every network has the interface ``net(x (B,C,H,W), t (B,) float model time ~[0, 1000],
y (B,) long | None) -> (B,C,H,W)`` and the attributes ``num_classes`` (0 = unconditional) and
``null_class`` (always ``num_classes``: the label used for ``y=None`` and for classifier-free
guidance; unconditional nets ignore ``y`` altogether).  Conditional nets also accept a keyword
``force_drop_ids`` (B,) bool that replaces chosen labels by the null class in any mode.

Registered names: ``DiT-{tiny,S,B,L,XL}/{2,4,8}`` (:mod:`.dit`) and ``UNet-small``, ``UNet-base``
(:mod:`.unet`).  Extra keyword arguments to :func:`create_model` override the named configuration,
e.g. ``create_model("DiT-tiny/4", input_size=28, in_channels=1, depth=2)``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from .dit import DIT_SIZES, DiT
from .unet import UNET_CONFIGS, UNet

__all__ = ["MODELS", "DiT", "UNet", "count_parameters", "create_model"]


def _registry() -> dict[str, Callable[..., nn.Module]]:
    models: dict[str, Callable[..., nn.Module]] = {}
    for size, (depth, hidden, heads) in DIT_SIZES.items():
        for patch in (2, 4, 8):
            models[f"DiT-{size}/{patch}"] = partial(
                DiT, depth=depth, hidden_size=hidden, num_heads=heads, patch_size=patch
            )
    for size, config in UNET_CONFIGS.items():
        models[f"UNet-{size}"] = partial(UNet, **config)
    return models


#: name -> constructor taking ``input_size``, ``in_channels``, ``num_classes``, ``class_dropout`` and
#: optional overrides, all by keyword.
MODELS: dict[str, Callable[..., nn.Module]] = _registry()


def create_model(
    name: str,
    *,
    input_size: int,
    in_channels: int,
    num_classes: int = 0,
    class_dropout: float = 0.1,
    **kwargs,
) -> nn.Module:
    """Build the registered network ``name``; ``kwargs`` override its named configuration."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODELS)}")
    model = MODELS[name](
        input_size=input_size,
        in_channels=in_channels,
        num_classes=num_classes,
        class_dropout=class_dropout,
        **kwargs,
    )
    model.model_name = name
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (by default only trainable) parameter elements; fixed buffers are not counted."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
