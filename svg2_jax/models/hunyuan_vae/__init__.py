"""The HunyuanVideo VAE (diffusers' `AutoencoderKLHunyuanVideo`) in Flax NNX, with
diffusers' temporal and spatial tiling.

See `model.py` for calling it, `tiling.py` for the tiles, `load.py` for checkpoints,
`latents.py` for the pipelines' latent scaling.
"""

from svg2_jax.models.hunyuan_vae.config import PRESETS, HunyuanVideoVAEConfig, get_config
from svg2_jax.models.hunyuan_vae.latents import scale, unscale
from svg2_jax.models.hunyuan_vae.model import (AutoencoderKLHunyuanVideo, hunyuan_vae_decode,
                                               hunyuan_vae_encode)
from svg2_jax.models.hunyuan_vae.tiling import HunyuanVAETiling
from svg2_jax.models.hunyuan_vae.load import load  # noqa: E402  (the function shadows the module)

__all__ = ["AutoencoderKLHunyuanVideo", "HunyuanVAETiling", "HunyuanVideoVAEConfig", "PRESETS",
           "get_config", "hunyuan_vae_decode", "hunyuan_vae_encode", "load", "scale", "unscale"]
