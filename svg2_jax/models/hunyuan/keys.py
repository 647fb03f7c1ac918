"""HunyuanVideo checkpoint key tables: official release -> diffusers, and the `KeyMap` that
names our parameters in diffusers' keys (see `svg2_jax.checkpoints.keymap`).

Two source layouts:
  "diffusers": `HunyuanVideoTransformer3DModel.save_pretrained` keys
    (`transformer_blocks.0.attn.to_q.weight`).
  "hunyuan": the official HunyuanVideo release keys (`double_blocks.0.img_attn_qkv.weight`,
    `single_blocks.0.linear1.weight`, `txt_in.*`, `time_in.*`, `vector_in.*`,
    `guidance_in.*`, `img_in.*`, `final_layer.*`, optionally prefixed
    `model.diffusion_model.`), normally a torch `.pt` state dict (`mp_rank_00_model_states.pt`,
    which holds it under "module"), or safetensors with the same keys. They are renamed to
    diffusers keys with the mapping of diffusers' `convert_hunyuan_video_transformer_to_diffusers`
    (`diffusers/loaders/single_file_utils.py`, identical to
    `scripts/convert_hunyuan_video_to_diffusers.py`, diffusers 0.42.1): its rename table
    applied in the same order, then its special cases: the fused `*_qkv` tensors chunked in 3
    along dim 0; the single blocks' `linear1` split into q, k, v (inner_dim rows each) and the
    MLP input (the rest: diffusers hardcodes inner_dim = 3072, the 720p model's, we take it
    from the config); the final `adaLN_modulation.1` halves swapped from (shift, scale) to
    diffusers' (scale, shift). The split happens as each piece is read (`RenamedSource`), so
    nothing fused is held twice.
Our module names are diffusers' (`svg2_jax/models/hunyuan/model.py`); the dual, single and
refiner blocks are stacked containers.
"""

from __future__ import annotations

from svg2_jax.checkpoints.keymap import OFFICIAL_PREFIX, KeyMap, replace_in_order
from svg2_jax.checkpoints.tensor_source import Rows

# top-level modules of the official HunyuanVideo transformer (HYVideoDiffusionTransformer)
OFFICIAL_ROOTS = ("img_in.", "txt_in.", "time_in.", "vector_in.", "guidance_in.",
                  "double_blocks.", "single_blocks.", "final_layer.")

# diffusers' TRANSFORMER_KEYS_RENAME_DICT for HunyuanVideo, same order (str.replace applied
# in sequence: "img_mod.linear" must come before "modulation.linear")
OFFICIAL_RENAMES = (
    ("img_in", "x_embedder"),
    ("time_in.mlp.0", "time_text_embed.timestep_embedder.linear_1"),
    ("time_in.mlp.2", "time_text_embed.timestep_embedder.linear_2"),
    ("guidance_in.mlp.0", "time_text_embed.guidance_embedder.linear_1"),
    ("guidance_in.mlp.2", "time_text_embed.guidance_embedder.linear_2"),
    ("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
    ("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
    ("double_blocks", "transformer_blocks"),
    ("img_attn_q_norm", "attn.norm_q"),
    ("img_attn_k_norm", "attn.norm_k"),
    ("img_attn_proj", "attn.to_out.0"),
    ("txt_attn_q_norm", "attn.norm_added_q"),
    ("txt_attn_k_norm", "attn.norm_added_k"),
    ("txt_attn_proj", "attn.to_add_out"),
    ("img_mod.linear", "norm1.linear"),
    ("img_norm1", "norm1.norm"),
    ("img_norm2", "norm2"),
    ("img_mlp", "ff"),
    ("txt_mod.linear", "norm1_context.linear"),
    ("txt_norm1", "norm1.norm"),
    ("txt_norm2", "norm2_context"),
    ("txt_mlp", "ff_context"),
    ("self_attn_proj", "attn.to_out.0"),
    ("modulation.linear", "norm.linear"),
    ("pre_norm", "norm.norm"),
    ("final_layer.norm_final", "norm_out.norm"),
    ("final_layer.linear", "proj_out"),
    ("fc1", "net.0.proj"),
    ("fc2", "net.2"),
    ("input_embedder", "proj_in"),
)
# diffusers' remap_txt_in_ rename_key, same order
_TXT_IN_RENAMES = (
    ("individual_token_refiner.blocks", "token_refiner.refiner_blocks"),
    ("adaLN_modulation.1", "norm_out.linear"),
    ("txt_in", "context_embedder"),
    ("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1"),
    ("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2"),
    ("c_embedder", "time_text_embed.text_embedder"),
    ("mlp", "ff"),
)


def _chunks(n: int, parts: int) -> list[tuple[int, int]]:
    """torch.chunk(parts) row ranges of n rows (each ceil(n / parts), the last one short)."""
    size = -(-n // parts)
    return [(min(i * size, n), min((i + 1) * size, n)) for i in range(parts)]


def official_to_diffusers(key: str, rows: int, inner_dim: int) -> list[tuple[str, Rows | None]]:
    """An official HunyuanVideo key -> the diffusers keys made from it, each with the dim-0
    row ranges of the official tensor it takes (None: the whole tensor). rows: the official
    tensor's dim 0; inner_dim: the model width (the single blocks' q, k, v rows)."""
    key = replace_in_order(key.removeprefix(OFFICIAL_PREFIX), OFFICIAL_RENAMES)
    # diffusers' TRANSFORMER_SPECIAL_KEYS_REMAP, in its order
    if "txt_in" in key:
        if "self_attn_qkv" in key:
            return [(replace_in_order(key.replace("self_attn_qkv", f"attn.to_{c}"),
                                      _TXT_IN_RENAMES), (r,))
                    for c, r in zip("qkv", _chunks(rows, 3))]
        return [(replace_in_order(key, _TXT_IN_RENAMES), None)]
    if "img_attn_qkv" in key:
        return [(key.replace("img_attn_qkv", f"attn.to_{c}"), (r,))
                for c, r in zip("qkv", _chunks(rows, 3))]
    if "txt_attn_qkv" in key:
        return [(key.replace("txt_attn_qkv", f"attn.add_{c}_proj"), (r,))
                for c, r in zip("qkv", _chunks(rows, 3))]
    if "single_blocks" in key:
        for leaf in ("weight", "bias"):
            if f"linear1.{leaf}" in key:
                base = key.replace("single_blocks", "single_transformer_blocks").removesuffix(
                    f".linear1.{leaf}")
                h = inner_dim
                ranges = [(0, h), (h, 2 * h), (2 * h, 3 * h), (3 * h, max(rows, 3 * h))]
                ranges = [(min(a, rows), min(b, rows)) for a, b in ranges]
                names = [f"{base}.attn.to_q.{leaf}", f"{base}.attn.to_k.{leaf}",
                         f"{base}.attn.to_v.{leaf}", f"{base}.proj_mlp.{leaf}"]
                return [(n, (r,)) for n, r in zip(names, ranges)]
        key = key.replace("single_blocks", "single_transformer_blocks")
        key = key.replace("linear2", "proj_out").replace("q_norm", "attn.norm_q")
        return [(key.replace("k_norm", "attn.norm_k"), None)]
    if "final_layer.adaLN_modulation.1" in key:
        shift, scale = _chunks(rows, 2)
        return [(key.replace("final_layer.adaLN_modulation.1", "norm_out.linear"),
                 (scale, shift))]
    return [(key, None)]


KEYS = KeyMap(
    stacked=((("transformer_blocks",), "num_layers"),
             (("single_transformer_blocks",), "num_single_layers"),
             (("context_embedder", "token_refiner", "refiner_blocks"), "num_refiner_layers")),
    feed_forwards=("ff", "ff_context"),
    patch_embedding=("x_embedder", "proj"),
    ignored=(),
    diffusers_markers=("context_embedder.", "x_embedder.", "transformer_blocks.",
                       "single_transformer_blocks."),
    official_layout="hunyuan",
    official_roots=OFFICIAL_ROOTS,
    official_markers=("txt_in.", "img_in.", "double_blocks.", "single_blocks."),
    official_to_diffusers=lambda key, shape, config: official_to_diffusers(
        key, shape[0] if shape else 0, config.inner_dim),
)
