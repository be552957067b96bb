"""A small classifier of the data set whose penultimate layer is the "domain" feature space for FID.

Inception's features are the standard for natural images, but its weights cannot be downloaded where
the pipeline may run, and for 28x28 digits a classifier trained on the digits themselves measures what
matters (class identity, stroke shape) better.  :class:`FeatureNet` follows the interface that
:class:`diffusion_curriculum.metrics.DomainFeatures` expects: ``features(x)`` for FID / KID /
precision-recall and ``forward(x)`` (logits) for the Inception Score, on inputs in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FeatureNet", "FeatureNetReport", "train_feature_net"]


class FeatureNet(nn.Module):
    """Three conv blocks (conv-GroupNorm-SiLU, stride-2 downsampling), pooling to a 4x4 grid (where a
    stroke is matters for digits, so no global pooling), a ``feature_dim`` embedding and a linear
    classifier."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, feature_dim: int = 128):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a feature net needs a labelled data set with >= 2 classes, got {num_classes}")

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())

        self.body = nn.Sequential(
            block(in_channels, width, 1),
            block(width, 2 * width, 2),
            block(2 * width, 4 * width, 2),
        )
        self.embed = nn.Linear(4 * width * 16, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "width": width,
                       "feature_dim": feature_dim}  # fmt: skip

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.embed(F.adaptive_avg_pool2d(self.body(x), 4).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass
class FeatureNetReport:
    train_accuracy: float
    test_accuracy: float  # on the held-out split, never trained on
    num_train: int
    num_test: int
    test_indices: torch.Tensor  # rows of ``images`` held out, in the split's random order: unseen real images


@torch.no_grad()
def _accuracy(net: FeatureNet, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    net.eval()
    correct = sum(
        int((net(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch)
    )
    return correct / max(len(x), 1)


def train_feature_net(
    images: torch.Tensor,  # (N, C, H, W) in [-1, 1]
    labels: torch.Tensor,  # (N,) class ids
    num_classes: int,
    *,
    epochs: int = 4,
    batch_size: int = 64,
    lr: float = 2e-3,
    test_fraction: float = 0.2,  # held out for the reported test accuracy
    seed: int = 0,
    device: str | torch.device = "cpu",
    **net_kwargs,
) -> tuple[FeatureNet, FeatureNetReport]:
    """Train a :class:`FeatureNet` with AdamW and cross-entropy on a seeded random split."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=g)
    n_test = max(1, int(round(test_fraction * len(images))))
    test_idx, train_idx = order[:n_test], order[n_test:]
    x_train, y_train = images[train_idx].to(device), labels[train_idx].to(device)
    x_test, y_test = images[test_idx].to(device), labels[test_idx].to(device)

    torch.manual_seed(seed)
    net = FeatureNet(images.shape[1], num_classes, **net_kwargs).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
    for _ in range(epochs):
        net.train()
        for batch in torch.randperm(len(x_train), generator=g).split(batch_size):
            loss = F.cross_entropy(net(x_train[batch]), y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    report = FeatureNetReport(
        train_accuracy=_accuracy(net, x_train, y_train),
        test_accuracy=_accuracy(net, x_test, y_test),
        num_train=len(x_train),
        num_test=len(x_test),
        test_indices=test_idx.clone(),
    )
    return net.eval(), report
