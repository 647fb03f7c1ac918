"""`load`: a ready umT5 encoder from an orbax checkpoint (written by `svg2-convert --model
umt5-xxl`) or a transformers checkpoint (a `text_encoder/` directory of the Wan2.1
diffusers repos: safetensors, sharded or not); `FAMILY`, what the checkpoint code
(`svg2_jax.checkpoints`, `convert`) needs to know about it."""

from __future__ import annotations

import os

import jax.numpy as jnp

from svg2_jax.checkpoints import ModelFamily, load_model
from svg2_jax.models.umt5.config import ARCHITECTURE, UMT5Config, get_config
from svg2_jax.models.umt5.keys import KEYS
from svg2_jax.models.umt5.model import UMT5EncoderModel

FAMILY = ModelFamily(
    name="umT5", config_cls=UMT5Config, get_config=get_config, model_cls=UMT5EncoderModel,
    diffusers_class=ARCHITECTURE, keys=KEYS, config_file="umt5_config.json",
    format="svg2-jax-umt5", describe=("num_layers", "d_model", "num_heads", "d_kv", "d_ff"),
    config_from_json=UMT5Config.of_json)


def load(path: str | os.PathLike, preset: str | UMT5Config = "umt5-xxl", dtype=jnp.bfloat16,
         mesh=None, *, progress=None) -> UMT5EncoderModel:
    """Load umT5 encoder weights into a `UMT5EncoderModel` (`svg2_jax.checkpoints.load_model`
    with this `FAMILY`: the path forms, checks, mesh, progress and errors are described
    there).

    path: an orbax directory from `svg2-convert` (`umt5_config.json` + `state/`), or a
      transformers checkpoint (its config.json, if present, must match `preset`).
    preset: a preset name (`PRESETS`), a `UMT5Config`, or a transformers config.json path.
    dtype: weight and activation dtype (norms and the feed-forward output projection `wo`
      stay float32, as transformers keeps `wo`).
    """
    return load_model(FAMILY, path, preset, dtype, mesh, progress=progress)
