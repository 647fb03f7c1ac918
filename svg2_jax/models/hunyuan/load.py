"""`load`: a ready HunyuanVideo model from an orbax checkpoint (written by `svg2-convert`), a
diffusers checkpoint, or an official HunyuanVideo checkpoint; `FAMILY`, what the checkpoint
code (`svg2_jax.checkpoints`, `convert`) needs to know about HunyuanVideo."""

from __future__ import annotations

import os

import jax.numpy as jnp

from svg2_jax.checkpoints import ModelFamily, load_model
from svg2_jax.layer_attention import DenseAttention
from svg2_jax.models.hunyuan.config import DIFFUSERS_CLASS, HunyuanVideoConfig, get_config
from svg2_jax.models.hunyuan.keys import KEYS
from svg2_jax.models.hunyuan.model import HunyuanVideoTransformer3DModel

FAMILY = ModelFamily(
    name="HunyuanVideo", config_cls=HunyuanVideoConfig, get_config=get_config,
    model_cls=HunyuanVideoTransformer3DModel, diffusers_class=DIFFUSERS_CLASS, keys=KEYS,
    config_file="hunyuan_config.json", format="svg2-jax-hunyuan-video",
    describe=("num_layers", "num_single_layers", "num_refiner_layers", "num_attention_heads",
              "attention_head_dim", "in_channels", "guidance_embeds"))


def load(path: str | os.PathLike, preset: str | HunyuanVideoConfig, dtype=jnp.bfloat16,
         mesh=None, *, attention=DenseAttention(), progress=None
         ) -> HunyuanVideoTransformer3DModel:
    """Load HunyuanVideo weights into a `HunyuanVideoTransformer3DModel`
    (`svg2_jax.checkpoints.load_model` with HunyuanVideo's `FAMILY`: the path forms, checks,
    mesh, progress and errors are described there).

    path: an orbax directory from `svg2-convert` (`hunyuan_config.json` + `state/`), or a
      diffusers- or official-layout checkpoint: safetensors, or a torch file such as the
      released `mp_rank_00_model_states.pt` (or a directory holding only it).
    preset: a preset name (`PRESETS`), a `HunyuanVideoConfig`, or a diffusers config.json
      path.
    dtype: weight and activation dtype (norm scales and the timestep / guidance MLPs stay
      float32).
    attention: as for `HunyuanVideoTransformer3DModel`.
    """
    return load_model(FAMILY, path, preset, dtype, mesh, progress=progress, attention=attention)
