"""Centroid-level selection of (query cluster, key cluster) blocks: SVG2's top-p rule
(`select_clusters`), a fixed density budget (`select_by_density`), and the one a config
asks for (`select_blocks`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp

from svg2_jax.clustering import Clustering

if TYPE_CHECKING:
    from svg2_jax.config import SVG2Config


class Selection(NamedTuple):
    """What the selection decided and what it decided from, for the steps after it.

    selected: [N, QC, KC] bool, the blocks computed.
    mass: [N, QC, KC] float32, each query cluster's estimated attention distribution
      over the key clusters (`cluster_mass`), which the rule ranked; the Pallas layout
      orders key clusters by it (`co_selection_order`).
    Read fields by name: rules that estimate more per cluster add fields here.
    """

    selected: jax.Array
    mass: jax.Array


def cluster_mass(q_centroids: jax.Array, k_centroids: jax.Array, k_sizes: jax.Array,
                 scale: float | None = None) -> jax.Array:
    """Approximate attention mass of each key cluster for each query cluster.

    q_centroids: [N, QC, D]; k_centroids: [N, KC, D]; k_sizes: [N, KC] ->
    [N, QC, KC] float32, rows summing to 1: p_j proportional to size_j * exp(s_j) with
    s = scale * qc . kc (the attention's softmax scale, default 1/sqrt(D)), since a
    cluster of n keys near its centroid gets about n times one key's weight. Empty
    clusters get exactly 0.
    """
    scale = q_centroids.shape[-1] ** -0.5 if scale is None else scale
    scores = jnp.einsum("nqd,nkd->nqk", q_centroids.astype(jnp.float32),
                        k_centroids.astype(jnp.float32)) * jnp.float32(scale)
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
                    top_p: float, min_clusters: int, scale: float | None = None) -> Selection:
    """Which key clusters each query cluster attends to (Selection.selected
    [N, QC, KC]).

    Per query cluster, key clusters are taken by descending mass until the
    cumulative mass reaches `top_p` (the crossing cluster is kept, so the heaviest
    one always is), and never fewer than `min_clusters`. Empty key clusters are
    never selected and do not count toward the floor. top_p >= 1 keeps every
    non-empty cluster (exact, not subject to the cumsum's rounding). scale: the
    attention's softmax scale (`cluster_mass`).
    """
    mass = cluster_mass(q_centroids, k_centroids, k_sizes, scale)
    nonempty = jnp.broadcast_to((k_sizes > 0)[:, None, :], mass.shape)
    if top_p >= 1.0:
        return Selection(nonempty, mass)
    return Selection(_keep_heaviest(mass, nonempty, mass, top_p, min_clusters), mass)


def select_by_density(q_centroids: jax.Array, k_centroids: jax.Array, k_sizes: jax.Array,
                      density: float, min_clusters: int, scale: float | None = None
                      ) -> Selection:
    """A fixed compute budget instead of top-p: per query cluster, key clusters by
    descending mass until `density` of the keys are kept (the crossing cluster is kept),
    never fewer than `min_clusters` non-empty ones.

    For controlled benchmarks (random weights do not give trained-model densities) and
    for budgeted generation; top-p is SVG2's rule. scale: as `select_clusters`."""
    mass = cluster_mass(q_centroids, k_centroids, k_sizes, scale)
    nonempty = jnp.broadcast_to((k_sizes > 0)[:, None, :], mass.shape)
    fraction = k_sizes.astype(jnp.float32) / jnp.sum(k_sizes, axis=-1, keepdims=True)
    return Selection(_keep_heaviest(mass, nonempty,
                                    jnp.broadcast_to(fraction[:, None, :], mass.shape),
                                    density, min_clusters), mass)


def select_blocks(clustering: Clustering, config: SVG2Config, scale: float | None = None
                  ) -> Selection:
    """The selection config asks for: top-p (`config.top_p`), or the fixed budget
    `config.target_density` when set; at least `config.min_k_clusters` key clusters.
    scale: the attention's softmax scale (default 1/sqrt(D)), which the mass estimate
    uses."""
    q, k = clustering.q, clustering.k
    if config.target_density is None:
        return select_clusters(q.centroids, k.centroids, k.sizes, config.top_p,
                               config.min_k_clusters, scale)
    return select_by_density(q.centroids, k.centroids, k.sizes, config.target_density,
                             config.min_k_clusters, scale)


def block_density(selected: jax.Array, q_sizes: jax.Array, k_sizes: jax.Array) -> jax.Array:
    """Fraction of query-key token pairs computed. selected: [N, QC, KC];
    q_sizes: [N, QC]; k_sizes: [N, KC] -> [N] float32."""
    qs = q_sizes.astype(jnp.float32)
    ks = k_sizes.astype(jnp.float32)
    pairs = jnp.einsum("nq,nqk,nk->n", qs, selected.astype(jnp.float32), ks)
    return pairs / (jnp.sum(qs, axis=-1) * jnp.sum(ks, axis=-1))
