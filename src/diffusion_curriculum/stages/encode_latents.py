"""Stage encode_latents: the data the diffusion models train on, in a VAE's latent space or as pixels.

With ``latents.vae`` set, every prepared image is encoded by the diffusers ``AutoencoderKL`` stored in
that local directory (latent diffusion, Rombach et al. 2022; DiT trains this way) and ``sample`` decodes
generated latents back to images with the same VAE.  With ``latents.vae: null`` the prepared data pass
through unchanged, so the stage graph is the same for pixel and latent runs under both drivers.  Data
already given as latents (``data.source: latents``) pass through too; a VAE named for them is only used
for decoding.

Writes ``train.parquet`` (what train, train_expert and estimate_kl read) and ``manifest.json``: the data
set's manifest plus ``encoding`` = ``{vae, fingerprint, scaling_factor, shift_factor, image_shape,
posterior}`` or ``null`` for pixels.  ``sample`` reads ``encoding`` to decode.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from diffusion_curriculum import data
from diffusion_curriculum.errors import InputFileError
from diffusion_curriculum.gpu import pick_device
from diffusion_curriculum.io import atomic_path, atomic_write_json

from . import _cli, params


def encoding_record(codec, image_shape: list[int] | None, posterior: str | None) -> dict:
    """What ``sample`` needs to decode, and what identifies the VAE that encoded the data."""
    return {
        "vae": str(codec.path),
        "fingerprint": codec.fingerprint(),
        "scaling_factor": float(codec.scaling_factor),
        "shift_factor": float(codec.shift_factor),
        "image_shape": image_shape,  # (H, W, C) of the pixel images; null when given latents
        "posterior": posterior,
    }


def copy_through(source: str, out: Path) -> None:
    with atomic_path(out / "train.parquet") as tmp:
        shutil.copyfile(source, tmp)


def main(argv: list[str] | None = None) -> None:
    ap = _cli.parser("encode_latents", __doc__)
    ap.add_argument("--data", default="data/prepared/train.parquet", help="prepare_data's Parquet")
    ap.add_argument("--out-dir", default="data/encoded", help="writes train.parquet and manifest.json here")
    args = ap.parse_args(argv)
    cfg = params.sections(args.params, "latents")["latents"]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset = data.read_parquet(args.data)

    if cfg["vae"] is None:
        copy_through(args.data, out)
        manifest = {**data.dataset_manifest(dataset), "encoding": None}
        what = "unchanged (latents.vae is null)"
    else:
        from diffusion_curriculum.latents import LatentCodec, encode_dataset

        device = pick_device(params.resolve_device(cfg["device"]))
        codec = LatentCodec.from_directory(cfg["vae"], device=device)
        if dataset.kind == data.LATENTS:
            expected = codec.latent_channels
            if dataset.channels != expected:
                raise InputFileError(
                    args.data,
                    f"holds latents with {dataset.channels} channels, but the VAE in "
                    f"latents.vae = {cfg['vae']} makes {expected}",
                )
            copy_through(args.data, out)
            encoding = encoding_record(codec, None, None)
            manifest = {**data.dataset_manifest(dataset), "encoding": encoding}
            what = "given as latents; the VAE decodes samples"
        else:
            latents = encode_dataset(
                dataset, codec, batch_size=cfg["batch_size"], posterior=cfg["posterior"], seed=cfg["seed"]
            )
            written = data.write_parquet(latents, out / "train.parquet")
            encoding = encoding_record(codec, list(dataset.sample_shape), cfg["posterior"])
            manifest = {**written, "encoding": encoding}
            what = f"encoded to latents of shape {written['shape']} by {cfg['vae']}"
    atomic_write_json(manifest, out / "manifest.json", sort_keys=True)
    print(f"encode_latents: {manifest['count']} samples {what} -> {out}")


if __name__ == "__main__":
    _cli.run(main)
