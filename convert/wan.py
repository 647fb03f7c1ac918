"""Wan2.1 transformer weights -> an orbax checkpoint of `svg2_jax.models.wan`.

Two source layouts (safetensors, single file or sharded, or a torch state dict file):
"diffusers" (`WanTransformer3DModel.save_pretrained` keys) and "wan" (the official Wan2.1
release keys, renamed to diffusers keys with the mapping of diffusers'
`convert_wan_transformer_to_diffusers`). The key tables are `svg2_jax/models/wan/keys.py`;
reading, checking and streaming are `svg2_jax.checkpoints`'; writing is `convert.common`'s.

Checks are strict and happen before any tensor is read: every missing key, unexpected key
and shape mismatch is listed in one ValueError. The only keys skipped are those diffusers
itself ignores on load (`norm_added_q`, in some I2V diffusers checkpoints; unused by the
model); they are reported in `Plan.ignored` and the output's metadata.

Memory: tensors are read one at a time (safetensors, numpy) and written into a
preallocated buffer per parameter (the stacked [L, ...] buffer for block weights); each
finished parameter becomes a jax array and its buffer is dropped. The process holds one
copy of the weights plus the parameter being filled. Measured (`svg2-convert -v`): a
1.3B-shaped float32 diffusers checkpoint (5.3 GiB, 2 shards) -> bf16 orbax (2.65 GiB)
peaks at 3.6 GiB RSS.
"""

from __future__ import annotations

import functools

from convert import common
from svg2_jax.models.wan.load import FAMILY

LAYOUTS = FAMILY.layouts

# convert_to_orbax(src, layout, preset, out, *, dtype=bf16, overwrite=False, progress=None):
# `out` gets `wan_config.json` and `state/`, loadable by `svg2_jax.models.wan.load`
convert_to_orbax = functools.partial(common.convert_to_orbax, FAMILY)
# count_reads(src, layout, preset): the progress callbacks converting `src` makes
count_reads = functools.partial(common.count_reads, FAMILY)
