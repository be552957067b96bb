"""Sample-quality metrics: FID, KID, Inception Score and improved precision/recall.

Everything here works on in-memory arrays and callables; nothing knows about configuration files or
pipeline paths.

Conventions
-----------
*Images* are uint8 arrays ``(N, H, W)``, ``(N, H, W, 1)`` or ``(N, H, W, 3)`` (NHWC), or floating arrays
of the same shapes holding values in [0, 255].  Grey images are repeated to three channels before any
extractor sees them, as clean-fid does when it opens a grey file as RGB.

A *feature extractor* is a callable ``f(x) -> (N, D)`` taking a float32 tensor ``x`` of shape
``(N, 3, H, W)`` with values in [0, 255] -- exactly what clean-fid passes to a ``custom_feat_extractor``
(``cleanfid.fid.get_batch_features`` calls ``model(batch.to(device))`` and then ``.detach().cpu()
.numpy()`` on the result, so extractors return tensors).  Note that clean-fid itself resizes every image
to 299x299 (PIL bicubic, ``mode="clean"``) *before* calling a custom extractor; :func:`extract_features`
here does not resize, so extractors that need a fixed size resize themselves (both extractors in this
module do).

What comes from clean-fid (``cleanfid`` 0.1.35)
-----------------------------------------------
* :func:`frechet_distance` is ``cleanfid.fid.frechet_distance`` (a local fallback exists only for when
  clean-fid is not importable);
* :func:`kid_from_features` is ``cleanfid.fid.kernel_distance`` (likewise);
* :func:`inception_extractor` is clean-fid's TorchScript Inception-v3 wrapper
  ``cleanfid.inception_torchscript.InceptionV3W`` preceded by clean-fid's ``"clean"`` resizer
  (``cleanfid.resize.build_resizer``), i.e. the model and preprocessing of ``mode="clean"``.

Feature extraction is batched here (:func:`extract_features`), without clean-fid's folder I/O, so
generated samples never need to be written out as image files.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import special
from torch import nn
from torch.nn import functional as F

from .distances import feature_stats, frechet_distance

__all__ = [
    "INCEPTION_FILENAME",
    "CLEANFID_WEIGHTS_DIR",
    "FeatureExtractor",
    "DomainFeatures",
    "InceptionFeatures",
    "inception_extractor",
    "images_to_tensor",
    "extract_features",
    "feature_stats",
    "frechet_distance",
    "class_agreement",
    "kid_from_features",
    "inception_score",
    "precision_recall",
    "reference_stats",
    "compute_metrics",
]

FeatureExtractor = Callable[[torch.Tensor], "torch.Tensor | np.ndarray"]

INCEPTION_FILENAME = "inception-2015-12-05.pt"
# clean-fid's ``feature_extractor("torchscript_inception")`` looks for the weights here (on non-Windows)
# and downloads them from NVIDIA's CDN when they are absent.
CLEANFID_WEIGHTS_DIR = Path("/tmp")


# --------------------------------------------------------------------------------------------------
# Feature extractors
# --------------------------------------------------------------------------------------------------


def inception_extractor(
    weights_path: str | os.PathLike, device: str | torch.device = "cpu"
) -> FeatureExtractor:
    """clean-fid's Inception-v3 pool3 features (2048-d), loaded from a local TorchScript file only.

    ``weights_path`` is the file clean-fid calls ``inception-2015-12-05.pt`` (the StyleGAN2-ADA port of
    the TF-slim Inception used by the original FID of Heusel et al. 2017).  clean-fid's own
    ``build_feature_extractor`` always looks in ``/tmp`` and downloads when the file is missing; here the
    network is built with ``InceptionV3W(folder, download=False)`` instead, so no download is ever
    attempted.  The file is made visible under its canonical name as clean-fid expects: used in place if
    already so named, otherwise symlinked into ``/tmp`` (or, if ``/tmp`` holds a different file of that
    name, into a private temporary folder).

    The returned :class:`InceptionFeatures` applies clean-fid's ``"clean"`` preprocessing -- per-channel
    PIL bicubic resize of the float image to 299x299 (Parmar et al. 2022, "On Aliased Resizing and Surprising
    Subtleties in GAN Evaluation") -- unless the input is already 299x299, then maps [0, 255] to
    [-1, 1] and runs the network (both inside ``InceptionV3W``).

    Raises:
        FileNotFoundError: ``weights_path`` does not exist (the message names it and where clean-fid
            expects the file).
    """
    from cleanfid.inception_torchscript import InceptionV3W

    path = Path(weights_path)
    expected = CLEANFID_WEIGHTS_DIR / INCEPTION_FILENAME
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception weights not found at {path}. clean-fid loads them from {expected} (and would "
            f"download them there, which is not possible offline); copy {INCEPTION_FILENAME} to {expected} "
            "or pass its local path."
        )
    folder = _canonical_weights_folder(path)
    return InceptionFeatures(InceptionV3W(str(folder), download=False, resize_inside=False), device)


class InceptionFeatures:
    """clean-fid's Inception as a feature extractor (pool3, 2048-d) and an IS ``probs_fn`` (1008 classes).

    Both take what clean-fid passes a custom extractor: float ``(N, 3, H, W)`` in [0, 255].  ``probs``
    calls the TorchScript network's own head (``return_features=False``), which returns the softmax over
    the 1008 outputs of the TF Inception that the original Inception Score (Salimans et al. 2016) used.
    """

    def __init__(self, wrapper: nn.Module, device: str | torch.device = "cpu") -> None:
        from cleanfid.resize import build_resizer

        self.model = wrapper.to(device).eval()
        self.device = torch.device(device)
        self._resize = build_resizer("clean")

    def resized(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != (299, 299):
            # clean-fid resizes HWC numpy images one by one; doing the same keeps features identical.
            hwc = x.detach().cpu().permute(0, 2, 3, 1).numpy()
            x = torch.from_numpy(np.stack([self._resize(img) for img in hwc])).permute(0, 3, 1, 2)
        return x.float().to(self.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(self.resized(x))

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model.base(self.resized(x), return_features=False).double()


def _canonical_weights_folder(path: Path) -> Path:
    """A folder in which ``INCEPTION_FILENAME`` is ``path`` (InceptionV3W only accepts a folder)."""
    if path.name == INCEPTION_FILENAME:
        return path.parent
    target = CLEANFID_WEIGHTS_DIR / INCEPTION_FILENAME
    if target.exists() and target.samefile(path):
        return CLEANFID_WEIGHTS_DIR
    if not target.exists() and not target.is_symlink():
        try:
            target.symlink_to(path.resolve())
            return CLEANFID_WEIGHTS_DIR
        except OSError:
            pass  # e.g. a concurrent process created it; fall back to a private folder
    # Never overwrite someone else's /tmp file: a private folder works just as well for InceptionV3W.
    private = Path(tempfile.mkdtemp(prefix="cleanfid-inception-"))
    (private / INCEPTION_FILENAME).symlink_to(path.resolve())
    return private


class DomainFeatures:
    """Adapts a domain classifier into a clean-fid-compatible feature extractor and an IS ``probs_fn``.

    Expected classifier interface (an ``nn.Module``; it is put in eval mode and run without gradients):

    * ``features(x) -> (N, D)`` -- penultimate-layer embedding, the space in which FID/KID/precision/recall
      are measured (the analogue of Inception's pool3 features);
    * ``forward(x) -> (N, K)`` -- class logits, softmaxed here into p(y|x) for the Inception Score;
    * ``x`` is a float tensor ``(N, in_channels, image_size, image_size)`` scaled to [-1, 1] -- the same
      range the diffusion models are trained in.

    The extractor accepts what clean-fid passes: float ``(N, 3, H, W)`` in [0, 255] of any size (299x299
    when called from clean-fid, native size when called from :func:`extract_features`).  For
    ``in_channels == 1`` the three channels are averaged, which recovers grey images exactly because they
    were replicated to RGB; spatial size is matched with antialiased bilinear resizing; finally
    ``x / 127.5 - 1`` maps [0, 255] to [-1, 1].
    """

    def __init__(
        self,
        classifier: nn.Module,
        in_channels: int = 1,
        image_size: int = 28,
        device: str | torch.device = "cpu",
    ) -> None:
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        self.classifier = classifier.to(device).eval()
        # The data set's classes, which class agreement compares with the requested ones.
        self.num_classes = int(classifier.head.out_features) if hasattr(classifier, "head") else None
        self.in_channels = in_channels
        self.image_size = image_size
        self.device = torch.device(device)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Map clean-fid's float ``(N, 3, H, W)`` in [0, 255] to the classifier's input."""
        x = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        if x.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) input as clean-fid passes it, got {tuple(x.shape)}")
        if self.in_channels == 1:
            x = x.mean(dim=1, keepdim=True)
        if tuple(x.shape[2:]) != (self.image_size, self.image_size):
            x = F.interpolate(
                x,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        return x / 127.5 - 1.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(N, D)``: a ``custom_feat_extractor`` for clean-fid or for this module."""
        with torch.no_grad():
            return self.classifier.features(self.prepare(x))

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities p(y|x) = softmax(logits), ``(N, K)``, for :func:`inception_score`."""
        with torch.no_grad():
            return torch.softmax(self.classifier(self.prepare(x)).double(), dim=1)


# --------------------------------------------------------------------------------------------------
# Images -> features
# --------------------------------------------------------------------------------------------------


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8/float NHWC (or NHW) images -> float32 ``(N, 3, H, W)`` in [0, 255], grey repeated to RGB."""
    arr = np.asarray(images)
    if arr.dtype != np.uint8 and not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"images must be uint8 or float in [0, 255], got dtype {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W) or (N, H, W, C) with C in (1, 3), got {arr.shape}")
    x = torch.from_numpy(arr.astype(np.float32, copy=False)).permute(0, 3, 1, 2)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()


def _batched(fn: Callable[[torch.Tensor], Any], images: np.ndarray, batch_size: int) -> np.ndarray:
    out = []
    for start in range(0, len(images), batch_size):
        y = fn(images_to_tensor(images[start : start + batch_size]))
        y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
        out.append(y.reshape(y.shape[0], -1).astype(np.float64))
    return np.concatenate(out, axis=0)


def extract_features(images: np.ndarray, extractor: FeatureExtractor, batch_size: int = 256) -> np.ndarray:
    """Features ``(N, D)`` float64 of ``images`` through ``extractor``, ``batch_size`` images at a time."""
    if len(images) == 0:
        raise ValueError("no images")
    return _batched(extractor, images, batch_size)


# --------------------------------------------------------------------------------------------------
# Metrics on features
# --------------------------------------------------------------------------------------------------


def _kernel_distance_fallback(f1, f2, num_subsets, max_subset_size, rng) -> float:
    d = f1.shape[1]
    m = min(len(f1), len(f2), max_subset_size)
    total = 0.0
    for _ in range(num_subsets):
        x = f2[rng.choice(len(f2), m, replace=False)]
        y = f1[rng.choice(len(f1), m, replace=False)]
        kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        total += within - 2.0 * kxy.mean()
    return float(total / num_subsets)


def kid_from_features(
    feats1: np.ndarray,
    feats2: np.ndarray,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    seed: int = 0,
) -> float:
    """Kernel Inception Distance (Bińkowski et al. 2018, "Demystifying MMD GANs").

    Unbiased estimate of the squared MMD with the cubic polynomial kernel k(x, y) = (x.y / D + 1)^3,

        MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y),

    averaged over ``num_subsets`` random subsets of ``min(N1, N2, max_subset_size)`` samples per side.
    Uses ``cleanfid.fid.kernel_distance``, which draws subsets from NumPy's global generator; that state
    is seeded for reproducibility and restored afterwards so callers' randomness is untouched.
    """
    f1 = np.asarray(feats1, dtype=np.float64)
    f2 = np.asarray(feats2, dtype=np.float64)
    try:
        from cleanfid.fid import kernel_distance
    except ImportError:  # pragma: no cover - clean-fid is a declared dependency
        return _kernel_distance_fallback(f1, f2, num_subsets, max_subset_size, np.random.default_rng(seed))
    # clean-fid uses the legacy global generator, so the legacy API is the only way to make it repeatable.
    saved = np.random.get_state()  # noqa: NPY002
    np.random.seed(seed)  # noqa: NPY002
    try:
        return float(kernel_distance(f1, f2, num_subsets=num_subsets, max_subset_size=max_subset_size))
    finally:
        np.random.set_state(saved)  # noqa: NPY002


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016, "Improved Techniques for Training GANs").

        IS = exp( E_x KL( p(y|x) || p(y) ) ),   p(y) = E_x p(y|x),

    computed on each of ``splits`` contiguous chunks of ``probs`` (N, K); returns (mean, std) over chunks.
    It ranges from 1 (every sample gets the same prediction) to K (confident and class-balanced).
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or len(p) < splits:
        raise ValueError(f"need (N >= splits, K) probabilities, got {p.shape} with splits={splits}")
    scores = []
    for chunk in np.array_split(p, splits):
        marginal = chunk.mean(axis=0, keepdims=True)
        # rel_entr(p, q) = p log(p / q) with 0 log 0 = 0, so one-hot rows need no epsilon.
        kl = special.rel_entr(chunk, marginal).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def _kth_nn_radii(feats: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest *other* point of the same set."""
    radii = []
    for start in range(0, len(feats), chunk):
        d = torch.cdist(feats[start : start + chunk], feats)
        # The smallest distance is the point to itself, so the k-th neighbour is the (k+1)-th smallest.
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _coverage(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> float:
    """Fraction of ``queries`` inside at least one ball B(centre_i, radius_i)."""
    inside = 0
    for start in range(0, len(queries), chunk):
        d = torch.cdist(queries[start : start + chunk], centres)
        inside += int((d <= radii[None, :]).any(dim=1).sum())
    return inside / len(queries)


def precision_recall(
    real_feats: np.ndarray, fake_feats: np.ndarray, k: int = 3, chunk: int = 1024
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, NeurIPS).

    Each set's manifold is the union of balls around its points with radius the distance to the point's
    k-th nearest neighbour in the same set, manifold(S) = U_{s in S} B(s, NN_k(s)); then

        precision = |{fake in manifold(real)}| / N_fake,   recall = |{real in manifold(fake)}| / N_real.

    Distances are computed with ``torch.cdist`` in float64 on ``chunk`` query rows at a time, so memory is
    O(chunk * N) -- 10k x 10k needs about 80 MB per chunk of 1024.  A set compared with itself gives
    exactly 1 / 1 (every point lies in its own ball).
    """
    real = torch.as_tensor(np.asarray(real_feats, dtype=np.float64))
    fake = torch.as_tensor(np.asarray(fake_feats, dtype=np.float64))
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"need more than k={k} samples per set, got {len(real)} real and {len(fake)} fake")
    real_radii = _kth_nn_radii(real, k, chunk)
    fake_radii = _kth_nn_radii(fake, k, chunk)
    precision = _coverage(fake, real, real_radii, chunk)
    recall = _coverage(real, fake, fake_radii, chunk)
    return precision, recall


# --------------------------------------------------------------------------------------------------
# Top level
# --------------------------------------------------------------------------------------------------


def reference_stats(
    real_images: np.ndarray, extractor: FeatureExtractor, batch_size: int = 256
) -> dict[str, np.ndarray]:
    """Cacheable statistics of the reference set: ``{"mu", "sigma", "features"}``.

    FID needs only mu/sigma, but KID and precision/recall need the features themselves, so they are kept
    (save with ``np.savez`` and pass the loaded mapping to :func:`compute_metrics` as ``reference``).
    """
    feats = extract_features(real_images, extractor, batch_size)
    mu, sigma = feature_stats(feats)
    return {"mu": mu, "sigma": sigma, "features": feats}


def class_agreement(probs: np.ndarray, requested: np.ndarray) -> float:
    """The share of samples that a classifier of the data set assigns to the class they were drawn for.

    ``probs`` (N, K) are the classifier's p(y|x) (or logits: only the argmax matters) and ``requested``
    (N,) the class each sample was conditioned on.  1 means every sample shows its class; a model that
    ignores its condition scores about the share of the most frequent predicted class among the requested
    ones (1/K for balanced requests): chance, not zero.
    """
    probs = np.asarray(probs)
    requested = np.asarray(requested)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probs must be (N, K) with K >= 2 classes, got shape {probs.shape}")
    if requested.shape != (probs.shape[0],):
        raise ValueError(
            f"requested must hold one class per sample, shape ({probs.shape[0]},), got {requested.shape}"
        )
    if requested.size == 0:
        raise ValueError("class agreement needs at least one sample")
    if (
        not np.issubdtype(requested.dtype, np.integer)
        or requested.min() < 0
        or requested.max() >= probs.shape[1]
    ):
        raise ValueError(
            f"requested classes must be integers in [0, {probs.shape[1] - 1}] (the classifier's classes), "
            f"got values in [{requested.min()}, {requested.max()}] of dtype {requested.dtype}"
        )
    return float((probs.argmax(axis=1) == requested).mean())


def compute_metrics(
    real_images: np.ndarray | None,
    fake_images: np.ndarray,
    extractor: FeatureExtractor,
    probs_fn: Callable[[torch.Tensor], Any] | None = None,
    k: int = 3,
    batch_size: int = 256,
    reference: dict[str, np.ndarray] | None = None,
    is_splits: int = 10,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    requested_labels: np.ndarray | None = None,
) -> dict[str, float]:
    """FID, KID, precision and recall of ``fake_images`` against the reference, plus IS if ``probs_fn``
    and :func:`class_agreement` if also ``requested_labels`` (the class each sample was drawn for; the
    classifier behind ``probs_fn`` must know the data set's classes).

    The reference is either ``real_images`` or precomputed ``reference`` statistics from
    :func:`reference_stats` (computed with the same ``extractor``); ``real_images`` is ignored when
    ``reference`` is given.  ``probs_fn`` takes the same input as ``extractor`` and returns p(y|x) (N, K),
    e.g. :meth:`DomainFeatures.probs`.

    Returns ``{"fid", "kid", "precision", "recall"}`` and, with ``probs_fn``, ``"is_mean"``/``"is_std"``
    (and ``"class_agreement"``).
    """
    if reference is None:
        if real_images is None:
            raise ValueError("give real_images or precomputed reference statistics")
        reference = reference_stats(real_images, extractor, batch_size)
    fake_feats = extract_features(fake_images, extractor, batch_size)
    mu, sigma = feature_stats(fake_feats)
    real_feats = np.asarray(reference["features"], dtype=np.float64)
    precision, recall = precision_recall(real_feats, fake_feats, k=k)
    out = {
        "fid": frechet_distance(reference["mu"], reference["sigma"], mu, sigma),
        "kid": kid_from_features(
            real_feats, fake_feats, num_subsets=kid_subsets, max_subset_size=kid_subset_size, seed=seed
        ),
        "precision": precision,
        "recall": recall,
    }
    if requested_labels is not None and probs_fn is None:
        raise ValueError("requested_labels need a probs_fn: class agreement is read off a classifier")
    if probs_fn is not None:
        probs = _batched(probs_fn, fake_images, batch_size)
        out["is_mean"], out["is_std"] = inception_score(probs, is_splits)
        if requested_labels is not None:
            out["class_agreement"] = class_agreement(probs, requested_labels)
    return out
