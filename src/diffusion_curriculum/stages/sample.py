"""Stage sample[method, seed]: draw images from a trained model with the configured sampler.

Writes ``samples.npz`` (``images``: uint8 NHWC; ``labels``: the class of each sample, ``-1`` for
unconditional ones; ``captions``: the caption row of each sample for text models), ``grid.png`` (the first
100 samples, for a look) and ``settings.json`` (exactly what produced them).  The schedule and
parameterisation come from ``model.pt``, so this stage reads only ``sample``.  A model trained on latents
is decoded with the VAE that ``encode_latents`` recorded (``--encoding``); latents without a VAE are kept
as float32 NCHW.  Text models are conditioned on captions drawn reproducibly from ``--captions``.

``--weights PATH`` samples an official DiT checkpoint (facebookresearch/DiT's ``.pt`` state dict, loaded by
``models.load_dit_checkpoint``) instead of a trained ``--model``: the architecture comes from the state
dict and must be the params' ``model.name``, the schedule and parameterisation from ``diffusion`` (the
released models: VP linear, T = 1000, eps); the latents are decoded with the VAE of ``--encoding``, else
of ``latents.vae`` (kept as latents when that is null).
Not a pipeline rule: a manual check of the sampling and scoring stages against published FIDs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from diffusion_curriculum import checkpoints, data, samplers
from diffusion_curriculum.captions import sampling_captions
from diffusion_curriculum.conditioning import read_text_captions
from diffusion_curriculum.errors import InputFileError
from diffusion_curriculum.gpu import pick_device
from diffusion_curriculum.io import atomic_path, atomic_savez, atomic_write_json, read_json
from diffusion_curriculum.latents import LatentCodec, latent_decoder

from . import _cli, params


def load_official_dit(path: str, params_file: str, device: str):
    """An official DiT checkpoint as a denoiser and a stand-in for ``model.pt``'s metadata, checked
    against the params' ``model.name`` and ``diffusion``."""
    cfg = params.sections(params_file, "model", "diffusion")
    model_cfg, diff = cfg["model"], cfg["diffusion"]
    schedule = {"framework": "vp", **diff["vp"]}
    denoiser, record = checkpoints.official_dit(path, model_cfg["condition_dropout"], schedule, device)
    name = record["arch"]["name"]
    if name != model_cfg["name"]:
        raise params.ParamsError(
            f"{params_file}: model.name is {model_cfg['name']!r} but {path} holds a "
            f"{name or 'DiT of an unregistered size'}"
        )
    if diff["framework"] != "vp" or diff["prediction"] != "eps":
        raise params.ParamsError(
            f"{params_file}: official DiT weights predict eps on a VP schedule; set diffusion.framework "
            f"vp and diffusion.prediction eps (got {diff['framework']} / {diff['prediction']})"
        )
    return denoiser, record


def _parser():
    ap = _cli.parser("sample", __doc__)
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="model.pt written by train")
    source.add_argument("--weights", help="an official DiT checkpoint (.pt state dict) instead of --model")
    ap.add_argument("--out-dir", required=True, help="writes samples.npz, grid.png and settings.json here")
    ap.add_argument("--expert", help="an expert's model.pt (train_expert): it denoises inside its interval")
    ap.add_argument("--encoding", help="encode_latents' manifest.json (decodes latents)")
    ap.add_argument("--captions", help="prepare_data's captions.parquet (text models)")
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = _parser()
    args = ap.parse_args(argv)
    cfg = params.sections(args.params, "sample")["sample"]
    device = pick_device(params.resolve_device(cfg["device"]))
    if args.weights and args.expert:
        ap.error("--expert stitches into a trained --model, not into --weights")
    if args.weights:
        denoiser, ckpt = load_official_dit(args.weights, args.params, device)
    else:
        denoiser, ckpt = checkpoints.load_denoiser(args.model, cfg["use_ema"], device)
    model, schedule = args.model or args.weights, denoiser.schedule
    stitched = None
    if args.expert:
        expert, expert_ckpt = checkpoints.load_expert(args.expert, cfg["use_ema"], device)
        if expert_ckpt["arch"] != ckpt["arch"] or expert_ckpt["schedule"] != ckpt["schedule"]:
            raise InputFileError(args.expert, f"differs from {model} in architecture or noise schedule")
        stitched = expert_ckpt["interval"]
        low, high = stitched["unit_low"], stitched["unit_high"]
        denoiser = samplers.stitched_denoiser(denoiser, expert, schedule, low, high)
    encoded = read_json(args.encoding, hint="written by encode_latents") if args.encoding else None
    # Each training seed draws its own noise (and captions), so a method's spread over seeds holds the
    # sampling noise that a replication would have; the methods at one seed share it, which pairs them.
    noise_seed = cfg["seed"] + (ckpt["seed"] or 0)
    arch, captions = ckpt["arch"], None
    if arch.get("text_dim", 0) > 0:
        if args.captions is None or encoded is None:
            ap.error(f"{model} is a text-conditional model: give its --captions and the --encoding manifest")
        embeddings = read_text_captions(args.captions, encoded["count"], f"{model}: the model's condition")
        captions, caption_images = sampling_captions(embeddings, cfg["num_samples"], noise_seed)
    options = {"clip_x0": cfg["clip_x0"]} if cfg["sampler"] in ("ddpm", "ddim") else {}
    if cfg["sampler"] == "ddpm":
        options["variance"] = cfg["ddpm_variance"]
    x, labels = samplers.generate(
        denoiser, schedule, cfg["num_samples"], cfg["batch_size"],
        shape=(arch["in_channels"], arch["input_size"], arch["input_size"]), sampler=cfg["sampler"],
        steps=cfg["steps"], generator=torch.Generator(device=device).manual_seed(noise_seed), device=device,
        num_classes=arch["num_classes"], captions=captions, cfg_scale=cfg["cfg_scale"],
        bf16=params.resolve_bf16(cfg["precision"], device), **options,
    )  # fmt: skip
    if not torch.isfinite(x).all():
        raise InputFileError(
            model, "sampling from it produced non-finite values (a diverged model, or sample settings?)"
        )

    if args.weights and encoded is not None:  # no training data to match: decode with the manifest's VAE
        ckpt["data"]["sha256"] = encoded["sha256"]
    decoder = latent_decoder(encoded, model, ckpt["data"], device)
    vae = (
        params.sections(args.params, "latents")["latents"]["vae"]
        if args.weights and encoded is None
        else None
    )
    if vae is not None:  # the VAE named in the params (DiT: sd-vae-ft-ema or -mse)
        decoder = LatentCodec.from_directory(vae, device=device)
    if decoder is not None:
        x = decoder.decode(x, batch_size=cfg["batch_size"])

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    is_pixels = ckpt["data"]["kind"] == data.PIXELS or decoder is not None
    images = data.to_uint8_images(x) if is_pixels else x.numpy().astype(np.float32)
    arrays = {"images": images, "labels": labels.numpy()}
    if captions is not None:
        arrays["caption_images"] = caption_images  # the data-set row whose caption each sample follows
    atomic_savez(out / "samples.npz", **arrays)
    with atomic_path(out / "grid.png") as tmp:
        data.preview_grid(x, is_pixels).save(tmp, format="PNG")
    expert = {"model": str(args.expert), **stitched} if stitched else None
    atomic_write_json(
        {
            "model": str(model), "official_weights": bool(args.weights), "model_step": ckpt["step"],
            "method": ckpt["method"], "train_seed": ckpt["seed"], "noise_seed": noise_seed, "expert": expert,
            "decoded_by": str(decoder.path) if decoder is not None else None, **cfg, "device": device,
        },
        out / "settings.json",
    )  # fmt: skip
    print(f"sample: {len(images)} samples -> {out}")


if __name__ == "__main__":
    _cli.run(main)
