"""CLIP text checkpoint keys: the `KeyMap` that names our parameters in transformers' keys
(transformers 5's `CLIPTextModel.save_pretrained`: `embeddings.token_embedding.weight`,
`encoder.layers.0.self_attn.q_proj.weight`, ...; see `svg2_jax.checkpoints.keymap`).

One layout, "transformers", in two spellings: transformers 4 saved every key under
`text_model.` (HunyuanVideo's `text_encoder_2/`, OpenAI's CLIP), removed on read as
transformers 5 does. The `position_ids` buffer older transformers saved is skipped, as
transformers skips it.
"""

from __future__ import annotations

from svg2_jax.checkpoints.keymap import KeyMap

TRANSFORMERS = "transformers"

KEYS = KeyMap(
    stacked=((("encoder", "layers"), "num_hidden_layers"),),
    feed_forwards=(),
    patch_embedding=(),
    ignored=("embeddings.position_ids",),
    diffusers_markers=("text_model.", "encoder.layers.", "embeddings."),
    canonical_layout=TRANSFORMERS,
    key_prefixes=("text_model.",),
)
