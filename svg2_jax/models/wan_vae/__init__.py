"""The Wan2.1 / Wan2.2 video VAE (diffusers' `AutoencoderKLWan`) in Flax NNX: causal, with
the temporal feature cache as explicit state so clips encode and decode in chunks.

See `model.py` for calling it, `load.py` for checkpoints, `latents.py` for the pipelines'
latent normalisation.
"""

from svg2_jax.models.wan_vae.config import PRESETS, WanVAEConfig, get_config
from svg2_jax.models.wan_vae.latents import denormalize, normalize
from svg2_jax.models.wan_vae.model import AutoencoderKLWan, wan_vae_decode, wan_vae_encode
from svg2_jax.models.wan_vae.load import load  # noqa: E402  (the function shadows the module)

__all__ = ["AutoencoderKLWan", "PRESETS", "WanVAEConfig", "denormalize", "get_config", "load",
           "normalize", "wan_vae_decode", "wan_vae_encode"]
