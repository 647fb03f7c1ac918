"""The attention's NaN/Inf policy, in one place (every sparse backend and joint attention
go through `attention.svg2_core`, which applies it).

Dense attention turns a non-finite key or value into NaN for every query of its head (it
enters every row's softmax) and a non-finite query into NaN for its own row. SVG2 must not
do better by accident: k-means and the block selection would otherwise swallow the NaN
(a NaN centroid wins every argmin or loses every comparison) and return finite zeros, and
the NaN centroid would poison the cache for every later step. So:
- the k-means counts non-finite elements as 0 in its centroid means and cold-start rows
  (`finite_or_zero`, in the cast pass it makes anyway; the token still gets a label), so
  the other tokens of the head still cluster and select normally;
- a centroid that still comes out non-finite is never cached: the previous one is kept
  (`keep_finite_centroids`);
- the output and log-sum-exp are NaN wherever dense attention's would be (`poison`): the
  whole row, where dense attention may leave some of its elements finite (an Inf value
  reaches only its own column), and for an infinite key the whole head, where dense
  attention still gives finite rows for the queries that score it -inf (never less
  than dense attention, at the price of a per-head rule). `InputFinite` says which heads
  saw non-finite input (SVG2Stats.nonfinite_input).
Cost: one reduction over each of q, k, v (`input_finite`) and selects that fuse into
passes made anyway; no S x S pass, no host sync.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class InputFinite(NamedTuple):
    """Which inputs of N per-head problems are finite. q_rows: [N, Sq] bool, the query
    row is finite; kv: [N] bool, every key and value of the problem is."""

    q_rows: jax.Array
    kv: jax.Array

    @property
    def head(self) -> jax.Array:
        """[N] bool: the problem's q, k and v are all finite."""
        return self.kv & jnp.all(self.q_rows, axis=-1)


def input_finite(qn: jax.Array, kn: jax.Array, vn: jax.Array) -> InputFinite:
    """qn [N, Sq, D]; kn, vn [N, Sk, D] -> InputFinite."""
    rows = lambda x: jnp.all(jnp.isfinite(x), axis=-1)
    return InputFinite(rows(qn), jnp.all(rows(kn), axis=-1) & jnp.all(rows(vn), axis=-1))


def finite_or_zero(x: jax.Array) -> jax.Array:
    """x with its NaN/Inf elements replaced by 0 (what the clustering sees)."""
    return jnp.where(jnp.isfinite(x), x, jnp.zeros((), x.dtype))


def keep_finite_centroids(new: jax.Array, old: jax.Array) -> jax.Array:
    """new [N, C, D] with every centroid that is not finite replaced by old's."""
    ok = jnp.all(jnp.isfinite(new), axis=-1, keepdims=True)
    return jnp.where(ok, new, old.astype(new.dtype))


def poison(out: jax.Array, lse: jax.Array, finite: InputFinite):
    """out [N, Sq, D], lse [N, Sq] -> both NaN where dense attention would be non-finite:
    every row of a problem with a non-finite key or value, and each non-finite query row."""
    bad = ~finite.q_rows | ~finite.kv[:, None]
    return (jnp.where(bad[..., None], jnp.array(jnp.nan, out.dtype), out),
            jnp.where(bad, jnp.float32(jnp.nan), lse))


def nan_where_not_finite(density: jax.Array, out: jax.Array) -> jax.Array:
    """density [B, H] set to NaN for each head whose attention output out [B, S, H, D] is
    not finite: the per-layer report a sampler reads (`sampling.loop`)."""
    finite = jnp.all(jnp.isfinite(out), axis=(1, 3))
    return jnp.where(finite, density, jnp.float32(jnp.nan))
