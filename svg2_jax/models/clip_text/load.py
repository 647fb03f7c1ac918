"""`load`: a ready CLIP text encoder from an orbax checkpoint (written by `svg2-convert
--model clip-vit-l-text`) or a transformers `CLIPTextModel` checkpoint (HunyuanVideo's
`text_encoder_2/`); `FAMILY`, what the checkpoint code (`svg2_jax.checkpoints`, `convert`)
needs to know about it."""

from __future__ import annotations

import os

import jax.numpy as jnp

from svg2_jax.checkpoints import ModelFamily, load_model
from svg2_jax.models.clip_text.config import ARCHITECTURE, CLIPTextConfig, get_config
from svg2_jax.models.clip_text.keys import KEYS
from svg2_jax.models.clip_text.model import CLIPTextModel

FAMILY = ModelFamily(
    name="CLIP text", config_cls=CLIPTextConfig, get_config=get_config,
    model_cls=CLIPTextModel, diffusers_class=ARCHITECTURE, keys=KEYS,
    config_file="clip_text_config.json", format="svg2-jax-clip-text",
    describe=("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size",
              "max_position_embeddings"),
    config_from_json=CLIPTextConfig.of_json)


def load(path: str | os.PathLike, preset: str | CLIPTextConfig = "clip-vit-l-text",
         dtype=jnp.bfloat16, mesh=None, *, progress=None) -> CLIPTextModel:
    """Load CLIP text weights into a `CLIPTextModel` (`svg2_jax.checkpoints.load_model` with
    this `FAMILY`: the path forms, checks, mesh, progress and errors are described there).

    path: an orbax directory from `svg2-convert` (`clip_text_config.json` + `state/`), or a
      transformers `CLIPTextModel` checkpoint (its config.json, if present, must match).
    preset: a preset name (`PRESETS`), a `CLIPTextConfig`, or a transformers config.json path.
    dtype: weight and activation dtype (the LayerNorms keep float32 parameters).
    """
    return load_model(FAMILY, path, preset, dtype, mesh, progress=progress)
