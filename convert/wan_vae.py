"""Wan2.1 / Wan2.2 VAE weights (diffusers layout: `AutoencoderKLWan.save_pretrained`,
safetensors or a torch state dict file) -> an orbax checkpoint of
`svg2_jax.models.wan_vae`.

The key table is `svg2_jax/models/wan_vae/keys.py`; reading, checking (every missing key,
unexpected key and shape mismatch in one ValueError before any tensor is read) and
streaming (one tensor at a time) are `svg2_jax.checkpoints`'; writing (atomic output
directory) is `convert.common`'s.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from convert import common
from svg2_jax.models.wan_vae.load import FAMILY

LAYOUTS = FAMILY.layouts

# convert_to_orbax(src, layout, preset, out, *, dtype=f32, overwrite=False, progress=None):
# `out` gets `wan_vae_config.json` and `state/`, loadable by `svg2_jax.models.wan_vae.load`
# (float32 weights by default, as diffusers' pipelines)
convert_to_orbax = functools.partial(common.convert_to_orbax, FAMILY, dtype=jnp.float32)
# count_reads(src, layout, preset): the progress callbacks converting `src` makes
count_reads = functools.partial(common.count_reads, FAMILY)
