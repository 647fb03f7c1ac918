"""Semantic-aware permutation: make every cluster a contiguous run of tokens.

The reference sorts labels (its order inside a cluster is unspecified); a stable
sort here keeps tokens of one cluster in their original order, which makes the
permutation deterministic and keeps neighbouring tokens together.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cluster_order(labels: jax.Array) -> jax.Array:
    """labels: [N, S] int -> order [N, S] int32: permuted position p holds token order[:, p].

    Clusters come out in ascending label order, so cluster c occupies positions
    [starts[c], starts[c + 1]) with starts = cluster_starts(sizes)."""
    return jnp.argsort(labels, axis=-1, stable=True).astype(jnp.int32)


def cluster_starts(sizes: jax.Array) -> jax.Array:
    """sizes: [N, K] -> [N, K + 1] int32 offsets of each cluster's run (last = S)."""
    zero = jnp.zeros(sizes.shape[:-1] + (1,), jnp.int32)
    return jnp.concatenate([zero, jnp.cumsum(sizes.astype(jnp.int32), axis=-1)], axis=-1)


def permute(x: jax.Array, order: jax.Array) -> jax.Array:
    """x: [N, S, ...], order: [N, S] -> x[n, order[n, p]] at [n, p]."""
    return jax.vmap(lambda xi, oi: xi[oi])(x, order)


def inverse_order(order: jax.Array) -> jax.Array:
    """The permutation that undoes `order`: inverse[n, order[n, p]] = p."""
    positions = jnp.broadcast_to(jnp.arange(order.shape[-1], dtype=jnp.int32), order.shape)
    return jax.vmap(lambda oi, pi: jnp.zeros_like(oi).at[oi].set(pi, unique_indices=True))(
        order, positions)


def unpermute(y: jax.Array, order: jax.Array) -> jax.Array:
    """Inverse of `permute`: y: [N, S, ...] in permuted order -> original token order."""
    return permute(y, inverse_order(order))
