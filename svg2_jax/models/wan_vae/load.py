"""`load`: a ready Wan VAE from an orbax checkpoint (written by `svg2-convert`) or a
diffusers checkpoint; `FAMILY`, what the checkpoint code (`svg2_jax.checkpoints`,
`convert`) needs to know about it."""

from __future__ import annotations

import os

import jax.numpy as jnp

from svg2_jax.checkpoints import ModelFamily, load_model
from svg2_jax.models.wan_vae.config import DIFFUSERS_CLASS, WanVAEConfig, get_config
from svg2_jax.models.wan_vae.keys import KEYS
from svg2_jax.models.wan_vae.model import AutoencoderKLWan

FAMILY = ModelFamily(
    name="Wan VAE", config_cls=WanVAEConfig, get_config=get_config, model_cls=AutoencoderKLWan,
    diffusers_class=DIFFUSERS_CLASS, keys=KEYS, config_file="wan_vae_config.json",
    format="svg2-jax-wan-vae",
    describe=("base_dim", "decoder_base_dim", "z_dim", "dim_mult", "num_res_blocks",
              "is_residual", "patch_size"))


def load(path: str | os.PathLike, preset: str | WanVAEConfig | None = None,
         dtype=jnp.float32, mesh=None, *, progress=None) -> AutoencoderKLWan:
    """Load Wan VAE weights into an `AutoencoderKLWan` (`svg2_jax.checkpoints.load_model`
    with the Wan VAE's `FAMILY`: path forms, checks, mesh, progress and errors there).

    path: an orbax directory from `svg2-convert` (`wan_vae_config.json` + `state/`), or a
      diffusers-layout checkpoint (e.g. `<repo>/vae`: safetensors or a torch file).
    preset: "wan2.1-vae", "wan2.2-vae" (`PRESETS`), a `WanVAEConfig`, a config.json path, or
      None for the checkpoint's own config (the orbax one, or the diffusers config.json).
    dtype: weight and activation dtype (float32 by default, as diffusers' pipelines).
    """
    return load_model(FAMILY, path, preset, dtype, mesh, progress=progress)
