"""Wan transformer weights (Wan2.1, and each Wan2.2 expert / TI2V-5B: one module) -> an
orbax checkpoint of `svg2_jax.models.wan`; both experts of a Wan2.2 A14B directory at once
(`convert_experts`).

Two source layouts (safetensors, single file or sharded, or a torch state dict file):
"diffusers" (`WanTransformer3DModel.save_pretrained` keys) and "wan" (the official Wan2.1 /
Wan2.2 release keys, renamed to diffusers keys with the mapping of diffusers'
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
import os
from pathlib import Path
from typing import Callable

import jax.numpy as jnp

from convert import common
from convert.output_dir import (EXPERT_PAIR, atomic_directory, check_output, clean_stale,
                                output_path)
from svg2_jax.models.wan.load import FAMILY
from svg2_jax.pipelines.wan import EXPERT_DIRS, expert_paths
from svg2_jax.pipelines.wan_models import model_spec

LAYOUTS = FAMILY.layouts

# convert_to_orbax(src, layout, preset, out, *, dtype=bf16, overwrite=False, progress=None):
# `out` gets `wan_config.json` and `state/`, loadable by `svg2_jax.models.wan.load`
convert_to_orbax = functools.partial(common.convert_to_orbax, FAMILY)
# count_reads(src, layout, preset): the progress callbacks converting `src` makes
count_reads = functools.partial(common.count_reads, FAMILY)


def holds_experts(src: str | os.PathLike) -> bool:
    """Whether `src` is a directory holding both experts of a Wan2.2 A14B model
    (`svg2_jax.pipelines.wan.EXPERT_DIRS`: diffusers' or the official names)."""
    src = Path(src)
    return src.is_dir() and any((src / a).is_dir() and (src / b).is_dir()
                                for a, b in EXPERT_DIRS)


def convert_experts(src: str | os.PathLike, layout: str, model, out: str | os.PathLike, *,
                    dtype=jnp.bfloat16, overwrite: bool = False,
                    progress: Callable[[str], None] | None = None
                    ) -> list[common.ConversionReport]:
    """Both experts of a Wan2.2 A14B checkpoint directory (diffusers' `transformer/` +
    `transformer_2/`, or the official `high_noise_model/` + `low_noise_model/`, both in
    `layout`) -> `out/transformer` and `out/transformer_2`, each an orbax checkpoint of the
    model's preset; `out` appears only when both are written.
    `svg2_jax.pipelines.wan.load_experts(model, out)` reads the pair."""
    spec = model_spec(model)
    if spec.num_experts != 2:
        raise ValueError(f"{spec.name} has one transformer; {src} holds two experts (a Wan2.2 "
                         "A14B checkpoint): name wan2.2-t2v-a14b or wan2.2-i2v-a14b")
    paths = expert_paths(spec, src)
    out = output_path(out)
    clean_stale(out)
    check_output(out, overwrite)
    with atomic_directory(out, overwrite) as tmp:
        return [common.convert_to_orbax(FAMILY, path, layout, spec.transformer, tmp / name,
                                        dtype=dtype, progress=progress)
                for path, name in zip(paths, EXPERT_PAIR)]


def count_expert_reads(src: str | os.PathLike, layout: str, model) -> int:
    """The progress callbacks `convert_experts` makes."""
    spec = model_spec(model)
    return sum(count_reads(path, layout, spec.transformer) for path in expert_paths(spec, src))
