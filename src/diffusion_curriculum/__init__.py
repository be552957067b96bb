"""diffusion_curriculum: denoising-task difficulty and timestep curricula for diffusion models."""

__version__ = "0.1.0"
