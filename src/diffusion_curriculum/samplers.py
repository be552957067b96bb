"""Samplers: turn an x_0 predictor into samples.

Every sampler takes an x_0-prediction callable ``x0_fn(x_t, t) -> x0_hat`` where ``t`` is a (B,) tensor
in the schedule's native time (VP: integer timestep, dtype long; EDM: sigma; flow: t in [0, 1]; both
float64 as produced by :meth:`NoiseSchedule.sample_t`), the schedule, and the initial noise: a
standard-normal tensor, or a shape from which one is drawn with ``generator``.  The sampler scales the
noise to the schedule's prior itself (VP and flow: unit variance; EDM: ``sigma_max``).  The state is
kept in float32 and all samplers run under :func:`torch.no_grad`.

* :func:`ddpm_sample`   ancestral sampling (Ho et al. 2020) on a respaced chain (Nichol & Dhariwal 2021),
* :func:`ddim_sample`   DDIM (Song, Meng & Ermon 2021), eta = 0 deterministic,
* :func:`euler_sample`  Euler on the probability-flow ODE (Karras et al. 2022, EDM and flow),
* :func:`heun_sample`   EDM's second-order Heun sampler (Karras et al. 2022, Algorithm 1, no churn),
* :func:`guided_x0_fn`  classifier-free guidance (Ho & Salimans 2022) in one batched network call, for
                        class labels and caption embeddings alike,
* :func:`sample`        dispatch by sampler name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .schedules import EDMSchedule, FlowSchedule, NoiseSchedule, VPSchedule

__all__ = [
    "SAMPLERS",
    "X0Fn",
    "ddim_sample",
    "ddpm_sample",
    "euler_sample",
    "guided_x0_fn",
    "heun_sample",
    "ode_time_steps",
    "respaced_betas",
    "sample",
    "vp_timesteps",
]

X0Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseLike = torch.Tensor | Sequence[int] | torch.Size

SAMPLERS = ("ddpm", "ddim", "euler", "heun")


# ----------------------------------------------------------------------------------------------------
# helpers


def _initial_noise(noise: NoiseLike, generator: torch.Generator | None) -> torch.Tensor:
    if isinstance(noise, torch.Tensor):
        return noise.to(torch.float32)
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(tuple(noise), generator=generator, device=device, dtype=torch.float32)


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # Draw on the generator's device so a CPU generator still drives a CUDA sampler reproducibly.
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def _predict_x0(x0_fn: X0Fn, x: torch.Tensor, t: torch.Tensor, clip_x0: float | None) -> torch.Tensor:
    x0 = x0_fn(x, t).to(torch.float32)
    if clip_x0 is not None:
        x0 = x0.clamp(-clip_x0, clip_x0)
    return x0


def _require(schedule: NoiseSchedule, kinds: tuple[type, ...], sampler: str) -> None:
    if not isinstance(schedule, kinds):
        names = [k.__name__ for k in kinds]
        # ValueError, not TypeError: a bad sampler/schedule pairing is a configuration error, reported
        # the same way as an unknown sampler name.
        raise ValueError(
            f"sampler {sampler!r} does not fit a {type(schedule).__name__} ({schedule.name!r}) schedule; "
            f"it needs one of {names}"
        )


def vp_timesteps(schedule: VPSchedule, steps: int) -> torch.Tensor:
    """The ``steps`` kept timesteps of a VP chain, ascending: round(i (T-1)/(steps-1)), i = 0..steps-1.

    This is the single-section ``space_timesteps`` of Nichol & Dhariwal (2021): the chain always keeps
    t = 0 (so the last step lands on the data) and t = T-1 (so the first step starts at the prior).
    ``steps = 1`` keeps only T-1, a one-step sampler.
    """
    T = schedule.num_timesteps
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in [1, {T}] for a {T}-step VP schedule, got {steps}")
    if steps == 1:
        return torch.tensor([T - 1], dtype=torch.long)
    stride = (T - 1) / (steps - 1)
    return torch.tensor([round(i * stride) for i in range(steps)], dtype=torch.long)


def respaced_betas(schedule: VPSchedule, timesteps: torch.Tensor) -> torch.Tensor:
    """Betas of the sub-chain that visits only ``timesteps`` (ascending), float64.

    Nichol & Dhariwal (2021), section 4: keep alpha_bar at the kept steps and set
    beta_i = 1 - alpha_bar(tau_i) / alpha_bar(tau_{i-1}), with alpha_bar(tau_0 - 1) = 1, so that the
    sub-chain has exactly the original marginals q(x_tau | x_0).
    """
    abar = schedule.alphas_cumprod[timesteps]
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    return 1.0 - abar / abar_prev


def ode_time_steps(
    schedule: NoiseSchedule,
    steps: int,
    spacing: str | None = None,
    rho: float = 7.0,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
) -> torch.Tensor:
    """Time grid t_0 > t_1 > ... > t_N = 0 (N = ``steps``) for the ODE samplers, float64, native time.

    ``spacing="karras"`` (EDM's default): Karras et al. (2022) eq. 5,
    sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, i < N, and
    sigma_N = 0; for flow each sigma_i is mapped to t through ``schedule.t_from_edm_sigma`` (sigma_max
    and sigma_min default to 80 and 0.002 there, EDM's values; for EDM they default to the schedule's).
    ``spacing="uniform"`` (flow's default): t_i = 1 - i/N.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if isinstance(schedule, EDMSchedule):
        spacing = spacing or "karras"
        if spacing != "karras":
            raise ValueError(f"EDM schedules support only spacing='karras', got {spacing!r}")
        sigma_min = schedule.sigma_min if sigma_min is None else sigma_min
        sigma_max = schedule.sigma_max if sigma_max is None else sigma_max
    elif isinstance(schedule, FlowSchedule):
        spacing = spacing or "uniform"
        if spacing == "uniform":
            return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        if spacing != "karras":
            raise ValueError(f"spacing must be 'uniform' or 'karras', got {spacing!r}")
        sigma_min = 0.002 if sigma_min is None else sigma_min
        sigma_max = 80.0 if sigma_max is None else sigma_max
    else:
        _require(schedule, (EDMSchedule, FlowSchedule), "euler/heun")
    if not 0.0 < sigma_min < sigma_max < math.inf:
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}")
    if steps == 1:
        sigmas = torch.tensor([sigma_max], dtype=torch.float64)
    else:
        frac = torch.arange(steps, dtype=torch.float64) / (steps - 1)
        lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
        sigmas = (hi + frac * (lo - hi)) ** rho
    t = schedule.t_from_edm_sigma(sigmas)
    return torch.cat([t, t.new_zeros(1)])


# ----------------------------------------------------------------------------------------------------
# VP samplers


@torch.no_grad()
def ddpm_sample(
    x0_fn: X0Fn,
    schedule: VPSchedule,
    noise: NoiseLike,
    steps: int = 250,
    generator: torch.Generator | None = None,
    variance: str = "small",
    clip_x0: float | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Ancestral sampling (Ho et al. 2020, Algorithm 2) on the respaced chain of :func:`vp_timesteps`.

    With alpha_bar_i = alpha_bar(tau_i), alpha_bar_{i-1} = alpha_bar(tau_{i-1}) (1 before the first kept
    step) and beta_i from :func:`respaced_betas`, each step draws x_{i-1} from the Gaussian posterior
    q(x_{i-1} | x_i, x0_hat) (Ho et al. eq. 7):

        mean = sqrt(alpha_bar_{i-1}) beta_i / (1 - alpha_bar_i) x0_hat
             + sqrt(1 - beta_i) (1 - alpha_bar_{i-1}) / (1 - alpha_bar_i) x_i,
        var  = beta_tilde_i = beta_i (1 - alpha_bar_{i-1}) / (1 - alpha_bar_i)   (``variance="small"``)
               or beta_i                                                         (``variance="large"``).

    The chain starts from x = noise at tau = T-1; the last step (tau = 0) returns the mean without noise,
    which equals x0_hat there.  ``clip_x0`` clamps x0_hat to [-clip_x0, clip_x0] before it is used.
    Costs ``steps`` calls of ``x0_fn``.
    """
    _require(schedule, (VPSchedule,), "ddpm")
    if variance not in ("small", "large"):
        raise ValueError(f"variance must be 'small' or 'large', got {variance!r}")
    x = _initial_noise(noise, generator)
    timesteps = vp_timesteps(schedule, steps)
    betas = respaced_betas(schedule, timesteps)
    abar = schedule.alphas_cumprod[timesteps]
    for i in tqdm(range(len(timesteps) - 1, -1, -1), disable=not progress, desc="ddpm"):
        t = torch.full((x.shape[0],), int(timesteps[i]), dtype=torch.long, device=x.device)
        x0 = _predict_x0(x0_fn, x, t, clip_x0)
        beta, ab = float(betas[i]), float(abar[i])
        ab_prev = float(abar[i - 1]) if i > 0 else 1.0
        coef_x0 = math.sqrt(ab_prev) * beta / (1.0 - ab)
        coef_xt = math.sqrt(1.0 - beta) * (1.0 - ab_prev) / (1.0 - ab)
        x = coef_x0 * x0 + coef_xt * x
        if i > 0:
            var = beta * (1.0 - ab_prev) / (1.0 - ab) if variance == "small" else beta
            x = x + math.sqrt(var) * _randn_like(x, generator)
    return x


@torch.no_grad()
def ddim_sample(
    x0_fn: X0Fn,
    schedule: VPSchedule,
    noise: NoiseLike,
    steps: int = 50,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    clip_x0: float | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """DDIM (Song, Meng & Ermon 2021, eq. 12) on the timesteps of :func:`vp_timesteps`:

        eps_hat  = (x_i - sqrt(alpha_bar_i) x0_hat) / sqrt(1 - alpha_bar_i),
        s_i      = eta sqrt((1 - alpha_bar_{i-1}) / (1 - alpha_bar_i) (1 - alpha_bar_i / alpha_bar_{i-1})),
        x_{i-1}  = sqrt(alpha_bar_{i-1}) x0_hat + sqrt(1 - alpha_bar_{i-1} - s_i^2) eps_hat + s_i z,

    with alpha_bar_{i-1} = 1 after the last kept step (tau = 0), so the output is x0_hat there.  eta = 0
    is the deterministic sampler (Euler on the probability-flow ODE in x/alpha, sigma/alpha coordinates);
    eta = 1 with ``steps = T`` is DDPM with ``variance="small"``.  Costs ``steps`` calls of ``x0_fn``.
    """
    _require(schedule, (VPSchedule,), "ddim")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    x = _initial_noise(noise, generator)
    timesteps = vp_timesteps(schedule, steps)
    abar = schedule.alphas_cumprod[timesteps]
    for i in tqdm(range(len(timesteps) - 1, -1, -1), disable=not progress, desc="ddim"):
        t = torch.full((x.shape[0],), int(timesteps[i]), dtype=torch.long, device=x.device)
        x0 = _predict_x0(x0_fn, x, t, clip_x0)
        ab = float(abar[i])
        ab_prev = float(abar[i - 1]) if i > 0 else 1.0
        eps = (x - math.sqrt(ab) * x0) / math.sqrt(1.0 - ab)
        s = eta * math.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))
        # max(): rounding can push 1 - ab_prev - s^2 a hair below 0 when eta = 1 at the last step.
        x = math.sqrt(ab_prev) * x0 + math.sqrt(max(1.0 - ab_prev - s * s, 0.0)) * eps
        if s > 0:
            x = x + s * _randn_like(x, generator)
    return x


# ----------------------------------------------------------------------------------------------------
# ODE samplers (EDM and flow)


def _ode_setup(schedule, noise, generator, steps, spacing, rho, sigma_min, sigma_max, name):
    """Time grid and starting state x(t_0) for the ODE samplers."""
    _require(schedule, (EDMSchedule, FlowSchedule), name)
    ts = ode_time_steps(schedule, steps, spacing, rho, sigma_min, sigma_max)
    # Prior at t_0: x = sigma(t_0) eps, dropping alpha(t_0) x_0 -- zero at flow's t = 1, and the same
    # approximation EDM makes at sigma_max.
    _, sigma0 = schedule.alpha_sigma(ts[:1])
    x = _initial_noise(noise, generator) * float(sigma0)
    return ts, x


def _velocity(x0_fn: X0Fn, x: torch.Tensor, t: float) -> torch.Tensor:
    # Both ODEs share one form because sigma(t) = t for both schedules: EDM's dx/dsigma = (x - D)/sigma
    # (Karras et al. eq. 3 with s = 1), and the linear interpolant's E[eps - x_0 | x_t] = (x_t - D)/t,
    # which stays finite at t = 1 where alpha = 0.
    tt = torch.full((x.shape[0],), t, dtype=torch.float64, device=x.device)
    return (x - x0_fn(x, tt).to(torch.float32)) / t


@torch.no_grad()
def euler_sample(
    x0_fn: X0Fn,
    schedule: EDMSchedule | FlowSchedule,
    noise: NoiseLike,
    steps: int = 40,
    generator: torch.Generator | None = None,
    progress: bool = False,
    spacing: str | None = None,
    rho: float = 7.0,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
) -> torch.Tensor:
    """Euler integration of the probability-flow ODE dx/dt = (x - x0_hat(x, t)) / t from t_0 to 0 on
    :func:`ode_time_steps` (EDM: t = sigma, Karras et al. 2022 eq. 5 spacing; flow: t of the linear
    interpolant, uniform by default): x_{i+1} = x_i + (t_{i+1} - t_i) (x_i - x0_hat) / t_i.

    The last step to t = 0 returns x0_hat(x, t_{N-1}).  Euler on this ODE is unchanged by the move to
    x/alpha, sigma/alpha coordinates, so for flow it is the DDIM update (Song et al. 2021, sec. 4.3) and
    with ``spacing="karras"`` the same map of the noise as on EDM.  Costs ``steps`` calls of ``x0_fn``.
    """
    ts, x = _ode_setup(schedule, noise, generator, steps, spacing, rho, sigma_min, sigma_max, "euler")
    for i in tqdm(range(steps), disable=not progress, desc="euler"):
        t, t_next = float(ts[i]), float(ts[i + 1])
        x = x + (t_next - t) * _velocity(x0_fn, x, t)
    return x


@torch.no_grad()
def heun_sample(
    x0_fn: X0Fn,
    schedule: EDMSchedule | FlowSchedule,
    noise: NoiseLike,
    steps: int = 40,
    generator: torch.Generator | None = None,
    progress: bool = False,
    spacing: str | None = None,
    rho: float = 7.0,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
) -> torch.Tensor:
    """Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1 with
    S_churn = 0), on the same grid and ODE as :func:`euler_sample`:

        d   = (x_i - x0_hat(x_i, t_i)) / t_i,          x_e = x_i + (t_{i+1} - t_i) d,
        d'  = (x_e - x0_hat(x_e, t_{i+1})) / t_{i+1},  x_{i+1} = x_i + (t_{i+1} - t_i) (d + d') / 2,

    except on the last step to t = 0, which is a plain Euler step.  Costs ``2 steps - 1`` calls.
    """
    ts, x = _ode_setup(schedule, noise, generator, steps, spacing, rho, sigma_min, sigma_max, "heun")
    for i in tqdm(range(steps), disable=not progress, desc="heun"):
        t, t_next = float(ts[i]), float(ts[i + 1])
        d = _velocity(x0_fn, x, t)
        x_euler = x + (t_next - t) * d
        if t_next == 0:
            # The velocity (x - D)/t is 0/0 at t = 0, so the last step stays Euler (Karras et al. Alg. 1).
            x = x_euler
            continue
        x = x + (t_next - t) * 0.5 * (d + _velocity(x0_fn, x_euler, t_next))
    return x


# ----------------------------------------------------------------------------------------------------
# guidance and dispatch


def guided_x0_fn(
    denoiser: Callable[..., torch.Tensor],
    y: torch.Tensor | None,
    *,
    scale: float,
) -> X0Fn:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6) on the x_0 prediction:

        x0_hat = D(x, t, null) + scale (D(x, t, y) - D(x, t, null)),

    which, being affine in the prediction, is the same rule as guiding eps or the velocity.  The
    conditional and unconditional halves run as one batch of 2B through
    ``denoiser(x_t, t, y, force_drop_ids=drop)``: both halves carry ``y`` and ``drop`` is False for the
    first, True for the second, so the network itself substitutes its null condition -- the null class
    for class labels, the null caption for caption embeddings (float (B, T, D)) -- and this function
    needs to know neither.  A 0-d ``y`` (one class for the batch) is broadcast.  ``scale == 1`` or
    ``y is None`` makes a single plain call ``denoiser(x_t, t, y)`` (no guidance, no extra cost).
    """
    if y is None or scale == 1.0:

        def plain(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return denoiser(x, t, y)

        return plain

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        cond = y.to(x.device).expand(b) if y.ndim == 0 else y.to(x.device)
        drop = torch.arange(2 * b, device=x.device) >= b
        out = denoiser(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, cond]), force_drop_ids=drop)
        cond_x0, uncond_x0 = out.chunk(2)
        return uncond_x0 + scale * (cond_x0 - uncond_x0)

    return guided


_DISPATCH = {"ddpm": ddpm_sample, "ddim": ddim_sample, "euler": euler_sample, "heun": heun_sample}


def sample(
    x0_fn: X0Fn,
    schedule: NoiseSchedule,
    noise: NoiseLike,
    sampler: str,
    steps: int,
    generator: torch.Generator | None = None,
    **kw,
) -> torch.Tensor:
    """Run the sampler named ``sampler`` (one of :data:`SAMPLERS`); extra keywords go to it.

    Raises ValueError for an unknown name, and for a sampler that does not fit the schedule ('ddpm' and
    'ddim' need a VP schedule, 'euler' and 'heun' an EDM or flow one).
    """
    try:
        fn = _DISPATCH[sampler]
    except KeyError:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {list(SAMPLERS)}") from None
    return fn(x0_fn, schedule, noise, steps=steps, generator=generator, **kw)


def stitched_denoiser(
    base: Callable[..., torch.Tensor],
    expert: Callable[..., torch.Tensor],
    schedule: NoiseSchedule,
    unit_low: float,
    unit_high: float,
) -> Callable[..., torch.Tensor]:
    """``expert`` for timesteps whose unit time lies in ``[unit_low, unit_high)``, ``base`` elsewhere.

    The stitching protocol of Kim et al. (``seeds/002``, appendix B): an expert trained on one interval
    replaces the model trained on all timesteps inside that interval only.  Samplers pass one t for the
    whole batch, so each call runs exactly one of the two networks; mixed batches are split, and with them
    ``y`` and ``force_drop_ids`` (classifier-free guidance, :func:`guided_x0_fn`).
    """
    if not 0.0 <= unit_low < unit_high <= 1.0:
        raise ValueError(f"need 0 <= unit_low < unit_high <= 1, got [{unit_low}, {unit_high})")

    def denoise(
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None,
        *,
        force_drop_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # Passed on only when given, so plain (x, t, y) callables still fit.
        kw = {} if force_drop_ids is None else {"force_drop_ids": force_drop_ids}
        u = schedule.to_unit(t)
        inside = (u >= unit_low) & ((u < unit_high) if unit_high < 1.0 else torch.ones_like(u, dtype=bool))
        if bool(inside.all()):
            return expert(x, t, y, **kw)
        if not bool(inside.any()):
            return base(x, t, y, **kw)
        out = base(x, t, y, **kw)
        sel = inside.nonzero().squeeze(1)
        kw_sel = {name: value[sel] for name, value in kw.items()}
        out[sel] = expert(x[sel], t[sel], None if y is None else y[sel], **kw_sel).to(out.dtype)
        return out

    return denoise


def requested_classes(num_samples: int, num_classes: int) -> np.ndarray:
    """The class that each of ``num_samples`` class-conditional samples asks for: the classes in turn
    (sample i asks for class i mod ``num_classes``), so every class gets the same number of samples.
    The real-data floor draws its sets to the same plan (``fid_ref``)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return np.arange(num_samples, dtype=np.int64) % num_classes


def generate(
    denoiser: Callable[..., torch.Tensor],
    schedule: NoiseSchedule,
    num_samples: int,
    batch_size: int,
    *,
    shape: tuple[int, int, int],
    sampler: str,
    steps: int,
    generator: torch.Generator,
    device: str,
    num_classes: int = 0,
    captions: Sequence | None = None,
    cfg_scale: float = 1.0,
    bf16: bool = False,
    **sampler_kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_samples`` samples of ``shape`` (C, H, W) from ``denoiser``, drawn ``batch_size`` at a time
    with :func:`sample` and classifier-free guidance ``cfg_scale``.

    A class-conditional model (``num_classes`` > 0) gets the classes of :func:`requested_classes`,
    every class as many samples; a text-conditional one the caption embeddings ``captions[i]``.  The
    network runs under bf16 autocast with ``bf16``; the sampler's own arithmetic stays fp32.  Returns
    the samples as float32 on the CPU and the requested class of each (``-1`` for unconditional and text
    samples).
    """
    chunks, label_chunks = [], []
    classes = requested_classes(num_samples, num_classes) if num_classes else None
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        if captions is not None:
            y = torch.as_tensor(captions[start : start + n]).to(device)
        else:
            y = torch.from_numpy(classes[start : start + n]).to(device) if num_classes else None
        x0_fn = guided_x0_fn(denoiser, y, scale=cfg_scale)
        noise = torch.randn((n, *shape), generator=generator, device=device)
        with torch.autocast(torch.device(device).type, torch.bfloat16, enabled=bf16):
            x = sample(x0_fn, schedule, noise, sampler, steps, generator=generator, **sampler_kwargs)
        chunks.append(x.float().cpu())
        label_chunks.append(y.cpu() if num_classes else torch.full((n,), -1))
    return torch.cat(chunks), torch.cat(label_chunks)
