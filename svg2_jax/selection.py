"""Centroid-level top-p selection of (query cluster, key cluster) blocks."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cluster_mass(q_centroids: jax.Array, k_centroids: jax.Array, k_sizes: jax.Array) -> jax.Array:
    """Approximate attention mass of each key cluster for each query cluster.

    q_centroids: [N, QC, D]; k_centroids: [N, KC, D]; k_sizes: [N, KC] ->
    [N, QC, KC] float32, rows summing to 1: p_j proportional to size_j * exp(s_j) with
    s = qc . kc / sqrt(D), since a cluster of n keys near its centroid gets about
    n times one key's weight. Empty clusters get exactly 0.
    """
    d = q_centroids.shape[-1]
    scores = jnp.einsum("nqd,nkd->nqk", q_centroids.astype(jnp.float32),
                        k_centroids.astype(jnp.float32)) / jnp.sqrt(jnp.float32(d))
    nonempty = (k_sizes > 0)[:, None, :]
    scores = jnp.where(nonempty, scores, -jnp.inf)
    weights = k_sizes[:, None, :].astype(jnp.float32) * jnp.exp(
        scores - jnp.max(scores, axis=-1, keepdims=True))
    return weights / jnp.sum(weights, axis=-1, keepdims=True)


def _keep_heaviest(mass, nonempty, amount, budget: float, min_clusters: int):
    """Per query cluster, key clusters by descending mass while the `amount` taken
    before each one is below `budget` (so the crossing cluster is kept), and never fewer
    than `min_clusters`; empty clusters sort last and are never kept. mass, amount:
    [N, QC, KC]; nonempty: bool [N, QC, KC] -> bool [N, QC, KC]."""
    # Empty clusters sort after every non-empty one, even one whose mass underflowed to 0.
    order = jnp.argsort(-jnp.where(nonempty, mass, -1.0), axis=-1, stable=True)
    sorted_amount = jnp.take_along_axis(amount, order, axis=-1)
    before = jnp.cumsum(sorted_amount, axis=-1) - sorted_amount
    rank = jnp.arange(mass.shape[-1])
    keep_sorted = (before < budget) | (rank < min_clusters)
    # Scatter back to cluster order (a second argsort to invert `order` costs as much
    # as the first).
    keep = jax.vmap(jax.vmap(lambda o, k: jnp.zeros_like(k).at[o].set(k, unique_indices=True)))(
        order, keep_sorted)
    return keep & nonempty


def select_clusters(q_centroids: jax.Array, k_centroids: jax.Array, k_sizes: jax.Array,
                    top_p: float, min_clusters: int) -> jax.Array:
    """Which key clusters each query cluster attends to: bool [N, QC, KC].

    Per query cluster, key clusters are taken by descending mass until the
    cumulative mass reaches `top_p` (the crossing cluster is kept, so the heaviest
    one always is), and never fewer than `min_clusters`. Empty key clusters are
    never selected and do not count toward the floor. top_p >= 1 keeps every
    non-empty cluster (exact, not subject to the cumsum's rounding).
    """
    mass = cluster_mass(q_centroids, k_centroids, k_sizes)
    nonempty = jnp.broadcast_to((k_sizes > 0)[:, None, :], mass.shape)
    if top_p >= 1.0:
        return nonempty
    return _keep_heaviest(mass, nonempty, mass, top_p, min_clusters)


def select_by_density(q_centroids: jax.Array, k_centroids: jax.Array, k_sizes: jax.Array,
                      density: float, min_clusters: int) -> jax.Array:
    """A fixed compute budget instead of top-p: per query cluster, key clusters by
    descending mass until `density` of the keys are kept (the crossing cluster is kept),
    never fewer than `min_clusters` non-empty ones. bool [N, QC, KC].

    For controlled benchmarks (random weights do not give trained-model densities) and
    for budgeted generation; top-p is SVG2's rule."""
    mass = cluster_mass(q_centroids, k_centroids, k_sizes)
    nonempty = jnp.broadcast_to((k_sizes > 0)[:, None, :], mass.shape)
    fraction = k_sizes.astype(jnp.float32) / jnp.sum(k_sizes, axis=-1, keepdims=True)
    return _keep_heaviest(mass, nonempty, jnp.broadcast_to(fraction[:, None, :], mass.shape),
                          density, min_clusters)


def block_density(selected: jax.Array, q_sizes: jax.Array, k_sizes: jax.Array) -> jax.Array:
    """Fraction of query-key token pairs computed. selected: [N, QC, KC];
    q_sizes: [N, QC]; k_sizes: [N, KC] -> [N] float32."""
    qs = q_sizes.astype(jnp.float32)
    ks = k_sizes.astype(jnp.float32)
    pairs = jnp.einsum("nq,nqk,nk->n", qs, selected.astype(jnp.float32), ks)
    return pairs / (jnp.sum(qs, axis=-1) * jnp.sum(ks, axis=-1))
