"""`load`: a ready Llama encoder from an orbax checkpoint (written by `svg2-convert --model
hunyuan-video-llama`) or a transformers `LlamaModel` checkpoint (HunyuanVideo's
`text_encoder/`); `FAMILY`, what the checkpoint code (`svg2_jax.checkpoints`, `convert`)
needs to know about it."""

from __future__ import annotations

import os

import jax.numpy as jnp

from svg2_jax.checkpoints import ModelFamily, load_model
from svg2_jax.models.llama.config import ARCHITECTURE, LlamaConfig, get_config
from svg2_jax.models.llama.keys import KEYS
from svg2_jax.models.llama.model import LlamaModel

FAMILY = ModelFamily(
    name="Llama", config_cls=LlamaConfig, get_config=get_config, model_cls=LlamaModel,
    diffusers_class=ARCHITECTURE, keys=KEYS, config_file="llama_config.json",
    format="svg2-jax-llama",
    describe=("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
              "vocab_size"),
    config_from_json=LlamaConfig.of_json)


def load(path: str | os.PathLike, preset: str | LlamaConfig = "hunyuan-video-llama",
         dtype=jnp.bfloat16, mesh=None, *, progress=None) -> LlamaModel:
    """Load Llama weights into a `LlamaModel` (`svg2_jax.checkpoints.load_model` with this
    `FAMILY`: the path forms, checks, mesh, progress and errors are described there).

    path: an orbax directory from `svg2-convert` (`llama_config.json` + `state/`), or a
      transformers `LlamaModel` checkpoint (its config.json, if present, must match).
    preset: a preset name (`PRESETS`), a `LlamaConfig`, or a transformers config.json path.
    dtype: weight and activation dtype (the norms keep float32 scales).
    """
    return load_model(FAMILY, path, preset, dtype, mesh, progress=progress)
