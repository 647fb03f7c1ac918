"""Exact attention restricted to selected (query cluster, key cluster) blocks, in pure JAX.

Two implementations of the same function; the Pallas Hopper kernel is the fast one:
- `sparse_attention_chunked`: on the permuted layout, one query tile at a time, so
  memory is N * q_tile * S_k floats, never S x S. Its work is O(S^2) (every tile
  meets every key, masked): a portable, exact reference rather than a speed-up.
- `sparse_attention_masked_dense`: the whole S x S mask in the original token order,
  for tests on small inputs.
A query whose selection holds no key gets a zero output, never NaN, and a
log-sum-exp of -inf. Both return (out, lse): out [N, Sq, D] in q.dtype and lse
[N, Sq] float32 (natural log of the softmax denominator, scale included), so partial
attentions over disjoint key sets can be merged exactly (`merge_attention`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# masked_dense refuses problems whose score matrix would exceed this many elements.
MASKED_DENSE_MAX_ELEMENTS = 1 << 26


def masked_attention(q, k, v, mask, scale):
    """Softmax attention over the keys a mask allows: q: [N, Tq, D]; k, v: [N, Sk, D];
    mask: [N, Tq, Sk] bool (broadcastable) -> (out [N, Tq, D] in q.dtype, lse [N, Tq]
    float32). A row with no allowed key gets out 0 and lse -inf."""
    s = jnp.einsum("nqd,nkd->nqk", q, k, preferred_element_type=jnp.float32) * scale
    s = jnp.where(mask, s, -jnp.inf)
    m = jnp.max(s, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)  # all-masked rows: exp(-inf - 0) = 0, no NaN
    p = jnp.exp(s - m)
    l = jnp.sum(p, axis=-1, keepdims=True)
    o = jnp.einsum("nqk,nkd->nqd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    lse = jnp.where(l > 0, m + jnp.log(jnp.where(l > 0, l, 1.0)), -jnp.inf)[..., 0]
    return (o / jnp.where(l > 0, l, 1.0)).astype(q.dtype), lse


def merge_attention(o1, lse1, o2, lse2):
    """Softmax attention over the union of two disjoint key sets from the two partial
    results: o: [..., D], lse: [...] float32. A side with lse = -inf contributes nothing."""
    m = jnp.maximum(lse1, lse2)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    w1, w2 = jnp.exp(lse1 - m), jnp.exp(lse2 - m)
    total = w1 + w2
    o = (o1.astype(jnp.float32) * w1[..., None] + o2.astype(jnp.float32) * w2[..., None])
    o = o / jnp.where(total > 0, total, 1.0)[..., None]
    lse = jnp.where(total > 0, m + jnp.log(jnp.where(total > 0, total, 1.0)), -jnp.inf)
    return o.astype(o1.dtype), lse


def _token_mask(selected, q_labels, k_labels):
    """selected: [N, QC, KC]; q_labels: [N, Tq]; k_labels: [N, Sk] -> [N, Tq, Sk] bool."""
    return jax.vmap(lambda sel, ql, kl: sel[ql][:, kl])(selected, q_labels, k_labels)


def sparse_attention_masked_dense(q, k, v, q_labels, k_labels, selected, scale):
    """Original token order. q: [N, Sq, D]; k, v: [N, Sk, D]; q_labels: [N, Sq];
    k_labels: [N, Sk]; selected: [N, QC, KC] bool -> [N, Sq, D]."""
    n, sq, _ = q.shape
    if n * sq * k.shape[1] > MASKED_DENSE_MAX_ELEMENTS:
        raise ValueError(
            f"backend='masked_dense' materialises the full {sq} x {k.shape[1]} score matrix "
            f"for {n} heads; it is for small test problems. Use backend='jax' instead.")
    return masked_attention(q, k, v, _token_mask(selected, q_labels, k_labels), scale)


def sparse_attention_chunked(q, k, v, q_labels, k_labels, selected, scale, q_tile=256):
    """Any token order (SVG2 passes the permuted one). Same arguments as the masked
    dense version; queries are processed `q_tile` rows at a time."""
    n, sq, d = q.shape
    if sq <= q_tile:
        return masked_attention(q, k, v, _token_mask(selected, q_labels, k_labels),
                                         scale)
    num_tiles = -(-sq // q_tile)
    pad = num_tiles * q_tile - sq
    q_t = jnp.pad(q, ((0, 0), (0, pad), (0, 0))).reshape(n, num_tiles, q_tile, d)
    ql_t = jnp.pad(q_labels, ((0, 0), (0, pad))).reshape(n, num_tiles, q_tile)

    def tile(args):
        qi, qli = args
        return masked_attention(qi, k, v, _token_mask(selected, qli, k_labels), scale)

    out, lse = jax.lax.map(tile, (jnp.moveaxis(q_t, 1, 0), jnp.moveaxis(ql_t, 1, 0)))
    out = jnp.moveaxis(out, 0, 1).reshape(n, num_tiles * q_tile, d)[:, :sq]
    return out, jnp.moveaxis(lse, 0, 1).reshape(n, num_tiles * q_tile)[:, :sq]
