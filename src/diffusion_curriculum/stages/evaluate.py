"""Stage evaluate[method, seed, step]: FID, KID, IS, precision/recall and class agreement of one sample set.

Writes one small JSON of metrics (a DVC metric) against the cached reference statistics of fid_ref, in
the same feature space (the extractor's name stored with the reference is checked).  Class agreement
(the share of samples the domain classifier assigns to the requested class) needs class-conditional samples
and the domain classifier; otherwise the JSON says why it is missing (``class_agreement_skipped``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffusion_curriculum import features as feature_space
from diffusion_curriculum import metrics
from diffusion_curriculum.errors import InputFileError
from diffusion_curriculum.gpu import pick_device
from diffusion_curriculum.io import atomic_write_json, read_json, read_npz

from . import _cli, params


def load_samples(path: str | Path) -> tuple[np.ndarray, np.ndarray | None, dict]:
    path = Path(path)
    arrays = read_npz(path, hint="written by the sample stage", keys=("images",))
    images, labels = arrays["images"], arrays.get("labels")
    if images.dtype != np.uint8 or images.ndim != 4:
        raise InputFileError(
            path,
            f"expected uint8 NHWC images, got {images.dtype} of shape {images.shape} "
            "(latent samples must be decoded before they can be scored)",
        )
    settings_file = path.with_name("settings.json")
    settings = read_json(settings_file) if settings_file.is_file() else {}
    return images, labels, settings


def load_reference(path: str | Path, extractor_kind: str) -> dict[str, np.ndarray]:
    reference = read_npz(path, hint="written by fid_ref", keys=("extractor", "features"))
    feature_space.check_extractor(path, reference.pop("extractor"), extractor_kind)
    return reference


def main(argv: list[str] | None = None) -> None:
    ap = _cli.parser("evaluate", __doc__)
    ap.add_argument("--samples", required=True, help="samples.npz written by sample")
    ap.add_argument("--reference", required=True, help="reference.npz written by fid_ref")
    ap.add_argument("--feature-net", required=True, help="feature_net.pt written by feature_net")
    ap.add_argument("--out", required=True, help="the metrics JSON to write")
    args = ap.parse_args(argv)
    cfg = params.sections(args.params, "features", "evaluate")
    features, evaluation = cfg["features"], cfg["evaluate"]
    device = pick_device(params.resolve_device(features["device"]))

    images, labels, settings = load_samples(args.samples)
    reference = load_reference(args.reference, features["extractor"])
    extractor = feature_space.build_extractor(
        features["extractor"], args.feature_net, device, inception_weights=features["inception_weights"],
        setting="features.inception_weights",
    )  # fmt: skip
    requested, no_agreement = feature_space.agreement_labels(labels, extractor)
    scores = metrics.compute_metrics(
        None,
        images,
        extractor,
        probs_fn=extractor.probs,
        reference=reference,
        requested_labels=requested,
        **params.metric_options(features, evaluation),
    )
    record = {
        **{name: float(value) for name, value in scores.items()},
        "num_samples": int(len(images)),
        "num_reference": int(len(reference["features"])),
        "method": settings.get("method"),
        "seed": settings.get("train_seed"),
        "step": settings.get("model_step"),
        # Stitched samples (stitch_eval): the expert's interval; the fields above describe the base run.
        "stitched_interval": (settings.get("expert") or {}).get("index"),
        "extractor": feature_space.extractor_name(features["extractor"]),
    }
    if no_agreement:
        record["class_agreement_skipped"] = no_agreement
    atomic_write_json(record, args.out)
    summary = f"FID {record['fid']:.3f}, IS {record['is_mean']:.3f} ({len(images)} samples)"
    if "class_agreement" in record:
        summary += f", class agreement {record['class_agreement']:.3f}"
    print(f"evaluate: {summary} -> {args.out}")


if __name__ == "__main__":
    _cli.run(main)
