"""The umT5 encoder as Flax NNX modules (transformers' `UMT5EncoderModel`, the text encoder
of Wan2.1).

Module names and nesting are transformers' (transformers 5.24 `models/umt5/modeling_umt5.py`:
`shared`, `encoder.block.{i}.layer.0.SelfAttention`, `encoder.block.{i}.layer.1.DenseReluDense`,
`encoder.final_layer_norm`), so the checkpoint keys are these paths; the blocks' parameters
are stacked on a leading layer axis and run with one `jax.lax.scan`.

What differs from T5 and is kept: every block has its own relative position bias table,
and the attention logits are not scaled by 1/sqrt(d_kv).

Precision (default bf16): the T5 RMS norms compute in float32; transformers keeps `wo`
(the feed-forward output projection) in float32 and casts its input up, which makes its
residual stream float32 from the first block on: here `wo` is float32 and the residual
stream float32 throughout. Everything else runs in `dtype`. Pass dtype=param_dtype=float32
for a float32 model (parity tests).

    model = UMT5EncoderModel(PRESETS["umt5-xxl"], rngs=nnx.Rngs(0))
    states = model(input_ids, attention_mask)      # [B, S] int, [B, S] 0/1 -> [B, S, d_model]
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
from svg2_jax.models.umt5.config import UMT5Config


def relative_position_buckets(query_length: int, key_length: int, num_buckets: int,
                              max_distance: int) -> np.ndarray:
    """[query_length, key_length] int32: the bidirectional relative-position bucket of each
    (query, key) pair, the float32 operations of transformers' `_relative_position_bucket`
    (encoder: half the buckets per direction, half of those exact, the rest logarithmic up
    to max_distance)."""
    relative = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
    num_buckets //= 2
    buckets = (relative > 0).astype(np.int64) * num_buckets
    relative = np.abs(relative)
    max_exact = num_buckets // 2
    is_small = relative < max_exact
    # the exact positions' values are discarded below: clip them off log(0)
    far = np.maximum(relative, max_exact).astype(np.float32)
    log_ratio = np.log(far / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
    large = max_exact + (log_ratio * np.float32(num_buckets - max_exact)).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return (buckets + np.where(is_small, relative, large)).astype(np.int32)


class UMT5Attention(nnx.Module):
    """Self-attention with this layer's relative position bias, unscaled logits."""

    def __init__(self, config: UMT5Config, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        inner = config.num_heads * config.d_kv
        self.heads, self.dtype = config.num_heads, dtype
        self.q = linear(config.d_model, inner, **kw)
        self.k = linear(config.d_model, inner, **kw)
        self.v = linear(config.d_model, inner, **kw)
        self.o = linear(inner, config.d_model, **kw)
        self.relative_attention_bias = nnx.Embed(config.relative_attention_num_buckets,
                                                 config.num_heads, dtype=dtype,
                                                 param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array, buckets: jax.Array, mask: jax.Array | None) -> jax.Array:
        """x: [B, S, d_model]; buckets: [S, S] int; mask: [B, 1, 1, S] bool (True = attend)
        or None -> [B, S, d_model]."""
        b, s, _ = x.shape
        q, k, v = (p(x).reshape(b, s, self.heads, -1) for p in (self.q, self.k, self.v))
        bias = self.relative_attention_bias(buckets).transpose(2, 0, 1)[None]  # [1, H, S, S]
        out = jax.nn.dot_product_attention(q, k, v, bias=bias.astype(q.dtype), mask=mask,
                                           scale=1.0)
        return self.o(out.reshape(b, s, -1))


class UMT5LayerSelfAttention(nnx.Module):
    """Pre-norm self-attention with its residual (`layer.0`)."""

    def __init__(self, config: UMT5Config, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.SelfAttention = UMT5Attention(config, dtype=dtype, param_dtype=param_dtype,
                                           rngs=rngs)
        self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)

    def __call__(self, h: jax.Array, buckets: jax.Array, mask: jax.Array | None) -> jax.Array:
        """h: [B, S, d_model] float32 residual stream."""
        x = self.layer_norm(h).astype(self.SelfAttention.dtype)
        return h + self.SelfAttention(x, buckets, mask).astype(jnp.float32)


class UMT5DenseGatedActDense(nnx.Module):
    """act(wi_0 x) * wi_1 x -> wo (wo in float32)."""

    def __init__(self, config: UMT5Config, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.act = config.activation
        self.wi_0 = linear(config.d_model, config.d_ff, **kw)
        self.wi_1 = linear(config.d_model, config.d_ff, **kw)
        self.wo = linear(config.d_ff, config.d_model, bias=False, dtype=jnp.float32,
                         param_dtype=jnp.float32, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.wo((ACTIVATIONS[self.act](self.wi_0(x)) * self.wi_1(x)).astype(jnp.float32))


class UMT5DenseActDense(nnx.Module):
    """wi -> act -> wo (wo in float32)."""

    def __init__(self, config: UMT5Config, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.act = config.activation
        self.wi = linear(config.d_model, config.d_ff, bias=False, dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs)
        self.wo = linear(config.d_ff, config.d_model, bias=False, dtype=jnp.float32,
                         param_dtype=jnp.float32, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.wo(ACTIVATIONS[self.act](self.wi(x)).astype(jnp.float32))


class UMT5LayerFF(nnx.Module):
    """Pre-norm feed-forward with its residual (`layer.1`)."""

    def __init__(self, config: UMT5Config, *, dtype, param_dtype, rngs: nnx.Rngs):
        dense = UMT5DenseGatedActDense if config.is_gated else UMT5DenseActDense
        self.dtype = dtype
        self.DenseReluDense = dense(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)

    def __call__(self, h: jax.Array) -> jax.Array:
        return h + self.DenseReluDense(self.layer_norm(h).astype(self.dtype))


class UMT5Block(nnx.Module):
    """One encoder block: `layer` = [self-attention, feed-forward], as transformers nests it."""

    def __init__(self, config: UMT5Config, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.layer = nnx.List([UMT5LayerSelfAttention(config, **kw), UMT5LayerFF(config, **kw)])

    def __call__(self, h: jax.Array, buckets: jax.Array, mask: jax.Array | None) -> jax.Array:
        return self.layer[1](self.layer[0](h, buckets, mask))


class UMT5Stack(nnx.Module):
    """The encoder stack: stacked blocks and the final RMS norm (its token embedding is the
    model's `shared` table, tied)."""

    def __init__(self, config: UMT5Config, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.block = stacked_blocks(config.num_layers, lambda r: UMT5Block(
            config, dtype=dtype, param_dtype=param_dtype, rngs=r), rngs)
        self.final_layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)

    def __call__(self, h: jax.Array, buckets: jax.Array, mask: jax.Array | None) -> jax.Array:
        h, _ = scan_blocks(self.block, lambda block, h, _: (block(h, buckets, mask), None),
                           h, None)
        return self.final_layer_norm(h)


class UMT5EncoderModel(nnx.Module):
    """transformers' `UMT5EncoderModel`: token ids (+ padding mask) -> last hidden states."""

    def __init__(self, config: UMT5Config, *, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16,
                 rngs: nnx.Rngs):
        self.config, self.dtype = config, dtype
        self.shared = nnx.Embed(config.vocab_size, config.d_model, dtype=dtype,
                                param_dtype=param_dtype, rngs=rngs)
        self.encoder = UMT5Stack(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None
                 ) -> jax.Array:
        """input_ids: [B, S] int; attention_mask: [B, S] (nonzero = a real token; padded keys
        are not attended to) or None -> last_hidden_state [B, S, d_model] in `dtype`."""
        check_ids("UMT5EncoderModel", input_ids, attention_mask)
        s = input_ids.shape[1]
        c = self.config
        buckets = jnp.asarray(relative_position_buckets(
            s, s, c.relative_attention_num_buckets, c.relative_attention_max_distance))
        h = self.shared(input_ids).astype(jnp.float32)
        out = self.encoder(h, buckets, key_padding_mask(attention_mask))
        return out.astype(self.dtype)

