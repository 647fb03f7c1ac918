"""HunyuanVideo latent scaling, as diffusers' HunyuanVideo pipelines do it: by the VAE
config's `scaling_factor`."""

from __future__ import annotations

import jax

from svg2_jax.models.hunyuan_vae.config import HunyuanVideoVAEConfig


def scale(latents: jax.Array, config: HunyuanVideoVAEConfig) -> jax.Array:
    """The encoder's latents -> what the DiT sees: latents * scaling_factor
    (HunyuanVideoImageToVideoPipeline.prepare_latents)."""
    return latents * config.scaling_factor


def unscale(latents: jax.Array, config: HunyuanVideoVAEConfig) -> jax.Array:
    """The DiT's latents -> what the decoder takes: latents / scaling_factor
    (HunyuanVideoPipeline.__call__ before `vae.decode`)."""
    return latents / config.scaling_factor
