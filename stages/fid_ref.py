"""Stage fid_ref: reference statistics of the real data in the metrics' feature space, cached.

Writes ``reference.npz`` (``mu``, ``sigma`` and the ``features`` that KID and precision/recall need,
plus the extractor's name) and ``reference.json`` (what went in).  It reads only ``features``, so the
statistics are recomputed only when the data or the extractor change.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffusion_curriculum import data, metrics
from diffusion_curriculum.io import atomic_path, atomic_write_json

from . import _cli, _features, gpu, params

REFERENCE_SUBSET_SEED = 0  # the same real images every time, whatever other seeds say


def main(argv: list[str] | None = None) -> None:
    ap = _cli.parser(__doc__)
    ap.add_argument("--data", required=True, help="train.parquet written by prepare_data")
    ap.add_argument("--feature-net", required=True, help="feature_net.pt written by feature_net")
    ap.add_argument("--out-dir", required=True, help="writes reference.npz and reference.json here")
    args = ap.parse_args(argv)
    cfg = params.sections(args.params, "features")["features"]
    device = gpu.pick_device(params.resolve_device(cfg["device"]))

    dataset = data.read_parquet(args.data)
    if dataset.kind != data.PIXELS:
        raise ValueError(f"{args.data} holds {dataset.kind}; reference statistics need pixel images")
    real = data.subset(dataset, cfg["reference_images"], seed=REFERENCE_SUBSET_SEED)
    extractor = _features.build_extractor(cfg, args.feature_net, device)
    stats = metrics.reference_stats(real.images, extractor, batch_size=cfg["batch_size"])

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = _features.extractor_name(cfg)
    with atomic_path(out / "reference.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, extractor=np.array(name), **stats)
    atomic_write_json(
        {
            "extractor": name,
            "num_images": len(real),
            "feature_dim": int(stats["features"].shape[1]),
            "data_sha256": data.content_hash(real),
        },
        out / "reference.json",
    )
    print(f"fid_ref: {len(real)} real images, {stats['features'].shape[1]}-d {name} features -> {out}")


if __name__ == "__main__":
    _cli.run(main)
