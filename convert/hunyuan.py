"""HunyuanVideo transformer weights -> an orbax checkpoint of `svg2_jax.models.hunyuan`.

Two source layouts: "diffusers" (`HunyuanVideoTransformer3DModel.save_pretrained` keys;
safetensors or a torch state dict file) and "hunyuan" (the official release keys, normally
the torch `mp_rank_00_model_states.pt`, which holds the state dict under "module"; or
safetensors with the same keys), renamed to diffusers keys with the mapping of diffusers'
`convert_hunyuan_video_transformer_to_diffusers`, fused q/k/v and linear1 tensors split as
each piece is read. The key tables are `svg2_jax/models/hunyuan/keys.py`; reading,
checking and streaming are `svg2_jax.checkpoints`'; writing is `convert.common`'s.

Strictness, streaming and atomic writes are as for Wan (`convert.wan`): every missing key,
unexpected key and shape mismatch is listed in one ValueError before any tensor is read;
tensors are read one at a time into one preallocated buffer per (stacked) parameter (a
torch file is memory-mapped and re-mapped every GiB read, so its pages do not accumulate);
the output directory appears only when complete. Nothing is skipped silently: the only
entries not converted are the other top-level entries of a wrapped torch checkpoint (e.g.
next to "module"), reported in `Plan.ignored` and the output's metadata.
"""

from __future__ import annotations

import functools

from convert import common
from svg2_jax.models.hunyuan.load import FAMILY

LAYOUTS = FAMILY.layouts

# convert_to_orbax(src, layout, preset, out, *, dtype=bf16, overwrite=False, progress=None):
# `out` gets `hunyuan_config.json` and `state/`, loadable by `svg2_jax.models.hunyuan.load`
convert_to_orbax = functools.partial(common.convert_to_orbax, FAMILY)
# count_reads(src, layout, preset): the progress callbacks converting `src` makes
count_reads = functools.partial(common.count_reads, FAMILY)
