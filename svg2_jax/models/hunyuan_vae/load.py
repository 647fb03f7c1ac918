"""`load`: a ready HunyuanVideo VAE from an orbax checkpoint (written by `svg2-convert`) or
a diffusers checkpoint; `FAMILY`, what the checkpoint code (`svg2_jax.checkpoints`,
`convert`) needs to know about it."""

from __future__ import annotations

import os

import jax.numpy as jnp

from svg2_jax.checkpoints import ModelFamily, load_model
from svg2_jax.models.hunyuan_vae.config import (DIFFUSERS_CLASS, HunyuanVideoVAEConfig,
                                                get_config)
from svg2_jax.models.hunyuan_vae.keys import KEYS
from svg2_jax.models.hunyuan_vae.model import AutoencoderKLHunyuanVideo

FAMILY = ModelFamily(
    name="HunyuanVideo VAE", config_cls=HunyuanVideoVAEConfig, get_config=get_config,
    model_cls=AutoencoderKLHunyuanVideo, diffusers_class=DIFFUSERS_CLASS, keys=KEYS,
    config_file="hunyuan_vae_config.json", format="svg2-jax-hunyuan-vae",
    describe=("block_out_channels", "layers_per_block", "latent_channels", "norm_num_groups",
              "mid_block_add_attention"))


def load(path: str | os.PathLike, preset: str | HunyuanVideoVAEConfig | None = None,
         dtype=jnp.float32, mesh=None, *, progress=None) -> AutoencoderKLHunyuanVideo:
    """Load HunyuanVideo VAE weights into an `AutoencoderKLHunyuanVideo`
    (`svg2_jax.checkpoints.load_model` with this `FAMILY`: path forms, checks, mesh,
    progress and errors there).

    path: an orbax directory from `svg2-convert` (`hunyuan_vae_config.json` + `state/`), or
      a diffusers-layout checkpoint (`<repo>/vae`, or the official `vae/pytorch_model.pt`).
    preset: "hunyuan-video-vae" (`PRESETS`), a `HunyuanVideoVAEConfig`, a config.json path,
      or None for the checkpoint's own config (the orbax one, or the diffusers config.json;
      the official .pt has none beside it: name the preset).
    dtype: weight and activation dtype (float32 by default, as diffusers' pipelines).
    """
    return load_model(FAMILY, path, preset, dtype, mesh, progress=progress)
