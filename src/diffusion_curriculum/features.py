"""The feature space of the sample-quality metrics, and the file of the ``domain`` classifier.

Shared by the feature_net stage (which trains the ``domain`` classifier), fid_ref, evaluate and
evaluate_floor, so the reference statistics and every scored set go through one and the same extractor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import metrics
from .errors import InputFileError, SettingError
from .feature_net import FeatureNet
from .io import atomic_torch_save, read_torch

FEATURE_NET_FORMAT = 1
EXTRACTORS = ("inception", "domain")


def save_feature_net(record: dict, path: Path) -> None:
    atomic_torch_save({"format": FEATURE_NET_FORMAT, **record}, path)


def load_feature_net(path: str | Path) -> dict:
    record = read_torch(path, hint="written by the feature_net stage", keys=("format",))
    if record["format"] != FEATURE_NET_FORMAT:
        found = record["format"]
        raise InputFileError(path, f"format {found!r} is not {FEATURE_NET_FORMAT}; rerun feature_net")
    return record


def extractor_name(kind: str) -> str:
    """Identifies the feature space; stored with the reference statistics and checked by evaluate."""
    if kind == "inception":
        return "inception:clean-fid-torchscript"
    return "domain:feature_net"


def check_extractor(path: str | Path, found: str, kind: str) -> None:
    """Statistics in ``path`` were computed in the feature space ``found``; refuse them unless that is the
    space ``kind`` selects (features from two spaces cannot be compared)."""
    expected = extractor_name(kind)
    if str(found) != expected:
        raise InputFileError(path, f"was computed with {found}, but features select {expected}")


def build_extractor(
    kind: str,
    feature_net_path: str | Path,
    device: str,
    *,
    inception_weights: str | None = None,
    setting: str = "inception_weights",
) -> metrics.FeatureExtractor:
    """The extractor ``kind`` (``inception``: clean-fid's network from the local file
    ``inception_weights``; ``domain``: the classifier in ``feature_net_path``); it also has ``probs``
    (class probabilities) for the Inception Score.  ``setting`` names ``inception_weights`` in errors."""
    if kind == "inception":
        if not inception_weights:
            raise SettingError(
                f"{setting}: extractor 'inception' needs the local path of "
                f"{metrics.INCEPTION_FILENAME} (clean-fid's weights are never downloaded here)"
            )
        return metrics.inception_extractor(inception_weights, device=device)
    record = load_feature_net(feature_net_path)
    if not record["trained"]:
        raise InputFileError(
            feature_net_path,
            f"holds no trained classifier ({record['reason']}); rerun feature_net with the domain extractor",
        )
    net = FeatureNet(**record["kwargs"])
    net.load_state_dict(record["state"])
    return metrics.DomainFeatures(
        net, in_channels=record["kwargs"]["in_channels"], image_size=record["image_size"], device=device
    )


def agreement_labels(labels: np.ndarray | None, extractor) -> tuple[np.ndarray | None, str | None]:
    """The requested classes to score class agreement with, or None and why it is not scored."""
    classes = getattr(extractor, "num_classes", None)
    if classes is None:
        return None, "the feature extractor has no logits over the data set's classes (features.extractor)"
    if labels is None or (labels < 0).any():
        return None, "the samples were not drawn for a class (an unconditional or text-conditional model)"
    if labels.max() >= classes:
        return None, f"requested class {int(labels.max())} is not one of the classifier's {classes} classes"
    return labels.astype(np.int64), None
