"""Official DiT checkpoints built from their definition (facebookresearch/DiT ``models.py``): key names,
shapes and the 2-D sin-cos position embedding, for the loader and ``sample --weights`` tests."""

from __future__ import annotations

import numpy as np
import torch


def dit_reference_pos_embed(dim: int, size: int) -> np.ndarray:
    """DiT's get_2d_sincos_pos_embed from its definition: np.meshgrid(w, h) (w first), the first half
    of the channels from grid[0] (the column), the second from grid[1] (the row), each half sin | cos
    of pos * 10000^(-k / (dim/4))."""
    grid = np.stack(np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32)))

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        angles = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)


def official_state(depth=2, hidden=64, patch=2, channels=4, grid=4, classes=10, learn_sigma=True):
    """A state dict with DiT's key names and shapes (models.py of facebookresearch/DiT), random values."""
    g = torch.Generator().manual_seed(3)
    out = channels * (2 if learn_sigma else 1)
    shapes = {
        "x_embedder.proj.weight": (hidden, channels, patch, patch),
        "x_embedder.proj.bias": (hidden,),
        "t_embedder.mlp.0.weight": (hidden, 256),
        "t_embedder.mlp.0.bias": (hidden,),
        "t_embedder.mlp.2.weight": (hidden, hidden),
        "t_embedder.mlp.2.bias": (hidden,),
        "y_embedder.embedding_table.weight": (classes + 1, hidden),
        "final_layer.linear.weight": (patch * patch * out, hidden),
        "final_layer.linear.bias": (patch * patch * out,),
        "final_layer.adaLN_modulation.1.weight": (2 * hidden, hidden),
        "final_layer.adaLN_modulation.1.bias": (2 * hidden,),
    }
    for i in range(depth):
        shapes |= {
            f"blocks.{i}.attn.qkv.weight": (3 * hidden, hidden),
            f"blocks.{i}.attn.qkv.bias": (3 * hidden,),
            f"blocks.{i}.attn.proj.weight": (hidden, hidden),
            f"blocks.{i}.attn.proj.bias": (hidden,),
            f"blocks.{i}.mlp.fc1.weight": (4 * hidden, hidden),
            f"blocks.{i}.mlp.fc1.bias": (4 * hidden,),
            f"blocks.{i}.mlp.fc2.weight": (hidden, 4 * hidden),
            f"blocks.{i}.mlp.fc2.bias": (hidden,),
            f"blocks.{i}.adaLN_modulation.1.weight": (6 * hidden, hidden),
            f"blocks.{i}.adaLN_modulation.1.bias": (6 * hidden,),
        }
    state = {k: torch.randn(shape, generator=g) * 0.05 for k, shape in shapes.items()}
    state["pos_embed"] = torch.from_numpy(dit_reference_pos_embed(hidden, grid)).float()[None]
    return state
