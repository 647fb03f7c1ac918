"""`svg2_attention`: the whole SVG2 sparse attention as one jit-friendly function.

One call, on per-head problems (`svg2_core`): cluster queries and keys
(`clustering.cluster_qk`), select blocks (`selection.select_blocks`), attend to the
selected blocks with the config's backend (`backends.SPARSE_BACKENDS`), and, when the
config asks for it, merge in the compensation of the left-out key clusters
(`compensation.compensate`, the same for every backend). Non-finite inputs follow
`svg2_jax.nonfinite`'s policy: around the clustering, the key statistics and the error
estimate, and at the output, after the compensation (which so cannot hide them).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from einops import rearrange

from svg2_jax.backends import SPARSE_BACKENDS, attended_blocks, resolve_backend
from svg2_jax.clustering import Clustering, SVG2Cache, cluster_qk, to_cache
from svg2_jax.compensation import KeyClusterStats, compensate, key_cluster_stats
from svg2_jax.config import SVG2Config
from svg2_jax.head_group import HeadGroup
from svg2_jax.nonfinite import InputFinite, input_finite, poison
from svg2_jax.selection import Selection, block_density, select_blocks


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SVG2Stats:
    """What one call did, all on device (no host sync).

    density: [B, H] fraction of query-key token pairs computed exactly.
    kept_k_clusters: [B, H] mean number of key clusters kept per non-empty query cluster.
    compensated_mass: [B, H] mean over queries of the share of the softmax denominator
      that the compensation of left-out key clusters supplied (0 without compensation;
      NaN for a head with non-finite input, as its output).
    estimated_error: [B, H] the selection rule's estimate of the relative output error
      after compensation ("error" rule); -1 for a rule that estimates none ("svg2": a
      finite sentinel, so that NaN keeps meaning non-finite input); NaN for a head with
      non-finite input.
    {q,k}_size_min / _max: [B, H] smallest / largest non-empty cluster.
    {q,k}_empty: [B, H] number of empty clusters.
    {q,k}_kmeans_iters: [] k-means iterations run (early stop may cut them short).
    nonfinite_input: [B, H] bool, the head's q, k or v held a NaN/Inf (its output is then
      NaN where dense attention's would be, `svg2_jax.nonfinite`).
    """

    density: jax.Array
    kept_k_clusters: jax.Array
    compensated_mass: jax.Array
    estimated_error: jax.Array
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
    core = svg2_core(qn, kn, vn, cache, config, key, scale, head_group, heads=q.shape[2])
    out = rearrange(core.out, "(b h) s d -> b s h d", b=b)
    clustering, selection = core.clustering, core.selection
    density = block_density(selection.selected, clustering.q.sizes, clustering.k.sizes)
    return out, to_cache(clustering, b), svg2_stats(
        density, clustering, selection, b, ~core.finite.head,
        compensated_share(core.comp_lse, core.lse))


class CoreResult(NamedTuple):
    """`svg2_core` on N = batch x heads problems: out [N, Sq, D]; lse [N, Sq] float32
    (natural log of the softmax denominator over the exactly computed keys and the
    compensation; -inf for a query with neither; both NaN where the input was not finite,
    `nonfinite.poison`); the clustering and the selection it used; which inputs were
    finite; key_stats (None unless the config needed them); comp_lse [N, Sq]: the
    compensation's part of lse (-inf where there is none; None without compensation)."""

    out: jax.Array
    lse: jax.Array
    clustering: Clustering
    selection: Selection
    finite: InputFinite
    key_stats: KeyClusterStats | None = None
    comp_lse: jax.Array | None = None


def svg2_core(qn, kn, vn, cache: SVG2Cache | None, config: SVG2Config, key, scale: float,
              head_group: HeadGroup | None = None, *, heads: int = 1) -> CoreResult:
    """The algorithm on per-head problems: qn [N, Sq, D]; kn, vn [N, Sk, D] (N = B * H in
    (b h) order, for the cache); cache, config, key, head_group as `svg2_attention`;
    scale: the softmax scale; heads: H (what `config.error_pool="layer"` pools) ->
    CoreResult."""
    if config.error_pool == "layer" and config.selection == "error" and head_group is not None:
        raise ValueError(
            "SVG2Config(error_pool='layer') pools the error budget over all of a layer's "
            "heads, but this call holds only some of them (head-parallel attention, "
            "head_group): use error_pool='head', whose output per head does not depend "
            "on the other heads")
    name = resolve_backend(config, qn.dtype, qn.shape[-1])
    finite = input_finite(qn, kn, vn)
    clustering = cluster_qk(qn, kn, cache, config, key, head_group=head_group)
    stats = key_cluster_stats(kn, vn, clustering.k) if config.needs_key_stats else None
    selection = select_blocks(clustering, config, scale, qn=qn, key_stats=stats,
                              heads=heads)
    out, lse = SPARSE_BACKENDS[name](qn, kn, vn, clustering, selection, scale, config)
    comp_lse = None
    if config.compensation:  # of what the backend left out (its tiles may use more)
        q_group, attended = attended_blocks(name, clustering, selection, config)
        out, lse, comp_lse = compensate(qn, kn, vn, q_group, clustering.k.labels, attended,
                                        stats, scale, out, lse,
                                        own_key=config.compensate_own_key,
                                        q_tile=config.q_tile)
    # poisoned after the compensation: its finite estimate never stands in for a NaN row
    return CoreResult(*poison(out, lse, finite), clustering, selection, finite, stats,
                      comp_lse)


def compensated_share(comp_lse, lse) -> jax.Array | None:
    """[N] mean over queries of exp(comp_lse - lse): the compensation's share of each
    query's softmax denominator (None when there was no compensation; NaN for a problem
    with a poisoned row, whose lse is NaN)."""
    if comp_lse is None:
        return None
    share = jnp.where(jnp.isfinite(comp_lse), jnp.exp(comp_lse - lse), 0.0)
    return jnp.mean(jnp.where(jnp.isnan(lse), jnp.nan, share), axis=-1)


def svg2_stats(density, clustering: Clustering, selection: Selection, batch: int, nonfinite,
               compensated=None) -> SVG2Stats:
    """SVG2Stats from per-problem results: density [B * H]; the call's clustering and
    selection; nonfinite [B * H] bool, the problem's input held a NaN/Inf; compensated
    [B * H] (`compensated_share`, None: no compensation)."""
    qk, kk = clustering.q, clustering.k
    selected = selection.selected
    per_head = functools.partial(rearrange, pattern="(b h) -> b h", b=batch)
    n = selected.shape[0]
    if compensated is None:
        compensated = jnp.zeros((n,), jnp.float32)
    estimated = selection.estimated_error
    if estimated is None:  # the rule estimates none
        estimated = jnp.full((n,), -1.0, jnp.float32)
    # NaN/Inf entered the estimate as 0 (`compensation`): no estimate for that head
    estimated = jnp.where(nonfinite, jnp.float32(jnp.nan), estimated)
    q_min, q_max, q_empty = _size_summary(qk.sizes)
    k_min, k_max, k_empty = _size_summary(kk.sizes)
    kept = jnp.sum(selected, axis=-1).astype(jnp.float32)
    q_nonempty = (qk.sizes > 0).astype(jnp.float32)
    return SVG2Stats(
        density=per_head(density),
        kept_k_clusters=per_head(jnp.sum(kept * q_nonempty, -1) / jnp.sum(q_nonempty, -1)),
        compensated_mass=per_head(compensated), estimated_error=per_head(estimated),
        q_size_min=per_head(q_min), q_size_max=per_head(q_max), q_empty=per_head(q_empty),
        k_size_min=per_head(k_min), k_size_max=per_head(k_max), k_empty=per_head(k_empty),
        q_kmeans_iters=qk.iterations, k_kmeans_iters=kk.iterations,
        nonfinite_input=per_head(nonfinite))

