"""Llama checkpoint keys: the `KeyMap` that names our parameters in transformers' keys
(`LlamaModel.save_pretrained`: `embed_tokens.weight`, `layers.0.self_attn.q_proj.weight`,
`norm.weight`, ...; see `svg2_jax.checkpoints.keymap`).

One layout, "transformers" (HunyuanVideo's `text_encoder/` is a saved `LlamaModel`). The
rotary `inv_freq` buffers older transformers saved are skipped, as transformers skips them.
"""

from __future__ import annotations

from svg2_jax.checkpoints.keymap import KeyMap

TRANSFORMERS = "transformers"

KEYS = KeyMap(
    stacked=((("layers",), "num_hidden_layers"),),
    feed_forwards=(),
    patch_embedding=(),
    ignored=("rotary_emb.inv_freq",),
    diffusers_markers=("layers.", "embed_tokens."),
    canonical_layout=TRANSFORMERS,
)
