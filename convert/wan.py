"""Wan2.1 transformer weights -> the NNX state of `svg2_jax.models.wan`.

Two source layouts (both safetensors, single file or sharded):
  "diffusers": `WanTransformer3DModel.save_pretrained` keys (`blocks.0.attn1.to_q.weight`).
  "wan": the official Wan2.1 release keys (`blocks.0.self_attn.q.weight`, `head.head.weight`,
    optionally prefixed `model.diffusion_model.`). They are first renamed to diffusers keys
    with the mapping of diffusers' `convert_wan_transformer_to_diffusers`
    (`diffusers/loaders/single_file_utils.py`, diffusers 0.42.1): the Wan2.1 entries of its
    `TRANSFORMER_KEYS_RENAME_DICT`, applied in the same order, plus `img_emb.emb_pos` ->
    `condition_embedder.image_embedder.pos_embed` (FLF2V), which that function leaves
    unrenamed.

Diffusers keys then map onto our parameter paths: the module names are diffusers' (see
`svg2_jax/models/wan/model.py`) except `to_out.0` -> `to_out`, FeedForward's `net.0.proj` ->
`proj_in` and `net.2` -> `proj_out`; torch Linear `weight` [out, in] -> `kernel` [in, out]
(transposed); norm `weight` -> `scale`; the Conv3d patch embedding weight
[D, C, p_t, p_h, p_w] -> kernel [C*p_t*p_h*p_w, D]; `blocks.{i}.*` go to index i of the
stacked block parameters.

Checks are strict and happen before any tensor is read: every missing key, unexpected key
and shape mismatch is listed in one ValueError. The only keys skipped are those diffusers
itself ignores on load (`norm_added_q`, in some I2V diffusers checkpoints; unused by the
model); they are reported in `Plan.ignored`.

Memory: tensors are read one at a time (safetensors, numpy) and written into a
preallocated buffer per parameter (the stacked [L, ...] buffer for block weights); each
finished parameter becomes a jax array and its buffer is dropped. The process holds one
copy of the weights plus the parameter being filled. Measured (`svg2-convert -v`): a
1.3B-shaped float32 diffusers checkpoint (5.3 GiB, 2 shards) -> bf16 orbax (2.65 GiB)
peaks at 3.6 GiB RSS.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx

from convert import common
from convert.common import ConversionReport, Plan, Target
from convert.safetensors_io import SafetensorsSource

LAYOUTS = ("diffusers", "wan")
CONFIG_FILE = "wan_config.json"
FORMAT = "svg2-jax-wan"

# The Wan2.1 transformer entries of diffusers' single_file_utils
# `convert_wan_transformer_to_diffusers` TRANSFORMER_KEYS_RENAME_DICT, same order
# (str.replace applied in sequence, so order matters: "head.modulation" before
# "modulation", and the norm2/norm3 swap through a placeholder).
OFFICIAL_TO_DIFFUSERS = (
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("cross_attn", "attn2"),
    ("self_attn", "attn1"),
    (".o.", ".to_out.0."),
    (".q.", ".to_q."),
    (".k.", ".to_k."),
    (".v.", ".to_v."),
    (".k_img.", ".add_k_proj."),
    (".v_img.", ".add_v_proj."),
    (".norm_k_img.", ".norm_added_k."),
    ("head.modulation", "scale_shift_table"),
    ("head.head", "proj_out"),
    ("modulation", "scale_shift_table"),
    ("ffn.0", "ffn.net.0.proj"),
    ("ffn.2", "ffn.net.2"),
    ("norm2", "norm__placeholder"),
    ("norm3", "norm2"),
    ("norm__placeholder", "norm3"),
    ("img_emb.proj.0", "condition_embedder.image_embedder.norm1"),
    ("img_emb.proj.1", "condition_embedder.image_embedder.ff.net.0.proj"),
    ("img_emb.proj.3", "condition_embedder.image_embedder.ff.net.2"),
    ("img_emb.proj.4", "condition_embedder.image_embedder.norm2"),
    # not in single_file_utils (it leaves the FLF2V position embedding unrenamed)
    ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed"),
)
OFFICIAL_PREFIX = "model.diffusion_model."

# diffusers' WanTransformer3DModel._keys_to_ignore_on_load_unexpected
IGNORED_KEY_PATTERNS = ("norm_added_q",)

# our module names -> diffusers' (whole dotted components)
_OURS_TO_DIFFUSERS = (("to_out", "to_out.0"), ("proj_in", "net.0.proj"))
_FFN_PROJ_OUT = re.compile(r"(^|\.)(ffn|ff)\.proj_out(\.|$)")


def official_to_diffusers_key(key: str) -> str:
    """An official Wan2.1 key as diffusers names it (single_file_utils' mapping)."""
    if key.startswith(OFFICIAL_PREFIX):
        key = key[len(OFFICIAL_PREFIX):]
    for old, new in OFFICIAL_TO_DIFFUSERS:
        key = key.replace(old, new)
    return key


def detect_layout(keys) -> str | None:
    """"diffusers", "wan", or None when the keys look like neither."""
    keys = list(keys)
    if any(k.startswith("condition_embedder.") for k in keys):
        return "diffusers"
    stripped = [k[len(OFFICIAL_PREFIX):] if k.startswith(OFFICIAL_PREFIX) else k for k in keys]
    if any(k.startswith(("time_embedding.", "text_embedding.", "head.head.")) for k in stripped):
        return "wan"
    return None


def _diffusers_name(path: tuple[str, ...]) -> tuple[str, str]:
    """Our parameter path (without the block index) -> (diffusers dotted name, transform)."""
    *modules, leaf = path
    name = ".".join(modules)
    name = _FFN_PROJ_OUT.sub(lambda m: f"{m.group(1)}{m.group(2)}.net.2{m.group(3)}", name)
    parts = name.split(".")
    for ours, theirs in _OURS_TO_DIFFUSERS:
        parts = [theirs if p == ours else p for p in parts]
    name = ".".join(parts)
    if leaf == "kernel":
        transform = "conv" if modules == ["patch_embedding"] else "transpose"
        return f"{name}.weight", transform
    if leaf == "scale":
        return f"{name}.weight", "copy"
    return (f"{name}.{leaf}" if name else leaf), "copy"


def expected_keys(config, abstract_state) -> dict[str, Target]:
    """Every diffusers key our state needs -> its Target (shapes in torch layout)."""
    out = {}
    for path, var in nnx.to_flat_state(abstract_state):
        path = tuple(str(p) for p in path)
        shape = tuple(var.shape)
        stacked = path[0] == "blocks"
        name, transform = _diffusers_name(path[1:] if stacked else path)
        if stacked:
            shape = shape[1:]
        if transform == "transpose":
            src_shape = shape[::-1]
        elif transform == "conv":
            src_shape = (shape[1], config.in_channels, *config.patch_size)
        else:
            src_shape = shape
        if stacked:
            for i in range(config.num_layers):
                out[f"blocks.{i}.{name}"] = Target(path, i, transform, src_shape)
        else:
            out[name] = Target(path, None, transform, src_shape)
    return out


def make_plan(source: SafetensorsSource, layout: str, config, abstract_state) -> Plan:
    """Check the source against our state; raise ONE ValueError listing every problem."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown source layout {layout!r}; expected one of {LAYOUTS}")
    rename = official_to_diffusers_key if layout == "wan" else (lambda k: k)
    expected = expected_keys(config, abstract_state)
    reads, ignored, unexpected, mismatched, seen = {}, [], [], [], {}
    for key in source.keys():
        name = rename(key)
        if name not in expected:
            (ignored if any(p in name for p in IGNORED_KEY_PATTERNS) else unexpected).append(key)
            continue
        if name in seen:
            unexpected.append(f"{key} (maps to {name}, already given by {seen[name]})")
            continue
        seen[name] = key
        target = expected[name]
        shape = source.shape(key)
        if shape != target.source_shape:
            mismatched.append(f"{key}: checkpoint {shape}, model expects {target.source_shape}")
        reads[key] = target
    missing = sorted(set(expected) - set(seen))
    if missing or unexpected or mismatched:
        lines = [f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} "
                 f"shape mismatches converting {str(source.path)!r} ({layout} layout) to "
                 f"Wan {_describe(config)}"]
        detected = detect_layout(source.keys())
        if detected not in (None, layout):
            lines.append(f"hint: the keys look like the {detected!r} layout, not {layout!r}")
        for title, items in (("missing keys" + (" (diffusers names)" if layout == "wan" else ""),
                              missing), ("unexpected keys", sorted(unexpected)),
                             ("shape mismatches", mismatched)):
            if items:
                lines.append(f"{title}:")
                lines.extend(f"  {item}" for item in items)
        raise ValueError("\n".join(lines))
    leaves = {tuple(str(p) for p in path): (tuple(var.shape), np.dtype(var.dtype))
              for path, var in nnx.to_flat_state(abstract_state)}
    return Plan(layout, reads, leaves, sorted(ignored))


def _describe(config) -> str:
    return (f"(layers={config.num_layers}, heads={config.num_attention_heads}x"
            f"{config.attention_head_dim}, in_channels={config.in_channels}, "
            f"image_dim={config.image_dim})")


def abstract_wan_state(config, dtype):
    """(graphdef, abstract state) of a model with `dtype` activations and weights."""
    from svg2_jax.models.wan.model import WanTransformer3DModel

    model = nnx.eval_shape(lambda: WanTransformer3DModel(
        config, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)))
    return nnx.split(model)


def convert_to_orbax(src: str | os.PathLike, layout: str, preset, out: str | os.PathLike, *,
                     dtype=jnp.bfloat16, overwrite: bool = False,
                     progress: Callable[[str], None] | None = None) -> ConversionReport:
    """Convert a safetensors checkpoint (`layout` "diffusers" or "wan") to an orbax
    checkpoint directory `out` loadable by `svg2_jax.models.wan.load`.

    `out` gets `wan_config.json` (the architecture and weight dtype) and `state/` (the orbax
    pytree of the NNX parameters). It is written to a temporary directory next to `out` and
    renamed into place only when complete, so a failure leaves nothing behind.
    dtype: weight dtype of the converted parameters (norms, `scale_shift_table`s and the
    timestep MLP stay float32, as in the model).
    """
    from svg2_jax.models.wan.config import get_config

    config = get_config(preset)
    run = common.ConversionRun.start(Path(out), overwrite)
    _, abstract = abstract_wan_state(config, dtype)
    with SafetensorsSource(src) as source:
        return run.write(source, make_plan(source, layout, config, abstract), config=config,
                         dtype=dtype, src=src, layout=layout, fmt=FORMAT,
                         config_file=CONFIG_FILE, progress=progress)


def read_orbax_meta(path: str | os.PathLike) -> dict | None:
    """The `wan_config.json` of one of our orbax checkpoints, or None if `path` is not one."""
    return common.read_orbax_meta(path, CONFIG_FILE, FORMAT)
