"""Stage fid_ref: reference statistics of the real data in the metrics' feature space, and the floor set.

Writes ``reference.npz`` (``mu``, ``sigma`` and the ``features`` that KID and precision/recall need, plus
the extractor's name), ``reference.json`` (what went in) and ``floor.npz``: as many held-out real images
as a sample set has (``sample.num_samples``), with their labels, in the layout of ``samples.npz``.
Scored like samples (``evaluate_floor``), they give every metric's floor: what the metric reads for real
data at this sample count.  The floor images are left out of the reference statistics and, with the
domain extractor, come from the split its classifier never trained on, so neither the statistics nor
the class agreement have seen them.  This stage reads ``features`` and ``sample.num_samples`` only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffusion_curriculum import data, metrics
from diffusion_curriculum.io import atomic_path, atomic_write_json

from . import _cli, _features, gpu, params

REFERENCE_SUBSET_SEED = 0  # the same real images every time, whatever other seeds say


def floor_indices(num_images: int, num_floor: int, held_out: np.ndarray | None) -> np.ndarray:
    """Rows of the prepared images that form the floor set: the first ``num_floor`` of the classifier's
    held-out split, or (no classifier) of a fixed random permutation."""
    if held_out is not None:
        if num_floor > len(held_out):
            raise params.ParamsError(
                f"sample.num_samples = {num_floor} exceeds the {len(held_out)} real images the domain "
                "classifier held out (features.domain.test_fraction); the floor needs as many unseen real "
                "images as a sample set has: raise test_fraction or lower sample.num_samples"
            )
        return np.asarray(held_out[:num_floor], dtype=np.int64)
    if num_floor >= num_images:
        raise params.ParamsError(
            f"sample.num_samples = {num_floor} leaves no real images for the reference statistics "
            f"({num_images} prepared images); lower sample.num_samples"
        )
    return np.random.default_rng(REFERENCE_SUBSET_SEED).permutation(num_images)[:num_floor]


def main(argv: list[str] | None = None) -> None:
    ap = _cli.parser(__doc__)
    ap.add_argument("--data", required=True, help="train.parquet written by prepare_data")
    ap.add_argument("--feature-net", required=True, help="feature_net.pt written by feature_net")
    ap.add_argument("--out-dir", required=True, help="reference.npz, reference.json, floor.npz go here")
    args = ap.parse_args(argv)
    cfg_all = params.sections(args.params, "features", "sample")
    cfg, num_floor = cfg_all["features"], cfg_all["sample"]["num_samples"]
    device = gpu.pick_device(params.resolve_device(cfg["device"]))

    dataset = data.read_parquet(args.data)
    if dataset.kind != data.PIXELS:
        raise ValueError(f"{args.data} holds {dataset.kind}; reference statistics need pixel images")
    record = _features.load_feature_net(args.feature_net)
    held_out = record["held_out"].numpy() if record.get("trained") else None
    floor_rows = np.sort(floor_indices(len(dataset), num_floor, held_out))
    rest = np.setdiff1d(np.arange(len(dataset)), floor_rows)
    floor = dataset.select(floor_rows)
    real = data.subset(dataset.select(rest), cfg["reference_images"], seed=REFERENCE_SUBSET_SEED)
    extractor = _features.build_extractor(cfg, args.feature_net, device)
    stats = metrics.reference_stats(real.images, extractor, batch_size=cfg["batch_size"])

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = _features.extractor_name(cfg)
    with atomic_path(out / "reference.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, extractor=np.array(name), **stats)
    with atomic_path(out / "floor.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, images=floor.images, labels=floor.labels)  # labels: -1 when unlabeled
    atomic_write_json(
        {
            "extractor": name,
            "num_images": len(real),
            "num_floor_images": len(floor),
            "floor_from": "the domain classifier's held-out split" if held_out is not None else "all images",
            "feature_dim": int(stats["features"].shape[1]),
            "data_sha256": data.content_hash(real),
        },
        out / "reference.json",
    )
    print(
        f"fid_ref: {len(real)} real images, {stats['features'].shape[1]}-d {name} features; "
        f"{len(floor)} held-out floor images -> {out}"
    )


if __name__ == "__main__":
    _cli.run(main)
