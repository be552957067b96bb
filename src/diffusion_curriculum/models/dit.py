"""Diffusion Transformer (DiT), after Peebles & Xie, "Scalable Diffusion Models with Transformers"
(ICCV 2023, arXiv:2212.09748).

The image is cut into non-overlapping ``patch x patch`` tokens (a ViT, Dosovitskiy et al. 2021)
with a fixed 2-D sine-cosine position embedding (as in MAE, He et al. 2022).  The timestep and
class embeddings are summed into one conditioning vector ``c`` that modulates every block through
*adaLN-Zero*: the LayerNorms have no affine parameters; a per-block linear map of ``c`` produces
shift, scale and a residual gate for both the attention and the MLP branch, and that map starts at
zero, so every block starts as the identity and the network starts by predicting zeros.

Unlike the paper's ImageNet models this variant predicts only the mean/noise/velocity target (no
learned variance channels), so the output has the same shape as the input.

Text conditioning (``text_dim > 0``, captions embedded elsewhere): the pooled caption joins ``c`` like a
class embedding (:class:`~.layers.TextEmbedder`), and in addition every caption token is projected to the
hidden size and prepended to the image tokens -- in-context conditioning, as in U-ViT (Bao et al. 2023,
"All are Worth Words", arXiv:2209.12152) and DiT's own in-context variant -- so attention can read the
caption token by token; the blocks run over the joint sequence and the caption tokens are dropped before
the final layer.  Caption tokens get a learned position embedding (as all of U-ViT's tokens do): it
both marks them as text, apart from every image position, and orders them when the encoder's output
does not encode order itself.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .layers import (
    LabelEmbedder,
    TextEmbedder,
    TimestepEmbedder,
    batch_times,
    check_input,
    condition_of,
    embed_conditions,
)

__all__ = ["DIT_SIZES", "DiT", "load_dit_checkpoint", "official_dit_key", "sincos_pos_embed_2d"]

# (depth, hidden size, heads).  S/B/L/XL are the paper's Table 1; "tiny" is our CPU-sized model.
DIT_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (4, 128, 4),
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(N,) positions -> (N, dim) features: dim/2 sines then dim/2 cosines."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding, shape (grid_h * grid_w, dim), row-major tokens.

    DiT's layout (``get_2d_sincos_pos_embed`` in facebookresearch/DiT, from MAE): the first dim/2
    channels encode the token's *column* index and the last dim/2 its *row* index, each as dim/4 sines
    then dim/4 cosines of position * 10000^(-k / (dim/4)).  (DiT's meshgrid puts w first, so its
    "emb_h" half is in fact the column.)  Official DiT weights were trained with exactly this table.
    ``dim`` must be a multiple of 4.  Computed in float64 (then cast) so it does not depend on the
    model's dtype.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos position embedding needs dim divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    emb_cols = _sincos_1d(dim // 2, cols.reshape(-1))
    emb_rows = _sincos_1d(dim // 2, rows.reshape(-1))
    return torch.cat([emb_cols, emb_rows], dim=1).float()


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # (1 + scale) so that a zero modulation leaves the normalised activations unchanged.
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection and PyTorch's fused SDPA kernel."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        # (B, N, 3, heads, head_dim) -> three tensors of (B, heads, N, head_dim)
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class DiTBlock(nn.Module):
    """Pre-norm transformer block conditioned by adaLN-Zero (DiT paper, section 3.2)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        # One projection yields shift/scale/gate for attention and for the MLP.
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.modulation(c).chunk(6, dim=1)
        x = x + gate_a[:, None, :] * self.attn(_modulate(self.norm1(x), shift_a, scale_a))
        x = x + gate_m[:, None, :] * self.mlp(_modulate(self.norm2(x), shift_m, scale_m))
        return x


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm then a linear map from tokens to patch pixels."""

    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(c).chunk(2, dim=1)
        return self.linear(_modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """Diffusion Transformer: ``net(x (B,C,H,W), t (B,), y | None, *, force_drop_ids) -> (B,C,H,W)``.

    Args:
        input_size: spatial size H (= W), or an ``(H, W)`` pair; each must be divisible by
            ``patch_size``.  The position embedding is fixed to this grid.
        in_channels: image/latent channels C (output has the same number).
        patch_size: token side length (2, 4 or 8 in the paper).
        depth, hidden_size, num_heads, mlp_ratio: transformer size.
        num_classes: 0 for an unconditional net; otherwise labels 0..num_classes-1, plus the null
            class ``num_classes`` used for ``y=None`` and for label dropout.
        class_dropout: probability, in training mode only, of replacing a label (or caption) by the null
            class (or null caption).
        text_dim: 0, or the caption embedding size D of a text-conditional net; then ``y`` is a float
            (B, text_tokens, D) tensor (or (B, D) when ``text_tokens == 1``), ``y=None`` is the null
            caption, and ``num_classes`` must be 0.
        text_tokens: tokens T per caption (1 for pooled embeddings).
        text_null: the encoder's (T, D) embedding of the empty caption, kept fixed; None learns one.
    """

    def __init__(
        self,
        *,
        input_size: int | tuple[int, int],
        in_channels: int,
        patch_size: int = 2,
        depth: int = 4,
        hidden_size: int = 128,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        num_classes: int = 0,
        class_dropout: float = 0.1,
        frequency_dim: int = 256,
        text_dim: int = 0,
        text_tokens: int = 1,
        text_null: torch.Tensor | None = None,
    ):
        super().__init__()
        height, width = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        if height % patch_size or width % patch_size:
            raise ValueError(f"DiT input size {height}x{width} is not divisible by patch size {patch_size}")
        self.condition = condition_of(num_classes, text_dim, text_null)
        self.input_size = (height, width)
        self.in_channels = in_channels
        self.out_channels = in_channels
        self.patch_size = patch_size
        self.num_classes = num_classes
        # Always num_classes, the label y=None stands for; callers written before force_drop_ids pass it.
        self.null_class = num_classes
        self.grid = (height // patch_size, width // patch_size)

        self.patch_embed = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        # Fixed, so a buffer; not persistent, so checkpoints stay independent of how it is computed.
        self.register_buffer(
            "pos_embed", sincos_pos_embed_2d(hidden_size, *self.grid)[None], persistent=False
        )
        self.t_embed = TimestepEmbedder(hidden_size, frequency_dim)
        self.y_embed = LabelEmbedder(num_classes, hidden_size, class_dropout) if num_classes > 0 else None
        if self.condition == "text":
            self.text_embed = TextEmbedder(text_dim, hidden_size, text_tokens, class_dropout, text_null)
            self.text_token_proj = nn.Linear(text_dim, hidden_size)
            self.text_token_pos = nn.Parameter(torch.empty(1, text_tokens, hidden_size))
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DiT initialisation: xavier-uniform linears, N(0, 0.02) embeddings, zeroed adaLN and output."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        # The patch conv is a linear map of the flattened patch; initialise it as one.
        w = self.patch_embed.weight
        bound = math.sqrt(6.0 / (w.shape[0] + w[0].numel()))
        nn.init.uniform_(w, -bound, bound)
        nn.init.zeros_(self.patch_embed.bias)
        for layer in (self.t_embed.mlp[0], self.t_embed.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        if self.y_embed is not None:
            nn.init.normal_(self.y_embed.table.weight, std=0.02)
        if self.condition == "text":
            self.text_embed.reset_null()
            nn.init.normal_(self.text_token_pos, std=0.02)
        # adaLN-Zero: every residual branch is gated shut and the output map is zero at init.
        for block in self.blocks:
            nn.init.zeros_(block.modulation[1].weight)
            nn.init.zeros_(block.modulation[1].bias)
        for layer in (self.final.modulation[1], self.final.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, h*w, p*p*C) row-major tokens -> (B, C, h*p, w*p) image."""
        b = tokens.shape[0]
        (h, w), p, c = self.grid, self.patch_size, self.out_channels
        x = tokens.reshape(b, h, w, p, p, c)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(b, c, h * p, w * p)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        force_drop_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        check_input(self, x)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed.to(x.dtype)
        c, context = self._conditioning(x, t, y, force_drop_ids)
        n_context = 0 if context is None else context.shape[1]
        if context is not None:
            tokens = torch.cat([context.to(tokens.dtype), tokens], dim=1)
        for block in self.blocks:
            tokens = block(tokens, c)
        return self.unpatchify(self.final(tokens[:, n_context:], c))

    def _conditioning(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None,
        force_drop_ids: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The adaLN condition vector, and for text nets the caption tokens to prepend (else None)."""
        if self.condition != "text":
            return embed_conditions(self.t_embed, self.y_embed, t, y, x, force_drop_ids), None
        b = x.shape[0]
        text = self.text_embed.resolve(y, b, force_drop_ids)
        c = self.t_embed(batch_times(t, b, x.device)) + self.text_embed.pool(text)
        context = self.text_token_proj(text.to(self.text_token_proj.weight.dtype)) + self.text_token_pos
        return c, context


# ----------------------------------------------------------------------------------------------------
# Official DiT checkpoints (facebookresearch/DiT ``models.py`` state dicts)

#: Official key (regular expression) -> this module's key.  Blocks keep their index.
_OFFICIAL_KEYS: tuple[tuple[str, str], ...] = (
    (r"x_embedder\.proj\.(weight|bias)", r"patch_embed.\1"),
    (r"t_embedder\.mlp\.([02])\.(weight|bias)", r"t_embed.mlp.\1.\2"),
    (r"y_embedder\.embedding_table\.weight", r"y_embed.table.weight"),
    (r"blocks\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)", r"blocks.\1.attn.\2.\3"),
    (r"blocks\.(\d+)\.mlp\.fc1\.(weight|bias)", r"blocks.\1.mlp.0.\2"),
    (r"blocks\.(\d+)\.mlp\.fc2\.(weight|bias)", r"blocks.\1.mlp.2.\2"),
    (r"blocks\.(\d+)\.adaLN_modulation\.1\.(weight|bias)", r"blocks.\1.modulation.1.\2"),
    (r"final_layer\.linear\.(weight|bias)", r"final.linear.\1"),
    (r"final_layer\.adaLN_modulation\.1\.(weight|bias)", r"final.modulation.1.\1"),
)


def official_dit_key(key: str) -> str | None:
    """This module's parameter name for a key of an official DiT state dict; None for ``pos_embed``
    (a fixed table here, recomputed and compared instead of loaded).  Unknown keys raise KeyError."""
    if key == "pos_embed":
        return None
    for pattern, target in _OFFICIAL_KEYS:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, target, key)
    raise KeyError(f"{key!r} is not a key of an official DiT state dict")


def load_dit_checkpoint(
    source: str | Path | dict[str, torch.Tensor],
    *,
    num_heads: int | None = None,
    class_dropout: float = 0.1,
) -> DiT:
    """Build a :class:`DiT` from an official DiT checkpoint (Peebles & Xie's released
    ``DiT-XL-2-256x256.pt`` etc., or a ``train.py`` checkpoint, whose ``"ema"`` weights are used).

    The architecture is read from the tensors: depth from the number of blocks, hidden size and patch
    from ``x_embedder.proj.weight`` (hidden, C, p, p), the grid from ``pos_embed`` (1, h*w, hidden),
    square as in DiT, the classes from ``y_embedder.embedding_table`` (num_classes + 1 rows; DiT adds
    the null row whenever its label dropout is on, as every released model has), the MLP ratio and
    the frequency size from the first MLP and timestep layers.  The head count is not stored: it is
    looked up in :data:`DIT_SIZES` by (depth, hidden size), or must be given.

    Learned variance: DiT's released models predict 2C channels, eps and the variance interpolation v
    (Nichol & Dhariwal 2021).  They are **dropped**: the final linear layer keeps the rows of the first
    C channels (its outputs are ordered (p, q, channel), channel fastest, as DiT's ``unpatchify`` reads
    them), so the net predicts eps only and samples with a fixed variance (``sample.ddpm_variance``).

    Every official key must map to a parameter of the same shape and every parameter must be set;
    the checkpoint's ``pos_embed`` must equal :func:`sincos_pos_embed_2d` (it is recomputed, not
    loaded).  Anything else is a ValueError naming the key.  The model is returned in eval mode, with
    ``model_name`` ``"DiT-<size>/<p>"`` when the size is a registered one.
    """
    if isinstance(source, dict):
        state = source
    else:
        from ..io import read_torch

        state = read_torch(source, hint="an official DiT checkpoint")
    if "ema" in state and isinstance(state["ema"], dict):
        state = state["ema"]
    for key in ("x_embedder.proj.weight", "pos_embed", "final_layer.linear.weight"):
        if key not in state:
            raise ValueError(f"not an official DiT state dict: {key!r} is missing")
    hidden, in_channels, patch, _ = state["x_embedder.proj.weight"].shape
    tokens = state["pos_embed"].shape[1]
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"pos_embed has {tokens} tokens, not a square grid")
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    table = state.get("y_embedder.embedding_table.weight")
    num_classes = 0 if table is None else table.shape[0] - 1
    if num_heads is None:
        sizes = {(d, h): (name, heads) for name, (d, h, heads) in DIT_SIZES.items()}
        if (depth, hidden) not in sizes:
            raise ValueError(
                f"DiT checkpoint of depth {depth} and hidden size {hidden} is not a registered size; "
                "give num_heads"
            )
        num_heads = sizes[(depth, hidden)][1]
    net = DiT(
        input_size=side * patch,
        in_channels=in_channels,
        patch_size=patch,
        depth=depth,
        hidden_size=hidden,
        num_heads=num_heads,
        mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / hidden,
        num_classes=num_classes,
        class_dropout=class_dropout,
        frequency_dim=state["t_embedder.mlp.0.weight"].shape[1],
    )
    out_rows = state["final_layer.linear.weight"].shape[0]
    if out_rows == 2 * patch * patch * in_channels:  # learned variance: keep the eps channels
        keep = lambda w: w.reshape(patch * patch, 2 * in_channels, *w.shape[1:])[:, :in_channels]  # noqa: E731
        state = dict(state)
        for name in ("final_layer.linear.weight", "final_layer.linear.bias"):
            w = state[name]
            state[name] = keep(w).reshape(patch * patch * in_channels, *w.shape[1:])
    own = net.state_dict()
    converted = {}
    for key, value in state.items():
        try:
            target = official_dit_key(key)
        except KeyError as err:
            raise ValueError(f"unexpected key in the DiT checkpoint: {err.args[0]}") from None
        if target is None:
            continue
        if target not in own or own[target].shape != value.shape:
            expected = tuple(own[target].shape) if target in own else "no such parameter"
            raise ValueError(
                f"DiT checkpoint key {key!r} has shape {tuple(value.shape)}, {target!r} here is {expected}"
            )
        converted[target] = value
    missing = sorted(set(own) - set(converted))
    if missing:
        raise ValueError(f"the DiT checkpoint sets no value for {', '.join(missing)}")
    net.load_state_dict(converted)
    if not torch.allclose(state["pos_embed"].float().reshape(net.pos_embed.shape), net.pos_embed, atol=1e-5):
        raise ValueError("the DiT checkpoint's pos_embed differs from DiT's 2-D sin-cos table")
    size = next((n for n, (d, h, _) in DIT_SIZES.items() if (d, h) == (depth, hidden)), None)
    if size is not None:
        net.model_name = f"DiT-{size}/{patch}"
    return net.eval()
