"""Denoising networks and their registry.

Every network has the interface ``net(x (B,C,H,W), t (B,) float model time ~[0, 1000], y | None,
*, force_drop_ids=None) -> (B,C,H,W)`` and the attributes

* ``condition``: ``"none"``, ``"class"`` or ``"text"`` -- what ``y`` is;
* ``num_classes`` (0 unless class-conditional) and ``null_class`` (always ``num_classes``: the label
  that ``y=None`` stands for in a class-conditional net).

Class nets take ``y`` as (B,) long labels; text nets as float (B, T, D) caption embeddings computed by a
text encoder elsewhere (or (B, D) when T = 1), with ``y=None`` meaning the null caption; unconditional
nets ignore ``y`` altogether.  ``force_drop_ids`` (B,) bool replaces the chosen samples' condition by the
null class / null caption in any mode: this is how classifier-free guidance asks for the unconditional
prediction (:func:`diffusion_curriculum.samplers.guided_x0_fn`) whatever the kind of condition.

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


#: name -> constructor taking ``input_size``, ``in_channels``, ``num_classes``, ``class_dropout``, the
#: ``text_*`` arguments and optional overrides, all by keyword.
MODELS: dict[str, Callable[..., nn.Module]] = _registry()


def create_model(
    name: str,
    *,
    input_size: int,
    in_channels: int,
    num_classes: int = 0,
    class_dropout: float = 0.1,
    text_dim: int = 0,
    text_tokens: int = 1,
    text_null=None,
    **kwargs,
) -> nn.Module:
    """Build the registered network ``name``; ``kwargs`` override its named configuration.

    ``num_classes > 0`` makes a class-conditional net, ``text_dim > 0`` a text-conditional one taking
    ``text_tokens`` caption embeddings of size ``text_dim``; both at once is a ValueError.
    ``class_dropout`` is the condition dropout of either kind.  ``text_null`` is the text encoder's
    (text_tokens, text_dim) embedding of the empty caption (tensor or array), kept fixed; without it the
    net learns its null caption.  The null is in the state dict under the same key either way, so a
    sampler can rebuild a text net from ``text_dim`` and ``text_tokens`` alone and load its weights.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODELS)}")
    model = MODELS[name](
        input_size=input_size,
        in_channels=in_channels,
        num_classes=num_classes,
        class_dropout=class_dropout,
        text_dim=text_dim,
        text_tokens=text_tokens,
        text_null=text_null,
        **kwargs,
    )
    model.model_name = name
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (by default only trainable) parameter elements; fixed buffers are not counted."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
