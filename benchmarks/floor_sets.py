"""What the real-data floor reads with random and with class-matched real sets: mean and spread of FID.

    python benchmarks/floor_sets.py [--data data/prepared/train.parquet] \
        [--feature-net results/features/feature_net.pt] [--num-samples 500] [--draws 40] [--seed 0]

Needs the outputs of ``prepare_data`` and ``feature_net`` (``snakemake --cores 1
results/features/feature_net.pt``).  From the images the domain classifier never saw it draws ``--draws``
sets of ``--num-samples`` images two ways -- at random, and with the classes a class-conditional sample
set requests (``samplers.requested_classes``: every class equally often) -- and scores each, as
``fid_ref`` / ``evaluate_floor`` do, against the statistics of the other unseen images.  The sets of one
kind overlap across draws, so the spread is that of one set, not of a mean over disjoint ones.  It
prints each kind's mean FID and its standard deviation over the draws.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def floor_readings(features: np.ndarray, labels: np.ndarray, num_samples: int, draws: int, seed: int):
    """FID of ``draws`` random and ``draws`` class-matched sets against the rest of ``features``: each
    draw is ``fid_ref``'s first floor set of both kinds from a fresh permutation of the images."""
    from diffusion_curriculum.distances import feature_stats, frechet_distance
    from diffusion_curriculum.samplers import requested_classes
    from diffusion_curriculum.stages.fid_ref import split_real_images

    rng = np.random.default_rng(seed)
    requested = requested_classes(num_samples, int(labels.max()) + 1)
    readings = {"random": [], "class_matched": []}
    for _ in range(draws):
        pool = rng.permutation(len(labels))
        for kind, plan in (("random", None), ("class_matched", requested)):
            rows, rest = split_real_images(len(labels), num_samples, pool, labels=labels, requested=plan)[0]
            if plan is not None and not np.array_equal(labels[rows], plan):
                raise ValueError(f"too few images of some class for two class-matched sets of {num_samples}")
            readings[kind].append(
                frechet_distance(*feature_stats(features[rows]), *feature_stats(features[rest]))
            )
    return {kind: np.asarray(values) for kind, values in readings.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/prepared/train.parquet", help="prepare_data's images")
    ap.add_argument("--feature-net", default="results/features/feature_net.pt", help="feature_net's model")
    ap.add_argument("--num-samples", type=int, default=500, help="images per set (sample.num_samples)")
    ap.add_argument("--draws", type=int, default=40, help="sets of each kind")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from diffusion_curriculum import data, metrics
    from diffusion_curriculum import features as feature_space

    record = feature_space.load_feature_net(args.feature_net)
    if not record.get("trained"):
        ap.error(f"{args.feature_net} holds no trained domain classifier (features.extractor is not domain)")
    unseen = data.read_parquet(args.data).select(record["held_out"].numpy())
    extractor = feature_space.build_extractor("domain", args.feature_net, "cpu", inception_weights=None)
    features = metrics.extract_features(unseen.images, extractor)
    labels = np.asarray(unseen.labels)
    print(f"{len(labels)} unseen images, classes {np.bincount(labels).tolist()}; sets of {args.num_samples}")
    for kind, values in floor_readings(features, labels, args.num_samples, args.draws, args.seed).items():
        print(f"{kind:>13}: FID {values.mean():.2f}, sd {values.std(ddof=1):.2f} over {len(values)} sets")


if __name__ == "__main__":
    main()
