"""Wan latent (un)normalisation, as diffusers' Wan pipelines do it: per channel with the
VAE config's `latents_mean` and `latents_std` (the pipelines multiply by the float32
reciprocal of std, and divide by it to undo; written the same way here)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from svg2_jax.models.wan_vae.config import WanVAEConfig


def _stats(config: WanVAEConfig, dtype):
    shape = (1, config.z_dim, 1, 1, 1)
    mean = jnp.asarray(config.latents_mean, jnp.float32).reshape(shape).astype(dtype)
    inv_std = (1.0 / jnp.asarray(config.latents_std, jnp.float32)).reshape(shape).astype(dtype)
    return mean, inv_std


def normalize(latents: jax.Array, config: WanVAEConfig) -> jax.Array:
    """The encoder's latents [B, z_dim, F, H, W] -> what the DiT sees:
    (latents - mean) * (1 / std) (WanImageToVideoPipeline.prepare_latents)."""
    mean, inv_std = _stats(config, latents.dtype)
    return (latents - mean) * inv_std


def denormalize(latents: jax.Array, config: WanVAEConfig) -> jax.Array:
    """The DiT's latents -> what the decoder takes: latents / (1 / std) + mean
    (WanPipeline.__call__ before `vae.decode`)."""
    mean, inv_std = _stats(config, latents.dtype)
    return latents / inv_std + mean
