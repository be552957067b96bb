"""A compact convolutional UNet denoiser in the style of DDPM (Ho et al. 2020, arXiv:2006.11239) and
ADM (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis", arXiv:2105.05233).

Structure: 3x3 input conv; per resolution level ``num_res_blocks`` residual blocks (optionally
followed by self-attention) then a stride-2 downsampling; a middle res/attention/res stack; a
mirrored decoder whose blocks take the concatenated encoder skips; GroupNorm-SiLU-conv output.

The time (and class) embedding enters every residual block as an ADM-style scale-shift FiLM
(``norm(h) * (1 + scale) + shift``).  As in ADM, the last conv of each residual block, each attention
output projection and the output conv start at zero, so each block starts as the identity and the
network starts by predicting zeros.

Text conditioning (``text_dim > 0``) uses the pooled path only: the mean caption embedding, through
:class:`~.layers.TextEmbedder`, is added to the time embedding like a class embedding.  There is no
cross-attention to caption tokens, so a token sequence conditions this network only through its mean
(the DiT also attends to the tokens themselves).

Every downsampling halves the size exactly, so the input size must be divisible by
``2 ** (len(channel_mult) - 1)``: 28x28 works with three levels (28 -> 14 -> 7), but not with the
four of ``UNet-base`` -- that raises a ValueError naming the size (no silent padding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import LabelEmbedder, TextEmbedder, TimestepEmbedder, check_input, condition_of, embed_conditions

__all__ = ["UNET_CONFIGS", "UNet"]

# Named configurations.  "small" is sized for CPU training on 28x28 / 32x32 images; "base" follows
# the DDPM CIFAR-10 network (128 channels, multipliers 1,2,2,2, two blocks, attention at 16x16).
UNET_CONFIGS: dict[str, dict] = {
    "small": {
        "base_channels": 32,
        "channel_mult": (1, 2, 2),
        "num_res_blocks": 1,
        "attention_levels": (2,),
        "dropout": 0.0,
        "norm_groups": 8,
    },
    "base": {
        "base_channels": 128,
        "channel_mult": (1, 2, 2, 2),
        "num_res_blocks": 2,
        "attention_levels": (1,),
        "dropout": 0.1,
        "norm_groups": 32,
    },
}


def _group_norm(channels: int, max_groups: int) -> nn.GroupNorm:
    # The largest group count <= max_groups that divides the channels, so any width is accepted.
    groups = max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, FiLM by the embedding, GroupNorm-SiLU-dropout-conv, plus a skip path."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, norm_groups: int):
        super().__init__()
        self.norm1 = _group_norm(in_ch, norm_groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_ch))
        self.norm2 = _group_norm(out_ch, norm_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Spatial multi-head self-attention over all H*W positions, residual, via fused SDPA."""

    def __init__(self, channels: int, head_dim: int, norm_groups: int):
        super().__init__()
        # Fall back to a single head when the width is not a multiple of head_dim.
        self.num_heads = channels // head_dim if channels % head_dim == 0 else 1
        self.norm = _group_norm(channels, norm_groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        # (B, heads, HW, head_dim) each
        q, k, v = qkv.transpose(-1, -2).unbind(dim=1)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv (avoids the checkerboard of transposed convs)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """Convolutional UNet denoiser: ``net(x (B,C,H,W), t (B,), y | None, *, force_drop_ids) -> (B,C,H,W)``.

    Args:
        input_size: spatial size H (= W), or an ``(H, W)`` pair; must be divisible by
            ``2 ** (len(channel_mult) - 1)``.
        in_channels: image/latent channels C (output has the same number).
        base_channels: width of the first level; level i has ``base_channels * channel_mult[i]``.
        num_res_blocks: residual blocks per encoder level (the decoder has one more, for the
            skip from each downsampling).
        attention_levels: indices of the levels that get self-attention after each res block; the
            middle block always has attention.
        attention_head_dim: channels per attention head.
        dropout: dropout inside residual blocks.
        norm_groups: maximum GroupNorm group count.
        num_classes / class_dropout: as for :class:`~diffusion_curriculum.models.dit.DiT`.
        text_dim / text_tokens / text_null: as for the DiT, but only the pooled caption is used (module
            docstring).
    """

    def __init__(
        self,
        *,
        input_size: int | tuple[int, int],
        in_channels: int,
        base_channels: int = 32,
        channel_mult: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_levels: tuple[int, ...] = (2,),
        attention_head_dim: int = 32,
        dropout: float = 0.0,
        norm_groups: int = 32,
        num_classes: int = 0,
        class_dropout: float = 0.1,
        text_dim: int = 0,
        text_tokens: int = 1,
        text_null: torch.Tensor | None = None,
    ):
        super().__init__()
        height, width = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        factor = 2 ** (len(channel_mult) - 1)
        if height % factor or width % factor:
            raise ValueError(
                f"UNet with {len(channel_mult)} levels downsamples by {factor}, so the input size must be "
                f"divisible by {factor}; got {height}x{width}. Use fewer levels (e.g. channel_mult=(1, 2, 2) "
                f"for 28x28) or resize/pad the data."
            )
        if any(not 0 <= i < len(channel_mult) for i in attention_levels):
            raise ValueError(
                f"attention_levels {attention_levels} out of range for {len(channel_mult)} levels"
            )
        self.condition = condition_of(num_classes, text_dim, text_null)
        self.input_size = (height, width)
        self.in_channels = in_channels
        self.out_channels = in_channels
        self.num_classes = num_classes
        # Always num_classes, the label y=None stands for; callers written before force_drop_ids pass it.
        self.null_class = num_classes

        emb_dim = 4 * base_channels
        self.t_embed = TimestepEmbedder(emb_dim)
        self.y_embed = LabelEmbedder(num_classes, emb_dim, class_dropout) if num_classes > 0 else None
        if self.condition == "text":
            self.text_embed = TextEmbedder(text_dim, emb_dim, text_tokens, class_dropout, text_null)

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, dropout, norm_groups)

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, attention_head_dim, norm_groups)

        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        # Encoder: each entry is (res block, attention or Identity) or a Downsample.  skip_channels
        # records what every step pushes onto the skip stack, for the decoder to consume in reverse.
        self.down = nn.ModuleList()
        skip_channels = [base_channels]
        ch = base_channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                out = base_channels * mult
                self.down.append(
                    nn.ModuleList([res(ch, out), attn(out) if level in attention_levels else nn.Identity()])
                )
                ch = out
                skip_channels.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(Downsample(ch))
                skip_channels.append(ch)

        self.mid = nn.ModuleList([res(ch, ch), attn(ch), res(ch, ch)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                out = base_channels * mult
                block = res(ch + skip_channels.pop(), out)
                self.up.append(
                    nn.ModuleList([block, attn(out) if level in attention_levels else nn.Identity()])
                )
                ch = out
            if level > 0:
                self.up.append(Upsample(ch))
        assert not skip_channels, "every encoder skip must be consumed by the decoder"

        self.norm_out = _group_norm(ch, norm_groups)
        self.conv_out = nn.Conv2d(ch, self.out_channels, 3, padding=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch default init, then zero the residual-branch ends and the output (ADM)."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear, nn.Embedding, nn.GroupNorm)):
                module.reset_parameters()
        for module in self.modules():
            if isinstance(module, ResBlock):
                zero = module.conv2
            elif isinstance(module, AttentionBlock):
                zero = module.proj
            else:
                continue
            nn.init.zeros_(zero.weight)
            nn.init.zeros_(zero.bias)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        if self.condition == "text":
            self.text_embed.reset_null()

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        force_drop_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        check_input(self, x)
        cond_embed = self.text_embed if self.condition == "text" else self.y_embed
        emb = embed_conditions(self.t_embed, cond_embed, t, y, x, force_drop_ids)

        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = layer(h) if isinstance(layer, Downsample) else self._res_attn(layer, h, emb)
            skips.append(h)

        h = self.mid[0](h, emb)
        h = self.mid[1](h)
        h = self.mid[2](h, emb)

        for layer in self.up:
            if isinstance(layer, Upsample):
                h = layer(h)
            else:
                h = self._res_attn(layer, torch.cat([h, skips.pop()], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))

    @staticmethod
    def _res_attn(pair: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        block, attention = pair
        return attention(block(h, emb))
