"""Stage fid_ref: reference statistics of the real data in the metrics' feature space, and the floor sets.

Writes ``reference.npz`` (``mu``, ``sigma`` and the ``features`` that KID and precision/recall need, plus
the extractor's name), ``reference.json`` (what went in) and ``floor.npz``: up to five disjoint sets of
held-out real images with their labels, each as large as a sample set (``sample.num_samples``) and, for a
class-conditional model (``model.condition``), holding the classes a sample set requests; for each set,
the reference statistics of the other held-out images.  Scored like samples (``evaluate_floor``), they
give every metric's floor: what the metric reads for real data at this sample count, as a mean over the
sets with an interval over them, as the methods' readings have over seeds.  Set 0's reference is
``reference.npz``, the one every sample set is scored against.  With the domain extractor all of them come
from the split its classifier never trained on (:func:`split_real_images`), so neither the statistics nor
the class agreement have seen them.  This stage reads ``features``, ``sample.num_samples`` and
``model.condition`` only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from diffusion_curriculum import data, metrics, samplers
from diffusion_curriculum import features as feature_space
from diffusion_curriculum.errors import InputFileError
from diffusion_curriculum.gpu import pick_device
from diffusion_curriculum.io import atomic_savez, atomic_write_json

from . import _cli, params

REFERENCE_SUBSET_SEED = 0  # the same real images every time, whatever other seeds say
MAX_FLOOR_SETS = 5  # a Student-t interval over five sets is 1.24 standard deviations wide; more add little


def split_real_images(
    num_images: int,
    num_floor: int,
    held_out: np.ndarray | None,
    *,
    labels: np.ndarray | None = None,
    requested: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(floor_rows, reference_rows)`` of the prepared images for each floor set: the floor sets are
    disjoint, each of ``num_floor`` rows, and each set's reference is every other image of the pool, so
    all references are equally large and each is disjoint from its floor.  As many sets as the pool holds
    beside one reference (at most :data:`MAX_FLOOR_SETS`); a pool smaller than twice ``num_floor`` gives
    two sets of half the pool, each the other's reference.

    With a domain classifier the pool is the split it never trained on: its features of the images it
    was fit to are not those of new images (tighter, more confident), so statistics of seen images would
    read every new image -- a sample or a held-out real one -- as farther from the data than it is.
    Without a classifier: a fixed random permutation of all images.  A floor set keeps the split's random
    order (metrics that read contiguous chunks, like IS, see mixed classes, as in a sample set).

    With ``requested`` (the class each row of a sample set asks for) and the images' ``labels``, each
    floor set is drawn to the samples' plan instead: row i is an image of class ``requested[i]``, as a
    perfect class-conditional model would give.  Random sets would carry the spread of their class
    counts, which a sample set has not, and read high (see :func:`class_matched_sets`).
    """
    pool = _pool(num_images, held_out)
    if requested is not None and labels is not None:
        matched = class_matched_sets(pool, np.asarray(labels)[pool], np.asarray(requested))
        if matched:
            return matched
        print(
            f"fid_ref: the {len(pool)} real images hold fewer than two sets with the classes of a sample "
            "set; the floor sets are drawn without regard to class",
            file=sys.stderr,
        )
    return _random_sets(pool, num_floor)


def class_matched_sets(
    pool: np.ndarray, pool_labels: np.ndarray, requested: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(floor_rows, reference_rows)`` for disjoint floor sets whose row i holds an image of class
    ``requested[i]`` (each class's images taken in the pool's order), each with the rest of the pool as
    its reference; as many as every class can fill, at most :data:`MAX_FLOOR_SETS`.  Empty when fewer
    than two fit.

    On the default's digits (2,500 unseen images, sets of 500), random sets read FID 8.8 with a standard
    deviation of 2.0 over 40 draws, sets of 50 images per class 5.5 with 0.8
    (``benchmarks/floor_sets.py``): in a classifier's feature space much of a random set's FID is the
    imbalance of its classes.
    """
    need = np.bincount(requested)
    by_class = [pool[pool_labels == c] for c in range(len(need))]
    fits = min(len(by_class[c]) // need[c] for c in range(len(need)) if need[c])
    num_sets = min(MAX_FLOOR_SETS, fits)
    if num_sets < 2:
        return []
    sets = []
    for i in range(num_sets):
        rows = np.empty(len(requested), dtype=np.int64)
        for c in np.flatnonzero(need):
            rows[requested == c] = by_class[c][i * need[c] : (i + 1) * need[c]]
        sets.append((rows, np.sort(np.setdiff1d(pool, rows))))
    return sets


def _pool(num_images: int, held_out: np.ndarray | None) -> np.ndarray:
    """The images the floor and the reference come from: the classifier's unseen split, else all."""
    pool = (
        np.asarray(held_out, dtype=np.int64)
        if held_out is not None
        else np.random.default_rng(REFERENCE_SUBSET_SEED).permutation(num_images)
    )
    if len(pool) < 2:
        raise params.ParamsError(
            f"{len(pool)} real images are left for the floor and the reference statistics "
            "(features.domain.test_fraction, or the data set's size): at least 2 are needed"
        )
    return pool


def _random_sets(pool: np.ndarray, num_floor: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Disjoint runs of ``num_floor`` rows of ``pool`` in its order, each with the rest as reference."""
    if len(pool) < 2 * num_floor:
        # Paper-scale sets (50K samples of CIFAR-10's 50K images) cannot hold out as many: the floor
        # then has fewer images than a sample set, and since FID falls with N it reads high -- an
        # upper bound of the floor (the report says so).
        used = len(pool) // 2
        print(
            f"fid_ref: only {len(pool)} real images for the floor and the reference: each floor set gets "
            f"{used} (sample.num_samples is {num_floor}) and reads as an upper bound",
            file=sys.stderr,
        )
        num_floor = used
    num_sets = min(MAX_FLOOR_SETS, len(pool) // num_floor)
    sets = []
    for i in range(num_sets):
        rows = np.arange(i * num_floor, (i + 1) * num_floor)
        sets.append((pool[rows], np.sort(np.delete(pool, rows))))
    return sets


def main(argv: list[str] | None = None) -> None:
    ap = _cli.parser("fid_ref", __doc__)
    ap.add_argument("--data", required=True, help="train.parquet written by prepare_data")
    ap.add_argument("--feature-net", required=True, help="feature_net.pt written by feature_net")
    ap.add_argument("--out-dir", required=True, help="reference.npz, reference.json, floor.npz go here")
    args = ap.parse_args(argv)
    cfg_all = params.sections(args.params, "features", "sample", "model")
    cfg, num_floor = cfg_all["features"], cfg_all["sample"]["num_samples"]
    device = pick_device(params.resolve_device(cfg["device"]))

    dataset = data.read_parquet(args.data)
    if dataset.kind != data.PIXELS:
        raise InputFileError(args.data, f"holds {dataset.kind}; reference statistics need pixel images")
    record = feature_space.load_feature_net(args.feature_net)
    held_out = record["held_out"].numpy() if record.get("trained") else None
    by_class = cfg_all["model"]["condition"] == "class" and dataset.labeled
    requested = samplers.requested_classes(num_floor, dataset.num_classes) if by_class else None
    sets = split_real_images(len(dataset), num_floor, held_out, labels=dataset.labels, requested=requested)
    class_matched = requested is not None and all(
        np.array_equal(dataset.labels[rows], requested) for rows, _ in sets
    )
    extractor = feature_space.build_extractor(
        cfg["extractor"], args.feature_net, device, inception_weights=cfg["inception_weights"],
        setting="features.inception_weights",
    )  # fmt: skip
    floors, reals, references = [], [], []
    for floor_rows, reference_rows in sets:
        floors.append(dataset.select(floor_rows))
        reference = dataset.select(reference_rows)
        reals.append(data.subset(reference, cfg["reference_images"], seed=REFERENCE_SUBSET_SEED))
        references.append(metrics.reference_stats(reals[-1].images, extractor, batch_size=cfg["batch_size"]))
    stats, real = references[0], reals[0]  # the reference every sample set is scored against

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = feature_space.extractor_name(cfg["extractor"])
    atomic_savez(out / "reference.npz", extractor=np.array(name), **stats)
    atomic_savez(
        out / "floor.npz",
        images=np.concatenate([f.images for f in floors]),
        labels=np.concatenate([f.labels for f in floors]),  # -1 when unlabeled
        floor_set=np.repeat(np.arange(len(floors)), [len(f) for f in floors]),
        class_matched=np.array(class_matched),
        extractor=np.array(name),
        **{f"reference_{key}": np.stack([r[key] for r in references]) for key in ("mu", "sigma", "features")},
    )
    atomic_write_json(
        {
            "extractor": name,
            "num_images": len(real),
            "num_floor_images": len(floors[0]),
            "num_floor_sets": len(floors),
            "floor_from": "the domain classifier's held-out split" if held_out is not None else "all images",
            "floor_classes": "those a sample set requests" if class_matched else "as drawn",
            "feature_dim": int(stats["features"].shape[1]),
            "data_sha256": data.content_hash(real),
        },
        out / "reference.json",
    )
    print(
        f"fid_ref: {len(real)} real images, {stats['features'].shape[1]}-d {name} features; "
        f"{len(floors)} floor sets of {len(floors[0])} held-out images -> {out}"
    )


if __name__ == "__main__":
    _cli.run(main)
