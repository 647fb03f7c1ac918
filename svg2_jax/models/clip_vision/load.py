"""`load`: a ready CLIP vision tower from an orbax checkpoint (written by `svg2-convert
--model clip-vit-h-14-vision`) or a transformers `CLIPVisionModel` checkpoint (Wan2.1 I2V's
`image_encoder/`); `FAMILY`, what the checkpoint code (`svg2_jax.checkpoints`, `convert`)
needs to know about it."""

from __future__ import annotations

import os

import jax.numpy as jnp

from svg2_jax.checkpoints import ModelFamily, load_model
from svg2_jax.models.clip_vision.config import ARCHITECTURE, CLIPVisionConfig, get_config
from svg2_jax.models.clip_vision.keys import KEYS
from svg2_jax.models.clip_vision.model import CLIPVisionModel

FAMILY = ModelFamily(
    name="CLIP vision", config_cls=CLIPVisionConfig, get_config=get_config,
    model_cls=CLIPVisionModel, diffusers_class=ARCHITECTURE, keys=KEYS,
    config_file="clip_vision_config.json", format="svg2-jax-clip-vision",
    describe=("num_hidden_layers", "hidden_size", "num_attention_heads", "patch_size",
              "image_size"),
    config_from_json=CLIPVisionConfig.of_json)


def load(path: str | os.PathLike, preset: str | CLIPVisionConfig | None = None,
         dtype=jnp.float32, mesh=None, *, progress=None) -> CLIPVisionModel:
    """Load CLIP vision weights into a `CLIPVisionModel` (`svg2_jax.checkpoints.load_model`
    with this `FAMILY`: the path forms, checks, mesh, progress and errors are described there).

    path: an orbax directory from `svg2-convert` (`clip_vision_config.json` + `state/`), or a
      transformers `CLIPVisionModel` / `CLIPVisionModelWithProjection` checkpoint (its
      config.json, if present, must match).
    preset: a preset name (`PRESETS`), a `CLIPVisionConfig`, a transformers config.json path,
      or None for the checkpoint's own config.
    dtype: weight and activation dtype (the LayerNorms keep float32 parameters).
    """
    return load_model(FAMILY, path, preset, dtype, mesh, progress=progress)
