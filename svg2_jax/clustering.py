"""SVG2's clustering step: k-means on the queries and on the keys of every (batch x head)
problem, cold (random token rows) or warm (the previous call's centroids), and the
centroid cache carried between calls."""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, NamedTuple

import jax
from einops import rearrange

from svg2_jax import kmeans as km
from svg2_jax.head_group import HeadGroup
from svg2_jax.kmeans import KMeansResult
from svg2_jax.nonfinite import keep_finite_centroids

if TYPE_CHECKING:
    from svg2_jax.config import SVG2Config


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SVG2Cache:
    """Per-layer k-means state carried between calls (denoising steps).

    q_centroids: [B, H, QC, D] float32; k_centroids: [B, H, KC, D] float32.
    """

    q_centroids: jax.Array
    k_centroids: jax.Array


class Clustering(NamedTuple):
    """The k-means results of one call on per-head problems (N = batch x heads):
    q over the queries (QC clusters), k over the keys (KC clusters)."""

    q: KMeansResult
    k: KMeansResult


def resolve_kmeans_impl(config: SVG2Config) -> str:
    """config.kmeans_impl with "auto" resolved: the fused Pallas assignment on a GPU
    (the fastest measured there), XLA elsewhere."""
    if config.kmeans_impl != "auto":
        return config.kmeans_impl
    return "pallas" if jax.default_backend() == "gpu" else "xla"


def cluster_qk(qn: jax.Array, kn: jax.Array, cache: SVG2Cache | None, config: SVG2Config,
               key: jax.Array | None = None, kmeans_impl: str | None = None,
               head_group: HeadGroup | None = None) -> Clustering:
    """k-means on queries and keys, per (batch x head) problem: qn [N, Sq, D], kn
    [N, Sk, D] with N = B * H in (b h) order.

    cache None: a cold start from `config.num_{q,k}_clusters` distinct random token rows
    (key split in two, for queries and keys; None means PRNGKey(0)),
    `config.kmeans_iters_cold` iterations. Otherwise a warm start from the cache's
    centroids ([B, H, C, D]), `config.kmeans_iters_warm` iterations. kmeans_impl: None
    resolves config.kmeans_impl (`resolve_kmeans_impl`). head_group: when the call holds
    only some heads of the layer (head parallel), which ones: each problem then starts and
    stops as in the call over all heads (`svg2_jax.head_group`).

    NaN/Inf elements count as 0 in the centroids (`kmeans`), and a centroid that still
    comes out non-finite keeps its initial value (`svg2_jax.nonfinite`), so the cache
    never holds a NaN."""
    rows = {}
    if head_group is not None:
        batch = qn.shape[0] // head_group.ids.shape[0]
        rows = dict(rows=head_group.problem_rows(batch), num_rows=batch * head_group.total)
    if cache is None:
        key = jax.random.PRNGKey(0) if key is None else key
        key_q, key_k = jax.random.split(key)
        q_init = km.random_init(key_q, qn, config.num_q_clusters, **rows)
        k_init = km.random_init(key_k, kn, config.num_k_clusters, **rows)
        iters = config.kmeans_iters_cold
    else:
        q_init = rearrange(cache.q_centroids, "b h c d -> (b h) c d")
        k_init = rearrange(cache.k_centroids, "b h c d -> (b h) c d")
        iters = config.kmeans_iters_warm
    impl = resolve_kmeans_impl(config) if kmeans_impl is None else kmeans_impl
    run = functools.partial(km.kmeans, num_iters=iters, tol=config.kmeans_tol, impl=impl,
                            chunk=config.kmeans_chunk,
                            shift_max=None if head_group is None else head_group.global_max)

    def finite_run(x, init):
        result = run(x, init)
        return result._replace(centroids=keep_finite_centroids(result.centroids, init))

    return Clustering(finite_run(qn, q_init), finite_run(kn, k_init))


def to_cache(clustering: Clustering, batch: int) -> SVG2Cache:
    """The cache the next call warm-starts from: the centroids, back to [B, H, C, D]."""
    per_head = functools.partial(rearrange, pattern="(b h) c d -> b h c d", b=batch)
    return SVG2Cache(q_centroids=per_head(clustering.q.centroids),
                     k_centroids=per_head(clustering.k.centroids))
