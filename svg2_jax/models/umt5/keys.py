"""umT5 encoder checkpoint keys: the `KeyMap` that names our parameters in transformers' keys
(`UMT5EncoderModel.save_pretrained`: `shared.weight`,
`encoder.block.0.layer.0.SelfAttention.q.weight`, ...; see `svg2_jax.checkpoints.keymap`).

One layout, "transformers". The token table is tied: transformers saves `shared.weight`
(and older files also the copy `encoder.embed_tokens.weight`, which is read only when
`shared.weight` is absent, else skipped and reported).
"""

from __future__ import annotations

from svg2_jax.checkpoints.keymap import KeyMap

TRANSFORMERS = "transformers"

KEYS = KeyMap(
    stacked=((("encoder", "block"), "num_layers"),),
    feed_forwards=(),
    patch_embedding=(),
    ignored=(),
    diffusers_markers=("encoder.block.",),
    canonical_layout=TRANSFORMERS,
    aliases=(("encoder.embed_tokens.weight", "shared.weight"),),
)
