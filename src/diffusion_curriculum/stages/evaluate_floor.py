"""Stage evaluate_floor: every metric of ``evaluate`` on held-out real images -- the floor.

Reads ``floor.npz`` from fid_ref: disjoint sets of held-out real images, each as large as a sample set
(and, for a class-conditional model, with the classes a sample set requests: ``class_matched``), with the
reference statistics of the other held-out images for each.  Every set is scored like a sample
set against its own reference, and the floor of each metric is the mean over the sets with a 95%
Student-t interval over them: the same form as a method's reading, a mean over seeds with its interval, so
the two can be set side by side.  The sets are disjoint, but each one's reference holds the others, so
the readings are not quite independent; the interval also carries the spread that comes from which
images make the reference, which a method's interval (one reference for every seed) does not, so it errs
wide.  Writes ``floor.json``: ``{metric}``, ``{metric}_low``, ``{metric}_high``, ``class_matched`` and each
set's readings.
"""

from __future__ import annotations

import math

import numpy as np

from diffusion_curriculum import features as feature_space
from diffusion_curriculum import metrics
from diffusion_curriculum.confidence import mean_ci
from diffusion_curriculum.gpu import pick_device
from diffusion_curriculum.io import atomic_write_json, read_npz

from . import _cli, params

REFERENCE_KEYS = ("mu", "sigma", "features")
FLOOR_KEYS = ("images", "labels", "floor_set", "class_matched", "extractor")
FLOOR_KEYS += tuple(f"reference_{key}" for key in REFERENCE_KEYS)
CONFIDENCE = 0.95


def summarize_sets(readings: list[dict[str, float]], confidence: float = CONFIDENCE) -> dict[str, float]:
    """Each metric's mean over the floor sets and the Student-t interval of that mean (``_low``,
    ``_high``); a metric some set lacks is left out."""
    out: dict[str, float] = {}
    for name in readings[0]:
        values = [r[name] for r in readings if name in r]
        if len(values) != len(readings):
            continue
        n, mean, _, half = mean_ci(values, confidence)
        if n != len(values):  # a set whose reading failed: no mean over the others passes for the floor's
            mean = half = math.nan
        out[name] = mean
        if name != "is_std":
            out[f"{name}_low"], out[f"{name}_high"] = mean - half, mean + half
    return out


def main(argv: list[str] | None = None) -> None:
    ap = _cli.parser("evaluate_floor", __doc__)
    ap.add_argument("--floor", required=True, help="floor.npz written by fid_ref")
    ap.add_argument("--feature-net", required=True, help="feature_net.pt written by feature_net")
    ap.add_argument("--out", required=True, help="the metrics JSON to write")
    args = ap.parse_args(argv)
    cfg = params.sections(args.params, "features", "evaluate")
    features, evaluation = cfg["features"], cfg["evaluate"]
    device = pick_device(params.resolve_device(features["device"]))

    floor = read_npz(args.floor, hint="written by fid_ref", keys=FLOOR_KEYS)
    feature_space.check_extractor(args.floor, floor["extractor"], features["extractor"])
    extractor = feature_space.build_extractor(
        features["extractor"], args.feature_net, device, inception_weights=features["inception_weights"],
        setting="features.inception_weights",
    )  # fmt: skip
    requested, no_agreement = feature_space.agreement_labels(floor["labels"], extractor)
    sets = np.unique(floor["floor_set"])
    readings = []
    for i in sets:
        rows = floor["floor_set"] == i
        reference = {key: floor[f"reference_{key}"][i] for key in REFERENCE_KEYS}
        readings.append(
            metrics.compute_metrics(
                None,
                floor["images"][rows],
                extractor,
                probs_fn=extractor.probs,
                reference=reference,
                requested_labels=None if requested is None else requested[rows],
                **params.metric_options(features, evaluation),
            )
        )
    record = {
        **summarize_sets(readings),
        "num_samples": int((floor["floor_set"] == sets[0]).sum()),
        "num_sets": len(sets),
        "class_matched": bool(floor["class_matched"]),
        "num_reference": int(floor["reference_features"].shape[1]),
        "confidence": CONFIDENCE,
        "sets": [{name: float(value) for name, value in r.items()} for r in readings],
        "extractor": feature_space.extractor_name(features["extractor"]),
    }
    if no_agreement:
        record["class_agreement_skipped"] = no_agreement
    atomic_write_json(record, args.out)
    print(
        f"evaluate_floor: FID {record['fid']:.3f} [{record['fid_low']:.3f}, {record['fid_high']:.3f}] over "
        f"{len(sets)} sets of {record['num_samples']} real images -> {args.out}"
    )


if __name__ == "__main__":
    _cli.run(main)
