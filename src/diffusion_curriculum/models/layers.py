"""Small blocks shared by the denoising networks.

* :func:`timestep_embedding` / :class:`TimestepEmbedder` -- the sinusoidal embedding of the scalar
  "model time" followed by an MLP, as in the Transformer positional encoding (Vaswani et al. 2017)
  and its use for diffusion timesteps in DDPM (Ho et al. 2020) and DiT (Peebles & Xie 2023).
* :class:`LabelEmbedder` -- a class-embedding table with one extra *null* row, trained with label
  dropout so that the same network is also unconditional; this is what classifier-free guidance
  (Ho & Salimans 2022) needs at sampling time.
* :class:`TextEmbedder` -- the same for pre-computed caption embeddings: the pooled caption enters the
  conditioning vector, and a *null* caption (the text encoder's empty caption, or a learned one)
  replaces dropped captions, again for classifier-free guidance.
* :func:`resolve_labels` -- the common handling of ``y`` (None, unconditional nets, dropout).
* :func:`batch_times` -- the common handling of ``t`` (a (B,) tensor or one scalar for the batch).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "LabelEmbedder",
    "TextEmbedder",
    "TimestepEmbedder",
    "batch_times",
    "condition_of",
    "resolve_labels",
    "timestep_embedding",
]


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


def _drop_mask(
    batch: int,
    dropout: float,
    training: bool,
    device: torch.device,
    force_drop_ids: torch.Tensor | None,
) -> torch.Tensor | None:
    """Which samples lose their condition: ``force_drop_ids`` if given, else a training-mode draw."""
    if force_drop_ids is not None:
        drop = force_drop_ids.to(device=device).bool()
        if drop.shape != (batch,):
            raise ValueError(f"force_drop_ids must have shape ({batch},), got {tuple(drop.shape)}")
        return drop
    if training and dropout > 0:
        # The global RNG, as for class labels, so seeded training (and its resume) is reproducible.
        return torch.rand(batch, device=device) < dropout
    return None


class TextEmbedder(nn.Module):
    """Conditioning on pre-computed caption embeddings, with a null caption for classifier-free guidance.

    A caption is a float tensor of ``tokens`` embeddings of size ``text_dim`` (``tokens = 1`` for a
    pooled embedding such as CLIP's).  :meth:`resolve` returns the captions a batch is conditioned on:
    the given ones, except that the *null* caption replaces ``y=None``, every sample where
    ``force_drop_ids`` is True (any mode), and in training mode each sample with probability
    ``dropout`` -- the condition dropout that trains the unconditional model of classifier-free
    guidance (Ho & Salimans 2022).  :meth:`pool` maps the mean over tokens through a two-layer SiLU MLP
    to ``hidden_size``; ``forward`` is the two together, a vector that is added to the timestep
    embedding exactly like a class embedding.

    The null caption is ``null`` (tokens, text_dim) when given -- the text encoder's embedding of the
    empty caption, the usual choice when the encoder is frozen (e.g. Stable Diffusion, Rombach et al.
    2022) -- stored as a fixed buffer; otherwise a learned parameter initialised N(0, 0.02).  Both are
    called ``null``, so their state-dict keys are the same and a checkpoint of either kind loads into a
    network built without ``null`` (as a sampler that knows only the architecture does).
    """

    def __init__(
        self,
        text_dim: int,
        hidden_size: int,
        tokens: int = 1,
        dropout: float = 0.1,
        null: torch.Tensor | None = None,
    ):
        super().__init__()
        if text_dim < 1 or tokens < 1:
            raise ValueError(f"TextEmbedder needs text_dim >= 1 and tokens >= 1, got {text_dim} and {tokens}")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"caption dropout must be in [0, 1], got {dropout}")
        self.text_dim = text_dim
        self.tokens = tokens
        self.dropout = dropout
        self.mlp = nn.Sequential(
            nn.Linear(text_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        if null is None:
            self.null = nn.Parameter(torch.empty(tokens, text_dim))
            self.reset_null()
        else:
            null = torch.as_tensor(null, dtype=torch.float32)
            if null.shape != (tokens, text_dim):
                raise ValueError(
                    f"null caption embedding must have shape ({tokens}, {text_dim}) = (tokens, text_dim), "
                    f"got {tuple(null.shape)}"
                )
            if not torch.isfinite(null).all():
                raise ValueError("null caption embedding has non-finite values")
            self.register_buffer("null", null.clone())

    @property
    def learned_null(self) -> bool:
        return isinstance(self.null, nn.Parameter)

    def reset_null(self) -> None:
        """Re-draw a learned null caption; a fixed one (the encoder's) is left alone."""
        if self.learned_null:
            nn.init.normal_(self.null, std=0.02)

    def resolve(
        self, y: torch.Tensor | None, batch: int, force_drop_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The captions the batch is conditioned on, (batch, tokens, text_dim), nulls substituted."""
        null = self.null.expand(batch, -1, -1)
        if y is None:
            return null
        if y.ndim == 2 and self.tokens == 1:
            y = y[:, None, :]  # a pooled embedding given as (B, D)
        if y.shape != (batch, self.tokens, self.text_dim):
            raise ValueError(
                f"caption embeddings y must have shape ({batch}, {self.tokens}, {self.text_dim}) = "
                f"(B, tokens, text_dim)"
                + (" or (B, text_dim)" if self.tokens == 1 else "")
                + f", got {tuple(y.shape)}"
            )
        y = y.to(device=null.device, dtype=null.dtype)
        drop = _drop_mask(batch, self.dropout, self.training, null.device, force_drop_ids)
        if drop is None:
            return y
        return torch.where(drop[:, None, None], null, y)

    def pool(self, text: torch.Tensor) -> torch.Tensor:
        """(B, tokens, text_dim) -> (B, hidden_size): the MLP of the mean over tokens."""
        return self.mlp(text.mean(dim=1).to(self.mlp[0].weight.dtype))

    def forward(
        self, y: torch.Tensor | None, batch: int, force_drop_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.pool(self.resolve(y, batch, force_drop_ids))


def condition_of(num_classes: int, text_dim: int, text_null: torch.Tensor | None = None) -> str:
    """The network's ``condition`` attribute: "none", "class" or "text"; rejects class and text together."""
    if num_classes < 0 or text_dim < 0:
        raise ValueError(f"num_classes and text_dim must be >= 0, got {num_classes} and {text_dim}")
    if num_classes and text_dim:
        raise ValueError(
            f"a network is class-conditional (num_classes={num_classes}) or text-conditional "
            f"(text_dim={text_dim}), not both; set one of them to 0"
        )
    if text_null is not None and not text_dim:
        raise ValueError(
            "text_null is given but text_dim is 0: only text-conditional nets have a null caption"
        )
    return "class" if num_classes else "text" if text_dim else "none"


def check_input(model: nn.Module, x: torch.Tensor) -> None:
    """Reject an input whose shape differs from the one the network was built for, naming both."""
    if x.ndim != 4 or tuple(x.shape[1:]) != (model.in_channels, *model.input_size):
        expected = (model.in_channels, *model.input_size)
        shape = ", ".join(map(str, expected))
        raise ValueError(f"{type(model).__name__} built for inputs (B, {shape}), got {tuple(x.shape)}")


def embed_conditions(
    t_embed: TimestepEmbedder,
    y_embed: LabelEmbedder | TextEmbedder | None,
    t: torch.Tensor | float,
    y: torch.Tensor | None,
    x: torch.Tensor,
    force_drop_ids: torch.Tensor | None,
) -> torch.Tensor:
    """The conditioning vector: time embedding plus, for conditional networks, the label or pooled caption
    embedding."""
    b = x.shape[0]
    c = t_embed(batch_times(t, b, x.device))
    if y_embed is not None:
        c = c + y_embed(y, b, force_drop_ids)
    return c
