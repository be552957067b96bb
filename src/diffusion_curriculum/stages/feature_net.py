"""Stage feature_net: train the small classifier whose features define the ``domain`` FID space.

Writes ``feature_net.pt`` (weights and architecture) and ``feature_net.json`` (its accuracy on a held-out
split, a DVC metric).  With ``features.extractor: inception`` nothing is trained: the file records that,
so the stages after it keep one dependency graph whatever the extractor.
"""

from __future__ import annotations

import time
from pathlib import Path

from diffusion_curriculum import data
from diffusion_curriculum import features as feature_space
from diffusion_curriculum.feature_net import train_feature_net
from diffusion_curriculum.gpu import pick_device
from diffusion_curriculum.io import atomic_write_json

from . import _cli, params


def main(argv: list[str] | None = None) -> None:
    ap = _cli.parser("feature_net", __doc__)
    ap.add_argument("--data", required=True, help="train.parquet written by prepare_data")
    ap.add_argument("--out-dir", required=True, help="writes feature_net.pt and feature_net.json here")
    args = ap.parse_args(argv)
    cfg = params.sections(args.params, "features")["features"]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    if cfg["extractor"] != "domain":
        reason = f"features.extractor is {cfg['extractor']!r}"
        feature_space.save_feature_net({"trained": False, "reason": reason}, out / "feature_net.pt")
        atomic_write_json({"trained": False, "reason": reason}, out / "feature_net.json")
        print(f"feature_net: nothing to train ({reason})")
        return

    dataset = data.read_parquet(args.data)
    if dataset.kind != data.PIXELS:
        raise params.ParamsError(
            f"features.extractor: 'domain' needs pixel images, but {args.data} holds {dataset.kind}; "
            "use 'inception' on decoded samples"
        )
    if not dataset.labeled:
        raise params.ParamsError(
            f"features.extractor: 'domain' trains a classifier, but {args.data} has no labels; "
            "use 'inception' (with features.inception_weights)"
        )
    device = pick_device(params.resolve_device(cfg["device"]))
    images, labels = data.to_training_tensor(dataset)
    domain = cfg["domain"]
    started = time.perf_counter()
    net, report = train_feature_net(
        images,
        labels,
        dataset.num_classes,
        epochs=domain["epochs"],
        batch_size=domain["batch_size"],
        lr=domain["lr"],
        test_fraction=domain["test_fraction"],
        seed=domain["seed"],
        device=device,
        width=domain["width"],
        feature_dim=domain["feature_dim"],
    )
    record = {
        "trained": True,
        "kwargs": net.config,
        "image_size": int(images.shape[-1]),
        "state": {k: v.cpu() for k, v in net.state_dict().items()},
        "data_sha256": data.content_hash(dataset),
        # Real images the classifier never saw: fid_ref draws the metrics' floor from them.
        "held_out": report.test_indices,
    }
    feature_space.save_feature_net(record, out / "feature_net.pt")
    metrics = {
        "trained": True,
        "test_accuracy": report.test_accuracy,
        "train_accuracy": report.train_accuracy,
        "num_test": report.num_test,
        "num_train": report.num_train,
    }
    atomic_write_json(metrics, out / "feature_net.json")
    print(
        f"feature_net: held-out accuracy {report.test_accuracy:.4f} on {report.num_test} images, "
        f"{time.perf_counter() - started:.1f} s -> {out}"
    )


if __name__ == "__main__":
    _cli.run(main)
