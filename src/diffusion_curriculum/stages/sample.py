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

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffusion_curriculum import data, samplers
from diffusion_curriculum.captions import sampling_captions
from diffusion_curriculum.errors import InputFileError
from diffusion_curriculum.io import atomic_path, atomic_savez, atomic_write_json, read_json, read_torch
from diffusion_curriculum.losses import Denoiser
from diffusion_curriculum.models import create_model
from diffusion_curriculum.models.dit import load_dit_checkpoint
from diffusion_curriculum.schedules import make_schedule

from . import _cli, gpu, params
from ._conditioning import read_text_captions


def load_denoiser(path: str | Path, use_ema: bool, device: str) -> tuple[Denoiser, dict]:
    ckpt = read_torch(
        path, hint="written by train or train_expert", keys=("arch", "net", "ema", "schedule", "prediction")
    )
    net = create_model(**ckpt["arch"])
    net.load_state_dict(ckpt["ema" if use_ema else "net"])
    net.eval().to(device)
    return Denoiser(net, make_schedule(**ckpt["schedule"]), ckpt["prediction"]), ckpt


def load_official_dit(path: str, params_file: str, device: str) -> tuple[Denoiser, dict]:
    """An official DiT checkpoint as a denoiser, with a stand-in for ``model.pt``'s metadata."""
    cfg = params.sections(params_file, "model", "diffusion")
    model_cfg, diff = cfg["model"], cfg["diffusion"]
    try:
        net = load_dit_checkpoint(path, class_dropout=model_cfg["condition_dropout"])
    except InputFileError:
        raise
    except ValueError as err:  # the state dict is readable but not DiT's: name the file
        raise InputFileError(path, str(err)) from None
    name = getattr(net, "model_name", None)
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
    schedule = {"framework": "vp", **diff["vp"]}
    arch = {
        "name": name,
        "input_size": net.input_size[0],
        "in_channels": net.in_channels,
        "num_classes": net.num_classes,
    }
    record = {
        "arch": arch,
        "schedule": schedule,
        "prediction": "eps",
        "data": {"kind": data.LATENTS, "sha256": None},
        "step": None,
        "method": "official",
        "seed": None,
    }
    return Denoiser(net.to(device), make_schedule(**schedule), "eps"), record


def image_grid(images: np.ndarray, columns: int = 10) -> Image.Image:
    """Tile NHWC uint8 images into one picture."""
    n, h, w, c = images.shape
    rows = math.ceil(n / columns)
    canvas = np.zeros((rows * h, columns * w, c), dtype=np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, columns)
        canvas[r * h : (r + 1) * h, q * w : (q + 1) * w] = img
    return Image.fromarray(canvas[..., 0] if c == 1 else canvas)


def _rescale(x: torch.Tensor) -> torch.Tensor:
    """Map each sample to [-1, 1] by its own range."""
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return 2 * (x - lo) / (hi - lo).clamp_min(1e-8) - 1


def latent_decoder(manifest: dict | None, model_path: str, model_data: dict, device: str):
    """The VAE that encoded the training data (``encode_latents``' manifest), or None for pixel models
    and for latents given without a VAE."""
    if manifest is None or model_data["kind"] != data.LATENTS:
        return None
    if manifest["sha256"] != model_data["sha256"]:
        raise InputFileError(model_path, "was trained on other data than the --encoding manifest describes")
    encoding = manifest["encoding"]
    if encoding is None:
        return None
    from diffusion_curriculum.latents import LatentCodec

    codec = LatentCodec.from_directory(encoding["vae"], device=device)
    if codec.fingerprint() != encoding["fingerprint"]:
        raise InputFileError(
            encoding["vae"], "is not the VAE that encoded the training data; rerun encode_latents"
        )
    return codec


def main(argv: list[str] | None = None) -> None:
    ap = _cli.parser("sample", __doc__)
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="model.pt written by train")
    source.add_argument(
        "--weights", help="an official DiT checkpoint (.pt state dict) instead of --model; see the docstring"
    )
    ap.add_argument("--out-dir", required=True)
    ap.add_argument(
        "--expert",
        default=None,
        help="an expert's model.pt (train_expert): it denoises inside its interval, --model elsewhere",
    )
    ap.add_argument("--encoding", default=None, help="encode_latents' manifest.json (decodes latents)")
    ap.add_argument("--captions", default=None, help="prepare_data's captions.parquet (text models)")
    args = ap.parse_args(argv)
    cfg = params.sections(args.params, "sample")["sample"]
    device = gpu.pick_device(params.resolve_device(cfg["device"]))

    if args.weights:
        if args.expert:
            ap.error("--expert stitches into a trained --model, not into --weights")
        denoiser, ckpt = load_official_dit(args.weights, args.params, device)
        args.model = args.weights
    else:
        denoiser, ckpt = load_denoiser(args.model, cfg["use_ema"], device)
    stitched = None
    if args.expert:
        expert, expert_ckpt = load_denoiser(args.expert, cfg["use_ema"], device)
        if expert_ckpt["arch"] != ckpt["arch"] or expert_ckpt["schedule"] != ckpt["schedule"]:
            raise InputFileError(args.expert, f"differs from {args.model} in architecture or noise schedule")
        stitched = expert_ckpt["interval"]
        denoiser = samplers.stitched_denoiser(
            denoiser, expert, denoiser.schedule, stitched["unit_low"], stitched["unit_high"]
        )
    encoded = read_json(args.encoding, hint="written by encode_latents") if args.encoding else None
    arch = ckpt["arch"]
    num_classes = arch["num_classes"]
    text_model = arch.get("text_dim", 0) > 0
    if text_model:
        if args.captions is None:
            ap.error(f"{args.model} is a text-conditional model: give its --captions")
        if encoded is None:
            ap.error(f"{args.model} is a text-conditional model: give the --encoding manifest too")
        caption_rows, caption_images = sampling_captions(
            read_text_captions(args.captions, encoded["count"], args.params), cfg["num_samples"], cfg["seed"]
        )
    schedule = make_schedule(**ckpt["schedule"])
    shape = (arch["in_channels"], arch["input_size"], arch["input_size"])
    generator = torch.Generator(device=device).manual_seed(cfg["seed"])
    sampler_kwargs = {}
    if cfg["sampler"] in ("ddpm", "ddim"):
        sampler_kwargs["clip_x0"] = cfg["clip_x0"]
    if cfg["sampler"] == "ddpm":
        sampler_kwargs["variance"] = cfg["ddpm_variance"]

    bf16 = params.resolve_bf16(cfg["precision"], device)
    chunks, label_chunks = [], []
    n_total = cfg["num_samples"]
    for start in range(0, n_total, cfg["batch_size"]):
        n = min(cfg["batch_size"], n_total - start)
        if text_model:
            y = torch.from_numpy(caption_rows[start : start + n]).to(device)
        else:  # classes cycle so every class gets the same number of samples
            y = (torch.arange(start, start + n, device=device) % num_classes) if num_classes else None
        x0_fn = samplers.guided_x0_fn(denoiser, y, scale=cfg["cfg_scale"])
        noise = torch.randn((n, *shape), generator=generator, device=device)
        # The network runs in bf16 where sample.precision says so (auto: GPUs and CPUs with AMX, as in
        # training); the sampler's own arithmetic stays fp32.
        with torch.autocast(torch.device(device).type, torch.bfloat16, enabled=bf16):
            x = samplers.sample(
                x0_fn,
                schedule,
                noise,
                cfg["sampler"],
                cfg["steps"],
                generator=generator,
                **sampler_kwargs,
            )
        chunks.append(x.float().cpu())
        label_chunks.append(y.cpu() if num_classes else torch.full((n,), -1))
    x = torch.cat(chunks)
    labels = torch.cat(label_chunks).numpy()
    if not torch.isfinite(x).all():
        raise InputFileError(
            args.model, "sampling from it produced non-finite values (a diverged model, or sample settings?)"
        )

    if args.weights and encoded is not None:  # no training data to match: decode with the manifest's VAE
        ckpt["data"]["sha256"] = encoded["sha256"]
    decoder = latent_decoder(encoded, args.model, ckpt["data"], device)
    if args.weights and encoded is None:
        vae = params.sections(args.params, "latents")["latents"]["vae"]
        if vae is not None:  # the VAE named in the params (DiT: sd-vae-ft-ema or -mse)
            from diffusion_curriculum.latents import LatentCodec

            decoder = LatentCodec.from_directory(vae, device=device)
    if decoder is not None:
        x = decoder.decode(x, batch_size=cfg["batch_size"])

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    is_pixels = ckpt["data"]["kind"] == data.PIXELS or decoder is not None
    images = data.to_uint8_images(x) if is_pixels else x.numpy().astype(np.float32)
    arrays = {"images": images, "labels": labels}
    if text_model:
        arrays["caption_images"] = caption_images  # the data-set row whose caption each sample follows
    atomic_savez(out / "samples.npz", **arrays)
    # Latents are shown channel-wise rescaled (first three channels) until a decoder is configured.
    preview = images[:100] if is_pixels else data.to_uint8_images(_rescale(x[:100, :3]))
    with atomic_path(out / "grid.png") as tmp:
        image_grid(preview).save(tmp, format="PNG")
    atomic_write_json(
        {
            "model": str(args.model),
            "official_weights": bool(args.weights),
            "model_step": ckpt["step"],
            "method": ckpt["method"],
            "train_seed": ckpt["seed"],
            "expert": {"model": str(args.expert), **stitched} if stitched else None,
            "decoded_by": str(decoder.path) if decoder is not None else None,
            **cfg,
            "device": device,
        },
        out / "settings.json",
    )
    print(f"sample: {len(images)} samples -> {out}")


if __name__ == "__main__":
    _cli.run(main)
