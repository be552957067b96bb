"""Stage prepare_data: load the configured data set and write it as Parquet with a manifest, and a validated
copy of its caption embeddings (``data.captions_path``; an empty table without captions)."""

from __future__ import annotations

from pathlib import Path

from diffusion_curriculum import captions, data
from diffusion_curriculum.conditioning import write_no_captions
from diffusion_curriculum.io import atomic_write_json

from . import _cli, params


def main(argv: list[str] | None = None) -> None:
    ap = _cli.parser("prepare_data", __doc__)
    ap.add_argument(
        "--out-dir", default="data/prepared", help="writes train.parquet, manifest.json, captions.parquet"
    )
    args = ap.parse_args(argv)
    cfg = params.sections(args.params, "data")["data"]

    dataset = data.load_dataset(
        cfg["source"],
        cfg["path"],
        image_size=cfg["image_size"],
        channels=cfg["channels"],
        labels_path=cfg["labels_path"],
        max_images=cfg["max_images"],
        seed=cfg["subset_seed"],
    )
    out = Path(args.out_dir)
    manifest = data.write_parquet(dataset, out / "train.parquet")
    if cfg["captions_path"] is None:
        write_no_captions(out / "captions.parquet")
        manifest["captions"] = None
    else:
        caps = captions.read_captions(cfg["captions_path"], len(dataset))
        captions.write_captions(caps, out / "captions.parquet")
        manifest["captions"] = {
            "count": len(caps), "tokens": caps.tokens, "dim": caps.dim, "null": caps.null is not None
        }  # fmt: skip
    atomic_write_json(manifest, out / "manifest.json")
    print(f"prepare_data: {manifest['count']} images of shape {manifest['shape']} -> {out}")


if __name__ == "__main__":
    _cli.run(main)
