"""svg2-generate's --vae: the model family's JAX VAE (an svg2-convert orbax directory or a
diffusers `vae/` folder, its own config), read before the DiT so a bad path fails early,
then checked against the DiT's latents. No torch. Problems exit naming --vae."""

from __future__ import annotations

import importlib
import os

from svg2_jax.cli.text import fail

# family -> the svg2_jax.models module of its VAE
VAE_MODELS = {"wan": "wan_vae", "hunyuan": "hunyuan_vae"}


def load_vae(family: str, path: str):
    """The family's VAE at `path` in float32 (as diffusers' pipelines run it)."""
    import jax.numpy as jnp

    if not os.path.exists(path):
        fail(f"--vae not found: {path}")
    module = importlib.import_module(f"svg2_jax.models.{VAE_MODELS[family]}")
    try:
        return module.load(path, None, jnp.float32)
    except ValueError as e:
        fail(f"--vae {path}: {e}")


def check_vae(vae, path: str, latent_channels: int):
    """The VAE decodes the DiT's latents: as many latent channels as the DiT outputs."""
    if vae.config.latent_channels != latent_channels:
        fail(f"--vae {path} decodes {vae.config.latent_channels}-channel latents; the model "
             f"makes {latent_channels}: not this model's VAE")
