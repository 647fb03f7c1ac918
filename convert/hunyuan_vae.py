"""HunyuanVideo VAE weights (diffusers layout: `AutoencoderKLHunyuanVideo.save_pretrained`,
or the official release's `vae/pytorch_model.pt`, which has the same keys) -> an orbax
checkpoint of `svg2_jax.models.hunyuan_vae`.

The key table is `svg2_jax/models/hunyuan_vae/keys.py`; reading, checking and streaming
are `svg2_jax.checkpoints`', writing is `convert.common`'s, as for every family.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from convert import common
from svg2_jax.models.hunyuan_vae.load import FAMILY

LAYOUTS = FAMILY.layouts

# convert_to_orbax(src, layout, preset, out, *, dtype=f32, overwrite=False, progress=None):
# `out` gets `hunyuan_vae_config.json` and `state/`, loadable by
# `svg2_jax.models.hunyuan_vae.load` (float32 weights by default, as diffusers' pipelines)
convert_to_orbax = functools.partial(common.convert_to_orbax, FAMILY, dtype=jnp.float32)
# count_reads(src, layout, preset): the progress callbacks converting `src` makes
count_reads = functools.partial(common.count_reads, FAMILY)
