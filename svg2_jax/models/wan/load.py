"""`load`: a ready Wan model from an orbax checkpoint (written by `svg2-convert`), a
diffusers checkpoint, or an official Wan2.1 checkpoint; `FAMILY`, what the checkpoint code
(`svg2_jax.checkpoints`, `convert`) needs to know about Wan."""

from __future__ import annotations

import os

import jax.numpy as jnp

from svg2_jax.checkpoints import ModelFamily, load_model
from svg2_jax.layer_attention import DenseAttention
from svg2_jax.models.wan.config import DIFFUSERS_CLASS, WanConfig, get_config
from svg2_jax.models.wan.keys import KEYS
from svg2_jax.models.wan.model import WanTransformer3DModel

FAMILY = ModelFamily(
    name="Wan", config_cls=WanConfig, get_config=get_config, model_cls=WanTransformer3DModel,
    diffusers_class=DIFFUSERS_CLASS, keys=KEYS, config_file="wan_config.json",
    format="svg2-jax-wan",
    describe=("num_layers", "num_attention_heads", "attention_head_dim", "in_channels",
              "image_dim"))


def load(path: str | os.PathLike, preset: str | WanConfig, dtype=jnp.bfloat16, mesh=None, *,
         attention=DenseAttention(), cross_attention_implementation: str | None = None,
         progress=None) -> WanTransformer3DModel:
    """Load Wan (2.1 or one Wan2.2 expert) weights into a `WanTransformer3DModel` (`svg2_jax.checkpoints.load_model`
    with Wan's `FAMILY`: the path forms, checks, mesh, progress and errors are described
    there).

    path: an orbax directory from `svg2-convert` (`wan_config.json` + `state/`), or a
      diffusers- or official Wan-layout checkpoint (safetensors or a torch file).
      A checkpoint that does not fit raises a ValueError which also says what it holds
      (`identify.describe_checkpoint`).
    preset: a preset name (`PRESETS`), a `WanConfig`, or a diffusers config.json path.
    dtype: weight and activation dtype (norms, modulation tables and the timestep MLP stay
      float32).
    attention, cross_attention_implementation: as for `WanTransformer3DModel`.
    """
    try:
        return load_model(FAMILY, path, preset, dtype, mesh, progress=progress,
                          attention=attention,
                          cross_attention_implementation=cross_attention_implementation)
    except ValueError as e:
        from svg2_jax.models.wan.identify import describe_checkpoint

        found = describe_checkpoint(path) if os.path.exists(path) else None
        if found is None:
            raise
        raise ValueError(f"{e}\n{found}") from None
