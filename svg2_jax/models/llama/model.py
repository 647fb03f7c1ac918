"""The Llama decoder stack as Flax NNX modules (transformers' `LlamaModel`: HunyuanVideo's
text encoder), returning any of the hidden states transformers' `output_hidden_states`
gives.

Module names are transformers' (transformers 5.24 `models/llama/modeling_llama.py`:
`embed_tokens`, `layers.{i}.self_attn.{q,k,v,o}_proj`, `layers.{i}.mlp.{gate,up,down}_proj`,
`layers.{i}.input_layernorm`, `layers.{i}.post_attention_layernorm`, `norm`), so the
checkpoint keys are these paths; the layers' parameters are stacked on a leading layer
axis and run with one `jax.lax.scan` (only the layers the requested hidden state needs).

Attention is causal plus the padding mask, grouped-query (key/value heads shared by
groups of query heads), with rotary embeddings on rotate-half pairs at positions 0..S-1
(transformers' default `position_ids`, whatever the padding).

Precision (default bf16): the RMS norms and the rotary tables compute in float32 (the
tables are then cast to `dtype`, as transformers does); the residual stream and matmuls run
in `dtype`.

    model = LlamaModel(PRESETS["hunyuan-video-llama"], rngs=nnx.Rngs(0))
    last = model(input_ids, attention_mask)                   # [B, S, hidden] (final norm)
    third_last = model(input_ids, attention_mask, hidden_state=-3)   # what HunyuanVideo takes
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from svg2_jax.models.common.layers import RMSNorm
from svg2_jax.models.common.stack import scan_blocks, stacked_blocks
from svg2_jax.models.common.text_encoder import ACTIVATIONS, check_ids, key_padding_mask, linear
from svg2_jax.models.llama.config import LlamaConfig


def inverse_frequencies(config: LlamaConfig) -> np.ndarray:
    """[head_dim / 2] float32 rotary frequencies: transformers' default, linear or llama3
    rope initialisation (`modeling_rope_utils`), in its float32 operations."""
    d = config.head_dim
    inv = (np.float32(1.0) / (np.float32(config.rope_theta)
                              ** (np.arange(0, d, 2).astype(np.float32) / np.float32(d))))
    if config.rope_type == "linear":
        return inv / np.float32(config.rope_factor)
    if config.rope_type == "llama3":
        factor = config.rope_factor
        low, high = config.rope_low_freq_factor, config.rope_high_freq_factor
        context = config.rope_original_max_position_embeddings
        wavelen = np.float32(2 * math.pi) / inv
        scaled = np.where(wavelen > context / low, inv / np.float32(factor), inv)
        smooth = ((np.float32(context) / wavelen - np.float32(low))
                  / np.float32(high - low)).astype(np.float32)
        smoothed = (1 - smooth) * scaled / np.float32(factor) + smooth * scaled
        medium = ~(wavelen < context / high) & ~(wavelen > context / low)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    return inv


def rotary_tables(config: LlamaConfig, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each [length, head_dim] float32, for positions 0..length-1, the
    frequencies repeated over both halves (rotate-half layout)."""
    freqs = np.arange(length, dtype=np.float32)[:, None] * inverse_frequencies(config)[None]
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb), np.sin(emb)


def rotate_half_embed(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """transformers' `apply_rotary_pos_emb` for one tensor: x * cos + rotate_half(x) * sin.
    x: [B, S, H, D]; cos, sin: [S, D] in x.dtype."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[None, :, None] + rotated * sin[None, :, None]


class LlamaAttention(nnx.Module):
    """Causal grouped-query self-attention with rotary embeddings."""

    def __init__(self, config: LlamaConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(bias=config.attention_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        h, kv, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.head_dim = d
        self.q_proj = linear(config.hidden_size, h * d, **kw)
        self.k_proj = linear(config.hidden_size, kv * d, **kw)
        self.v_proj = linear(config.hidden_size, kv * d, **kw)
        self.o_proj = linear(h * d, config.hidden_size, **kw)

    def __call__(self, x: jax.Array, rotary, mask: jax.Array | None) -> jax.Array:
        """x: [B, S, hidden]; rotary: (cos, sin) [S, head_dim]; mask: [B, 1, 1, S] bool key
        padding or None -> [B, S, hidden]."""
        b, s, _ = x.shape
        q, k, v = (p(x).reshape(b, s, -1, self.head_dim)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = rotate_half_embed(q, *rotary), rotate_half_embed(k, *rotary)
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True,
                                           scale=self.head_dim ** -0.5)
        return self.o_proj(out.reshape(b, s, -1))


class LlamaMLP(nnx.Module):
    """SwiGLU: down_proj(act(gate_proj x) * up_proj x)."""

    def __init__(self, config: LlamaConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(bias=config.mlp_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.act = config.hidden_act
        self.gate_proj = linear(config.hidden_size, config.intermediate_size, **kw)
        self.up_proj = linear(config.hidden_size, config.intermediate_size, **kw)
        self.down_proj = linear(config.intermediate_size, config.hidden_size, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(ACTIVATIONS[self.act](self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nnx.Module):
    """Pre-norm attention and MLP, each with its residual."""

    def __init__(self, config: LlamaConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.self_attn = LlamaAttention(config, **kw)
        self.mlp = LlamaMLP(config, **kw)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def __call__(self, h: jax.Array, rotary, mask: jax.Array | None) -> jax.Array:
        h = h + self.self_attn(self.input_layernorm(h), rotary, mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaModel(nnx.Module):
    """transformers' `LlamaModel`: token ids (+ padding mask) -> one of its hidden states."""

    def __init__(self, config: LlamaConfig, *, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16,
                 rngs: nnx.Rngs):
        self.config, self.dtype = config, dtype
        self.embed_tokens = nnx.Embed(config.vocab_size, config.hidden_size, dtype=dtype,
                                      param_dtype=param_dtype, rngs=rngs)
        self.layers = stacked_blocks(config.num_hidden_layers, lambda r: LlamaDecoderLayer(
            config, dtype=dtype, param_dtype=param_dtype, rngs=r), rngs)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
                 hidden_state: int = -1) -> jax.Array:
        """input_ids: [B, S] int; attention_mask: [B, S] (nonzero = a real token) or None.

        hidden_state: which entry of transformers' `output_hidden_states` tuple (length
          num_hidden_layers + 1) to return: 0 the embeddings, i the output of layer i - 1,
          num_hidden_layers (or -1) the last layer's output after the final norm (the
          `last_hidden_state`); negative counts from the end, so HunyuanVideo's
          `hidden_states[-(num_hidden_layers_to_skip + 1)]` is hidden_state=-3. Only the
          layers it needs run.
        Returns [B, S, hidden_size] in `dtype`.
        """
        check_ids("LlamaModel", input_ids, attention_mask)
        layers = hidden_state_layers(self.config, hidden_state)
        cos, sin = rotary_tables(self.config, input_ids.shape[1])
        rotary = (jnp.asarray(cos, self.dtype), jnp.asarray(sin, self.dtype))
        mask = key_padding_mask(attention_mask)
        h = self.embed_tokens(input_ids)
        h, _ = scan_blocks(first_blocks(self.layers, layers),
                           lambda layer, h, _: (layer(h, rotary, mask), None), h, None)
        if layers == self.config.num_hidden_layers:
            h = self.norm(h)
        return h.astype(self.dtype)


def hidden_state_layers(config: LlamaConfig, hidden_state: int) -> int:
    """How many layers transformers' `hidden_states[hidden_state]` has run (the final norm
    applies when it is all of them); a ValueError outside the tuple."""
    n = config.num_hidden_layers
    if not isinstance(hidden_state, int) or not -(n + 1) <= hidden_state <= n:
        raise ValueError(f"LlamaModel: hidden_state must be an int in [{-(n + 1)}, {n}] (an "
                         f"index into the {n + 1} hidden states), got {hidden_state!r}")
    return hidden_state % (n + 1)


def first_blocks(blocks: nnx.Module, count: int) -> nnx.Module:
    """Stacked blocks cut to the first `count` on the layer axis."""
    graphdef, params = nnx.split(blocks)
    return nnx.merge(graphdef, jax.tree.map(lambda p: p[:count], params))
