"""The feature space of the sample-quality metrics, as the ``features`` section configures it.

Shared by feature_net (which trains the ``domain`` classifier), fid_ref and evaluate, so the reference
statistics and every scored sample set go through one and the same extractor.
"""

from __future__ import annotations

from pathlib import Path

from diffusion_curriculum import metrics
from diffusion_curriculum.errors import InputFileError
from diffusion_curriculum.feature_net import FeatureNet
from diffusion_curriculum.io import atomic_torch_save, read_torch

from .params import ParamsError

FEATURE_NET_FORMAT = 1


def save_feature_net(record: dict, path: Path) -> None:
    atomic_torch_save({"format": FEATURE_NET_FORMAT, **record}, path)


def load_feature_net(path: str | Path) -> dict:
    record = read_torch(path, hint="written by the feature_net stage", keys=("format",))
    if record["format"] != FEATURE_NET_FORMAT:
        found = record["format"]
        raise InputFileError(path, f"format {found!r} is not {FEATURE_NET_FORMAT}; rerun feature_net")
    return record


def extractor_name(cfg: dict) -> str:
    """Identifies the feature space; stored with the reference statistics and checked by evaluate."""
    if cfg["extractor"] == "inception":
        return "inception:clean-fid-torchscript"
    return "domain:feature_net"


def build_extractor(cfg: dict, feature_net_path: str | Path, device: str) -> metrics.FeatureExtractor:
    """The configured extractor; it also has ``probs`` (class probabilities) for the Inception Score."""
    if cfg["extractor"] == "inception":
        if not cfg["inception_weights"]:
            raise ParamsError(
                "features.inception_weights: extractor 'inception' needs the local path of "
                f"{metrics.INCEPTION_FILENAME} (clean-fid's weights are never downloaded here)"
            )
        return metrics.inception_extractor(cfg["inception_weights"], device=device)
    record = load_feature_net(feature_net_path)
    if not record["trained"]:
        raise InputFileError(
            feature_net_path,
            f"holds no trained classifier ({record['reason']}); rerun feature_net with "
            "features.extractor: domain",
        )
    net = FeatureNet(**record["kwargs"])
    net.load_state_dict(record["state"])
    return metrics.DomainFeatures(
        net, in_channels=record["kwargs"]["in_channels"], image_size=record["image_size"], device=device
    )
