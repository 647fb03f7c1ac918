"""`svg2_attention`: the whole SVG2 sparse attention as one jit-friendly function.

One call, on per-head problems (`svg2_core`): cluster queries and keys
(`clustering.cluster_qk`), select blocks (`selection.select_blocks`), attend to the
selected blocks with the config's backend (`backends.SPARSE_BACKENDS`). Non-finite
inputs follow `svg2_jax.nonfinite`'s policy, around the clustering and at the output.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from einops import rearrange

from svg2_jax.backends import SPARSE_BACKENDS, resolve_backend
from svg2_jax.clustering import Clustering, SVG2Cache, cluster_qk, to_cache
from svg2_jax.config import SVG2Config
from svg2_jax.head_group import HeadGroup
from svg2_jax.nonfinite import InputFinite, input_finite, poison
from svg2_jax.selection import Selection, block_density, select_blocks


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SVG2Stats:
    """What one call did, all on device (no host sync).

    density: [B, H] fraction of query-key token pairs computed.
    kept_k_clusters: [B, H] mean number of key clusters kept per non-empty query cluster.
    {q,k}_size_min / _max: [B, H] smallest / largest non-empty cluster.
    {q,k}_empty: [B, H] number of empty clusters.
    {q,k}_kmeans_iters: [] k-means iterations run (early stop may cut them short).
    nonfinite_input: [B, H] bool, the head's q, k or v held a NaN/Inf (its output is then
      NaN where dense attention's would be, `svg2_jax.nonfinite`).
    """

    density: jax.Array
    kept_k_clusters: jax.Array
    q_size_min: jax.Array
    q_size_max: jax.Array
    q_empty: jax.Array
    k_size_min: jax.Array
    k_size_max: jax.Array
    k_empty: jax.Array
    q_kmeans_iters: jax.Array
    k_kmeans_iters: jax.Array
    nonfinite_input: jax.Array


def check_inputs(q, k, v, cache, config: SVG2Config, caller: str = "svg2_attention"):
    """Raises one ValueError, starting with the caller's name, listing every way
    q [B, Sq, H, D], k, v [B, Sk, H, D] (one floating dtype) and the cache (None or
    [B, H, QC | KC, D] centroids) do not fit an SVG2 call with config."""
    problems = []
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not hasattr(x, "shape") or x.ndim != 4:
            problems.append(f"{name} must be [B, S, H, D], got shape "
                            f"{getattr(x, 'shape', type(x).__name__)}")
        elif not jnp.issubdtype(x.dtype, jnp.floating):
            problems.append(f"{name} must be floating point, got {x.dtype}")
    if problems:  # the checks below need three 4-d arrays
        raise ValueError(f"{caller}: " + "; ".join(problems))
    if not q.dtype == k.dtype == v.dtype:
        problems.append(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape:
        problems.append(f"k {k.shape} and v {v.shape} must have the same shape")
    if (q.shape[0], q.shape[2], q.shape[3]) != (k.shape[0], k.shape[2], k.shape[3]):
        problems.append(f"q {q.shape} and k {k.shape} must agree on B, H and D")
    if q.shape[1] < config.num_q_clusters:
        problems.append(f"{q.shape[1]} query tokens are fewer than "
                        f"num_q_clusters={config.num_q_clusters}")
    if k.shape[1] < config.num_k_clusters:
        problems.append(f"{k.shape[1]} key tokens are fewer than "
                        f"num_k_clusters={config.num_k_clusters}")
    if cache is not None:
        b, _, h, d = q.shape
        want_q = (b, h, config.num_q_clusters, d)
        want_k = (b, h, config.num_k_clusters, d)
        if tuple(cache.q_centroids.shape) != want_q or tuple(cache.k_centroids.shape) != want_k:
            problems.append(
                f"cache centroids {tuple(cache.q_centroids.shape)} / "
                f"{tuple(cache.k_centroids.shape)} do not fit this call, expected {want_q} / "
                f"{want_k} (same batch, heads, head dim and cluster counts)")
    if problems:
        raise ValueError(f"{caller}: " + "; ".join(problems))


def _size_summary(sizes):
    nonempty = sizes > 0
    big = jnp.iinfo(jnp.int32).max
    return (jnp.min(jnp.where(nonempty, sizes, big), axis=-1), jnp.max(sizes, axis=-1),
            jnp.sum(~nonempty, axis=-1).astype(jnp.int32))


@functools.partial(jax.jit, static_argnames=("config",))
def svg2_kmeans(q: jax.Array, k: jax.Array, cache: SVG2Cache | None, config: SVG2Config,
                key: jax.Array | None = None, head_group: HeadGroup | None = None
                ) -> SVG2Cache:
    """Only the clustering step of `svg2_attention` (same arguments, no v): returns the
    updated cache. For dense steps that warm up the centroids for later sparse ones."""
    check_inputs(q, k, k, cache, config, "svg2_kmeans")
    clustering = cluster_qk(*(rearrange(x, "b s h d -> (b h) s d") for x in (q, k)), cache,
                            config, key, head_group=head_group)
    return to_cache(clustering, q.shape[0])


@functools.partial(jax.jit, static_argnames=("config", "scale"))
def svg2_attention(q: jax.Array, k: jax.Array, v: jax.Array, cache: SVG2Cache | None,
                   config: SVG2Config, key: jax.Array | None = None, *,
                   scale: float | None = None, head_group: HeadGroup | None = None):
    """SVG2 sparse attention.

    Args:
      q: [B, Sq, H, D] queries (the layout of `jax.nn.dot_product_attention`).
      k, v: [B, Sk, H, D].
      cache: None for a cold start (k-means from random token rows,
        `config.kmeans_iters_cold` iterations), or the previous call's cache of the
        same layer for a warm start (`config.kmeans_iters_warm` iterations).
      config: static settings.
      key: PRNG key for the cold-start initialisation; None means PRNGKey(0).
        Unused on a warm start.
      scale: softmax scale, default 1/sqrt(D); the selection's attention-mass estimate
        uses it too.
      head_group: when these H heads are some of a layer's heads spread over devices
        (head parallel, inside `shard_map`): their global indices and the mesh axis, so
        every head starts and stops k-means as in one call over all heads
        (`svg2_jax.head_group`). None: these are all the heads.

    Returns:
      (out [B, Sq, H, D] in q.dtype, new cache, SVG2Stats).
    """
    check_inputs(q, k, v, cache, config)
    b, _, _, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    qn, kn, vn = (rearrange(x, "b s h d -> (b h) s d") for x in (q, k, v))
    core = svg2_core(qn, kn, vn, cache, config, key, scale, head_group)
    out = rearrange(core.out, "(b h) s d -> b s h d", b=b)
    clustering, selected = core.clustering, core.selection.selected
    density = block_density(selected, clustering.q.sizes, clustering.k.sizes)
    return out, to_cache(clustering, b), svg2_stats(density, clustering, selected, b,
                                                    ~core.finite.head)


class CoreResult(NamedTuple):
    """`svg2_core` on N = batch x heads problems: out [N, Sq, D]; lse [N, Sq] float32
    (natural log, -inf for a query with no selected key; both NaN where the input was not
    finite, `nonfinite.poison`); the clustering and the selection it used; which inputs
    were finite."""

    out: jax.Array
    lse: jax.Array
    clustering: Clustering
    selection: Selection
    finite: InputFinite


def svg2_core(qn, kn, vn, cache: SVG2Cache | None, config: SVG2Config, key, scale: float,
              head_group: HeadGroup | None = None) -> CoreResult:
    """The algorithm on per-head problems: qn [N, Sq, D]; kn, vn [N, Sk, D] (N = B * H in
    (b h) order, for the cache); cache, config, key, head_group as `svg2_attention`;
    scale: the softmax scale -> CoreResult."""
    backend = SPARSE_BACKENDS[resolve_backend(config, qn.dtype, qn.shape[-1])]
    finite = input_finite(qn, kn, vn)
    clustering = cluster_qk(qn, kn, cache, config, key, head_group=head_group)
    selection = select_blocks(clustering, config, scale)
    out, lse = backend(qn, kn, vn, clustering, selection, scale, config)
    return CoreResult(*poison(out, lse, finite), clustering, selection, finite)


def svg2_stats(density, clustering: Clustering, selected, batch: int, nonfinite) -> SVG2Stats:
    """SVG2Stats from per-problem results: density [B * H]; the call's clustering;
    selected [B * H, QC, KC]; nonfinite [B * H] bool, the problem's input held a NaN/Inf."""
    qk, kk = clustering.q, clustering.k
    per_head = functools.partial(rearrange, pattern="(b h) -> b h", b=batch)
    q_min, q_max, q_empty = _size_summary(qk.sizes)
    k_min, k_max, k_empty = _size_summary(kk.sizes)
    kept = jnp.sum(selected, axis=-1).astype(jnp.float32)
    q_nonempty = (qk.sizes > 0).astype(jnp.float32)
    return SVG2Stats(
        density=per_head(density),
        kept_k_clusters=per_head(jnp.sum(kept * q_nonempty, -1) / jnp.sum(q_nonempty, -1)),
        q_size_min=per_head(q_min), q_size_max=per_head(q_max), q_empty=per_head(q_empty),
        k_size_min=per_head(k_min), k_size_max=per_head(k_max), k_empty=per_head(k_empty),
        q_kmeans_iters=qk.iterations, k_kmeans_iters=kk.iterations,
        nonfinite_input=per_head(nonfinite))

