"""Small blocks shared by the denoising networks.

* :func:`timestep_embedding` / :class:`TimestepEmbedder` -- the sinusoidal embedding of the scalar
  "model time" followed by an MLP, as in the Transformer positional encoding (Vaswani et al. 2017)
  and its use for diffusion timesteps in DDPM (Ho et al. 2020) and DiT (Peebles & Xie 2023).
* :class:`LabelEmbedder` -- a class-embedding table with one extra *null* row, trained with label
  dropout so that the same network is also unconditional; this is what classifier-free guidance
  (Ho & Salimans 2022) needs at sampling time.
* :func:`resolve_labels` -- the common handling of ``y`` (None, unconditional nets, dropout).
* :func:`batch_times` -- the common handling of ``t`` (a (B,) tensor or one scalar for the batch).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["LabelEmbedder", "TimestepEmbedder", "batch_times", "resolve_labels", "timestep_embedding"]


def batch_times(t: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
    """Accept the model time as a (B,) tensor, or a scalar / 0-d tensor shared by the batch."""
    t = torch.as_tensor(t, device=device)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"model time t must have shape ({batch},) or be a scalar, got {tuple(t.shape)}")
    return t


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of a (B,) float tensor of times, shape (B, dim).

    Frequencies are geometric from 1 down to ``1 / max_period`` so that times ~[0, 1000] are
    resolved both coarsely and finely.  The first half of the features are cosines, the second
    half sines; an odd ``dim`` gets one zero column.
    """
    if t.ndim != 1:
        raise ValueError(f"timestep_embedding expects t of shape (B,), got {tuple(t.shape)}")
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)
    # Computed in float32 even under autocast: large t * freq loses phase precision in half types.
    angles = t.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of the model time followed by a two-layer SiLU MLP."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256, max_period: float = 10000.0):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.max_period = max_period
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freqs = timestep_embedding(t, self.frequency_dim, self.max_period)
        return self.mlp(freqs.to(self.mlp[0].weight.dtype))


def resolve_labels(
    y: torch.Tensor | None,
    batch: int,
    num_classes: int,
    dropout: float,
    training: bool,
    device: torch.device,
    force_drop_ids: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Turn the user-facing ``y`` into indices into a ``num_classes + 1`` row table.

    Returns None for unconditional nets (``num_classes == 0``; ``y`` is ignored).  ``y=None``
    means "no label" and maps every sample to the null index ``num_classes``.  In training mode
    each label is independently replaced by the null index with probability ``dropout``; the
    draw uses the global RNG so seeded training is reproducible.  ``force_drop_ids`` (bool or
    0/1, shape (B,)) overrides the random draw, in any mode.
    """
    if num_classes == 0:
        return None
    if y is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    if y.shape != (batch,):
        raise ValueError(f"labels y must have shape ({batch},), got {tuple(y.shape)}")
    y = y.to(device=device, dtype=torch.long)
    if force_drop_ids is not None:
        drop = force_drop_ids.to(device=device).bool()
    elif training and dropout > 0:
        drop = torch.rand(batch, device=device) < dropout
    else:
        return y
    return torch.where(drop, torch.full_like(y, num_classes), y)


class LabelEmbedder(nn.Module):
    """Class embedding with a trailing null row (index ``num_classes``) for classifier-free guidance.

    Label dropout (Ho & Salimans 2022) is applied here, only when the module is in training mode.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout: float = 0.1):
        super().__init__()
        if num_classes < 1:
            raise ValueError("LabelEmbedder needs num_classes >= 1; unconditional nets should omit it")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"class dropout must be in [0, 1], got {dropout}")
        self.num_classes = num_classes
        self.dropout = dropout
        self.table = nn.Embedding(num_classes + 1, hidden_size)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def forward(
        self, y: torch.Tensor | None, batch: int, force_drop_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        idx = resolve_labels(
            y,
            batch,
            self.num_classes,
            self.dropout,
            self.training,
            self.table.weight.device,
            force_drop_ids,
        )
        return self.table(idx)


def check_input(model: nn.Module, x: torch.Tensor) -> None:
    """Reject an input whose shape differs from the one the network was built for, naming both."""
    if x.ndim != 4 or tuple(x.shape[1:]) != (model.in_channels, *model.input_size):
        expected = (model.in_channels, *model.input_size)
        shape = ", ".join(map(str, expected))
        raise ValueError(f"{type(model).__name__} built for inputs (B, {shape}), got {tuple(x.shape)}")


def embed_conditions(
    t_embed: TimestepEmbedder,
    y_embed: LabelEmbedder | None,
    t: torch.Tensor | float,
    y: torch.Tensor | None,
    x: torch.Tensor,
    force_drop_ids: torch.Tensor | None,
) -> torch.Tensor:
    """The conditioning vector: time embedding plus, for class-conditional networks, label embedding."""
    b = x.shape[0]
    c = t_embed(batch_times(t, b, x.device))
    if y_embed is not None:
        c = c + y_embed(y, b, force_drop_ids)
    return c
