"""Stage sample[method, seed]: draw images from a trained model with the configured sampler.

Writes ``samples.npz`` (``images``: uint8 NHWC for pixel data, float32 NCHW for latents; ``labels``),
``grid.png`` (the first 100 samples, for a look) and ``settings.json`` (exactly what produced them).
The schedule and parameterisation come from ``model.pt``, so this stage reads only ``sample``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffusion_curriculum import data, samplers
from diffusion_curriculum.io import atomic_path, atomic_write_json
from diffusion_curriculum.losses import Denoiser
from diffusion_curriculum.models import create_model
from diffusion_curriculum.schedules import make_schedule

from . import _cli, gpu, params


def load_denoiser(path: str | Path, use_ema: bool, device: str) -> tuple[Denoiser, dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    net = create_model(**ckpt["arch"])
    net.load_state_dict(ckpt["ema" if use_ema else "net"])
    net.eval().to(device)
    return Denoiser(net, make_schedule(**ckpt["schedule"]), ckpt["prediction"]), ckpt


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


def main(argv: list[str] | None = None) -> None:
    ap = _cli.parser(__doc__)
    ap.add_argument("--model", required=True, help="model.pt written by train")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument(
        "--expert",
        default=None,
        help="an expert's model.pt (train_expert): it denoises inside its interval, --model elsewhere",
    )
    args = ap.parse_args(argv)
    cfg = params.sections(args.params, "sample")["sample"]
    device = gpu.pick_device(params.resolve_device(cfg["device"]))

    denoiser, ckpt = load_denoiser(args.model, cfg["use_ema"], device)
    stitched = None
    if args.expert:
        expert, expert_ckpt = load_denoiser(args.expert, cfg["use_ema"], device)
        if expert_ckpt["arch"] != ckpt["arch"] or expert_ckpt["schedule"] != ckpt["schedule"]:
            raise ValueError(f"{args.expert} and {args.model} differ in architecture or noise schedule")
        stitched = expert_ckpt["interval"]
        denoiser = samplers.stitched_denoiser(
            denoiser, expert, denoiser.schedule, stitched["unit_low"], stitched["unit_high"]
        )
    arch = ckpt["arch"]
    num_classes = arch["num_classes"]
    schedule = make_schedule(**ckpt["schedule"])
    shape = (arch["in_channels"], arch["input_size"], arch["input_size"])
    generator = torch.Generator(device=device).manual_seed(cfg["seed"])
    sampler_kwargs = {}
    if cfg["sampler"] in ("ddpm", "ddim"):
        sampler_kwargs["clip_x0"] = cfg["clip_x0"]
    if cfg["sampler"] == "ddpm":
        sampler_kwargs["variance"] = cfg["ddpm_variance"]

    chunks, label_chunks = [], []
    n_total = cfg["num_samples"]
    for start in range(0, n_total, cfg["batch_size"]):
        n = min(cfg["batch_size"], n_total - start)
        # Classes cycle so every class gets the same number of samples.
        y = (torch.arange(start, start + n, device=device) % num_classes) if num_classes else None
        x0_fn = samplers.guided_x0_fn(denoiser, y, null_label=num_classes, scale=cfg["cfg_scale"])
        noise = torch.randn((n, *shape), generator=generator, device=device)
        # The network runs in bf16 on GPUs (as in training); the sampler's own arithmetic stays fp32.
        with torch.autocast("cuda", torch.bfloat16, enabled=device.startswith("cuda")):
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
        label_chunks.append(y.cpu() if y is not None else torch.full((n,), -1))
    x = torch.cat(chunks)
    labels = torch.cat(label_chunks).numpy()
    if not torch.isfinite(x).all():
        raise ValueError(f"sampling from {args.model} produced non-finite values; check the sampler settings")

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    is_pixels = ckpt["data"]["kind"] == "pixels"
    images = data.to_uint8_images(x) if is_pixels else x.numpy().astype(np.float32)
    with atomic_path(out / "samples.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, images=images, labels=labels)
    # Latents are shown channel-wise rescaled (first three channels) until a decoder is configured.
    preview = images[:100] if is_pixels else data.to_uint8_images(_rescale(x[:100, :3]))
    with atomic_path(out / "grid.png") as tmp:
        image_grid(preview).save(tmp, format="PNG")
    atomic_write_json(
        {
            "model": str(args.model),
            "model_step": ckpt["step"],
            "method": ckpt["method"],
            "train_seed": ckpt["seed"],
            "expert": {"model": str(args.expert), **stitched} if stitched else None,
            **cfg,
            "device": device,
        },
        out / "settings.json",
    )
    print(f"sample: {len(images)} samples -> {out}")


if __name__ == "__main__":
    _cli.run(main)
