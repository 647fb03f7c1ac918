"""Wan2.1 checkpoint key tables: official release -> diffusers, and the `KeyMap` that names
our parameters in diffusers' keys (see `svg2_jax.checkpoints.keymap`).

Two source layouts:
  "diffusers": `WanTransformer3DModel.save_pretrained` keys (`blocks.0.attn1.to_q.weight`).
  "wan": the official Wan2.1 release keys (`blocks.0.self_attn.q.weight`, `head.head.*`,
    optionally prefixed `model.diffusion_model.`), renamed to diffusers keys with the
    mapping of diffusers' single_file_utils `convert_wan_transformer_to_diffusers`.
Our module names are diffusers' (`svg2_jax/models/wan/model.py`); diffusers'
`_keys_to_ignore_on_load_unexpected` (`norm_added_q`) are skipped and reported.
"""

from __future__ import annotations

from svg2_jax.checkpoints.keymap import OFFICIAL_PREFIX, KeyMap, replace_in_order

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
# top-level modules of the official Wan2.1 transformer (WanModel)
OFFICIAL_ROOTS = ("patch_embedding.", "text_embedding.", "time_embedding.", "time_projection.",
                  "blocks.", "head.", "img_emb.")


def official_to_diffusers_key(key: str) -> str:
    """An official Wan2.1 key as diffusers names it (single_file_utils' mapping)."""
    return replace_in_order(key.removeprefix(OFFICIAL_PREFIX), OFFICIAL_TO_DIFFUSERS)


KEYS = KeyMap(
    stacked=((("blocks",), "num_layers"),),
    feed_forwards=("ffn", "ff"),
    patch_embedding=("patch_embedding",),
    # diffusers' WanTransformer3DModel._keys_to_ignore_on_load_unexpected
    ignored=("norm_added_q",),
    diffusers_markers=("condition_embedder.",),
    official_layout="wan",
    official_roots=OFFICIAL_ROOTS,
    official_markers=("time_embedding.", "text_embedding.", "head.head."),
    official_to_diffusers=lambda key, shape, config: [(official_to_diffusers_key(key), None)],
)
