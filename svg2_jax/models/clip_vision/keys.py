"""CLIP vision checkpoint keys: the `KeyMap` that names our parameters in transformers' keys
(transformers 5's `CLIPVisionModel.save_pretrained`: `embeddings.patch_embedding.weight`,
`encoder.layers.0.self_attn.q_proj.weight`, ...; see `svg2_jax.checkpoints.keymap`).

One layout, "transformers", in two spellings: transformers 4 saved every key under
`vision_model.` (Wan2.1 I2V's `image_encoder/`, laion's CLIP), removed on read as
transformers 5 does. Skipped as transformers' `CLIPVisionModel` skips them: the
`position_ids` buffer and `visual_projection` (a `CLIPVisionModelWithProjection` head Wan
does not use).
"""

from __future__ import annotations

from svg2_jax.checkpoints.keymap import KeyMap

KEYS = KeyMap(
    stacked=((("encoder", "layers"), "num_hidden_layers"),),
    patch_embedding=("embeddings", "patch_embedding"),
    ignored=("embeddings.position_ids", "visual_projection."),
    diffusers_markers=("vision_model.", "encoder.layers.", "embeddings.", "pre_layrnorm."),
    canonical_layout="transformers",
    key_prefixes=("vision_model.",),
)
