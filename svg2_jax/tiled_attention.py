"""Exact dense attention one block of query rows at a time, for backends without a fused
attention kernel (the CPU): XLA's own attention there holds the [B, H, S, S] logits,
this holds [B, H, TILE, S] at a time, the memory profile of a flash kernel. Selected
with implementation="tiled" wherever the layer attentions take a dense implementation
(`svg2_jax.layer_attention`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

TILED = "tiled"
TILE = 256


def tiled_attention(q, k, v, kv_lengths=None, tile: int = TILE):
    """softmax(q k^T / sqrt(D)) v over blocks of `tile` query rows (`lax.map`).
    q: [B, Sq, H, D]; k, v: [B, Sk, H, D]; kv_lengths: [B] int, keys at or after it are
    masked (as `jax.nn.dot_product_attention`'s key_value_seq_lengths), or None."""
    b, s, h, d = q.shape
    blocks = -(-s // tile)
    qb = jnp.pad(q, ((0, 0), (0, blocks * tile - s), (0, 0), (0, 0)))
    qb = jnp.moveaxis(qb.reshape(b, blocks, tile, h, d), 1, 0)
    out = jax.lax.map(lambda x: jax.nn.dot_product_attention(
        x, k, v, key_value_seq_lengths=kv_lengths), qb)
    return jnp.moveaxis(out, 0, 1).reshape(b, blocks * tile, h, d)[:, :s]
