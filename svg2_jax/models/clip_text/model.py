"""The CLIP text transformer as Flax NNX modules (transformers' `CLIPTextModel`:
HunyuanVideo's second text encoder, whose pooled output it takes).

Module names are transformers 5.24's (`models/clip/modeling_clip.py`: `embeddings.token_embedding`,
`embeddings.position_embedding`, `encoder.layers.{i}.self_attn.{q,k,v,out}_proj`,
`.layer_norm1`, `.mlp.fc1`, `.mlp.fc2`, `.layer_norm2`, `final_layer_norm`), so the
checkpoint keys are these paths (checkpoints saved by transformers 4, HunyuanVideo's among
them, put `text_model.` before each, removed on read); the layers' parameters are stacked
on a leading layer axis and run with one `jax.lax.scan`.

Attention is causal (plus the padding mask when one is given; HunyuanVideo passes none).
The pooled output is the final-norm state at the end-of-text token, chosen by
transformers' rule (`CLIPTextConfig.eos_token_id`).

Precision (default bf16): LayerNorms compute in float32; the residual stream and matmuls
run in `dtype`.

    model = CLIPTextModel(PRESETS["clip-vit-l-text"], rngs=nnx.Rngs(0))
    last, pooled = model(input_ids)                 # [B, S, 768], [B, 768]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from svg2_jax.models.clip_text.config import LEGACY_EOS_TOKEN_ID, CLIPTextConfig
from svg2_jax.models.common.layers import FP32LayerNorm
from svg2_jax.models.common.stack import scan_blocks, stacked_blocks
from svg2_jax.models.common.text_encoder import ACTIVATIONS, check_ids, key_padding_mask, linear


class CLIPTextEmbeddings(nnx.Module):
    """Token plus learned position embeddings (positions 0..S-1)."""

    def __init__(self, config: CLIPTextConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.token_embedding = nnx.Embed(config.vocab_size, config.hidden_size, **kw)
        self.position_embedding = nnx.Embed(config.max_position_embeddings, config.hidden_size,
                                            **kw)

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        positions = jnp.arange(input_ids.shape[1])
        return self.token_embedding(input_ids) + self.position_embedding(positions)[None]


class CLIPAttention(nnx.Module):
    """Multi-head self-attention (biased projections, logits scaled 1/sqrt(d)): causal in
    the text tower, bidirectional in the vision tower (`svg2_jax.models.clip_vision`)."""

    def __init__(self, config: CLIPTextConfig, *, causal: bool, dtype, param_dtype,
                 rngs: nnx.Rngs):
        kw = dict(bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d = config.hidden_size
        self.heads, self.causal = config.num_attention_heads, causal
        self.k_proj = linear(d, d, **kw)
        self.v_proj = linear(d, d, **kw)
        self.q_proj = linear(d, d, **kw)
        self.out_proj = linear(d, d, **kw)

    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        b, s, d = x.shape
        q, k, v = (p(x).reshape(b, s, self.heads, -1)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=self.causal,
                                           scale=(d // self.heads) ** -0.5)
        return self.out_proj(out.reshape(b, s, d))


class CLIPMLP(nnx.Module):
    """fc1 -> act -> fc2."""

    def __init__(self, config: CLIPTextConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.act = config.hidden_act
        self.fc1 = linear(config.hidden_size, config.intermediate_size, **kw)
        self.fc2 = linear(config.intermediate_size, config.hidden_size, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(ACTIVATIONS[self.act](self.fc1(x)))


class CLIPEncoderLayer(nnx.Module):
    """Pre-LayerNorm attention and MLP, each with its residual."""

    def __init__(self, config: CLIPTextConfig, *, causal: bool, dtype, param_dtype,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype
        self.self_attn = CLIPAttention(config, causal=causal, **kw)
        self.layer_norm1 = FP32LayerNorm(config.hidden_size, config.layer_norm_eps, True)
        self.mlp = CLIPMLP(config, **kw)
        self.layer_norm2 = FP32LayerNorm(config.hidden_size, config.layer_norm_eps, True)

    def __call__(self, h: jax.Array, mask: jax.Array | None) -> jax.Array:
        h = h + self.self_attn(self.layer_norm1(h).astype(self.dtype), mask)
        return h + self.mlp(self.layer_norm2(h).astype(self.dtype))


class CLIPEncoder(nnx.Module):
    """The stacked layers (the text and the vision tower's; `causal` tells them apart)."""

    def __init__(self, config: CLIPTextConfig, *, causal: bool = True, dtype, param_dtype,
                 rngs: nnx.Rngs):
        self.layers = stacked_blocks(config.num_hidden_layers, lambda r: CLIPEncoderLayer(
            config, causal=causal, dtype=dtype, param_dtype=param_dtype, rngs=r), rngs)

    def __call__(self, h: jax.Array, mask: jax.Array | None) -> jax.Array:
        h, _ = scan_blocks(self.layers, lambda layer, h, _: (layer(h, mask), None), h, None)
        return h

    def hidden_states(self, h: jax.Array, mask: jax.Array | None) -> jax.Array:
        """Every layer's output, stacked: [num_layers, B, S, D] (transformers'
        `hidden_states[1:]`)."""
        def body(layer, h, _):
            h = layer(h, mask)
            return h, h

        return scan_blocks(self.layers, body, h, None)[1]


class CLIPTextModel(nnx.Module):
    """transformers' `CLIPTextModel`: token ids -> (last_hidden_state, pooler_output)."""

    def __init__(self, config: CLIPTextConfig, *, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.config, self.dtype = config, dtype
        self.embeddings = CLIPTextEmbeddings(config, **kw)
        self.encoder = CLIPEncoder(config, **kw)
        self.final_layer_norm = FP32LayerNorm(config.hidden_size, config.layer_norm_eps, True)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array]:
        """input_ids: [B, S] int with S <= max_position_embeddings; attention_mask: [B, S]
        (nonzero = a real token) or None (causal only, as HunyuanVideo calls it) ->
        (last_hidden_state [B, S, hidden], pooled [B, hidden]), both in `dtype`."""
        check_ids("CLIPTextModel", input_ids, attention_mask)
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(f"CLIPTextModel: {input_ids.shape[1]} tokens, more than "
                             f"max_position_embeddings={self.config.max_position_embeddings}")
        h = self.encoder(self.embeddings(input_ids), key_padding_mask(attention_mask))
        last = self.final_layer_norm(h).astype(self.dtype)
        return last, last[jnp.arange(last.shape[0]), eos_positions(self.config, input_ids)]


def eos_positions(config: CLIPTextConfig, input_ids: jax.Array) -> jax.Array:
    """[B] the position transformers pools each row at: the highest id when eos_token_id is
    the legacy 2, else the first eos_token_id (0 if a row has none)."""
    if config.eos_token_id == LEGACY_EOS_TOKEN_ID:
        return jnp.argmax(input_ids, axis=-1)
    return jnp.argmax(input_ids == config.eos_token_id, axis=-1)
