"""`svg2_attention`: the whole SVG2 sparse attention as one jit-friendly function."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from einops import rearrange

from svg2_jax import kmeans as km
from svg2_jax.config import SVG2Config
from svg2_jax.kmeans import KMeansResult
from svg2_jax.permute import cluster_order, inverse_order, permute, unpermute
from svg2_jax.selection import block_density, cluster_mass, select_by_density, select_clusters
from svg2_jax.sparse_attention import sparse_attention_chunked, sparse_attention_masked_dense


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SVG2Cache:
    """Per-layer k-means state carried between calls (denoising steps).

    q_centroids: [B, H, QC, D] float32; k_centroids: [B, H, KC, D] float32.
    """

    q_centroids: jax.Array
    k_centroids: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SVG2Stats:
    """What one call did, all on device (no host sync).

    density: [B, H] fraction of query-key token pairs computed.
    kept_k_clusters: [B, H] mean number of key clusters kept per non-empty query cluster.
    {q,k}_size_min / _max: [B, H] smallest / largest non-empty cluster.
    {q,k}_empty: [B, H] number of empty clusters.
    {q,k}_kmeans_iters: [] k-means iterations run (early stop may cut them short).
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


def _check_inputs(q, k, v, cache, config: SVG2Config):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not hasattr(x, "shape") or x.ndim != 4:
            raise ValueError(f"svg2_attention: {name} must be [B, S, H, D], got shape "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"svg2_attention: {name} must be floating point, got {x.dtype}")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"svg2_attention: q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"svg2_attention: k {k.shape} and v {v.shape} must have the same shape")
    if (q.shape[0], q.shape[2], q.shape[3]) != (k.shape[0], k.shape[2], k.shape[3]):
        raise ValueError(f"svg2_attention: q {q.shape} and k {k.shape} must agree on B, H and D")
    if q.shape[1] < config.num_q_clusters:
        raise ValueError(f"svg2_attention: {q.shape[1]} query tokens are fewer than "
                         f"num_q_clusters={config.num_q_clusters}")
    if k.shape[1] < config.num_k_clusters:
        raise ValueError(f"svg2_attention: {k.shape[1]} key tokens are fewer than "
                         f"num_k_clusters={config.num_k_clusters}")
    if cache is not None:
        b, _, h, d = q.shape
        want_q = (b, h, config.num_q_clusters, d)
        want_k = (b, h, config.num_k_clusters, d)
        if tuple(cache.q_centroids.shape) != want_q or tuple(cache.k_centroids.shape) != want_k:
            raise ValueError(
                f"svg2_attention: cache centroids {tuple(cache.q_centroids.shape)} / "
                f"{tuple(cache.k_centroids.shape)} do not fit this call, expected {want_q} / "
                f"{want_k} (same batch, heads, head dim and cluster counts)")


def is_hopper() -> bool:
    """Whether the default device is an sm_90 GPU (what the Pallas kernel targets)."""
    dev = jax.devices()[0]
    return dev.platform == "gpu" and str(getattr(dev, "compute_capability", "")).startswith("9")


def _resolve(config: SVG2Config, dtype=None, head_dim=None):
    backend = config.backend
    if backend == "auto":
        from pallas_kernels.sparse_flash_mgpu import supports
        backend = "pallas" if (is_hopper() and supports(dtype, head_dim)) else "jax"
    elif backend == "pallas" and not is_hopper():
        raise ValueError(
            "SVG2Config.backend='pallas' needs a Hopper (sm_90) GPU; this device is "
            f"{jax.devices()[0].device_kind!r}. Use backend='jax' (exact, portable) instead.")
    kmeans_impl = config.kmeans_impl
    if kmeans_impl == "auto":
        kmeans_impl = "pallas" if jax.default_backend() == "gpu" else "xla"
    return backend, kmeans_impl


def _size_summary(sizes):
    nonempty = sizes > 0
    big = jnp.iinfo(jnp.int32).max
    return (jnp.min(jnp.where(nonempty, sizes, big), axis=-1), jnp.max(sizes, axis=-1),
            jnp.sum(~nonempty, axis=-1).astype(jnp.int32))


def _cluster(qn, kn, cache, config: SVG2Config, key, kmeans_impl):
    """k-means on queries and keys, per (batch x head) problem: qn, kn: [N, S, D]."""
    if cache is None:
        key = jax.random.PRNGKey(0) if key is None else key
        key_q, key_k = jax.random.split(key)
        q_init = km.random_init(key_q, qn, config.num_q_clusters)
        k_init = km.random_init(key_k, kn, config.num_k_clusters)
        iters = config.kmeans_iters_cold
    else:
        q_init = rearrange(cache.q_centroids, "b h c d -> (b h) c d")
        k_init = rearrange(cache.k_centroids, "b h c d -> (b h) c d")
        iters = config.kmeans_iters_warm
    run = functools.partial(km.kmeans, num_iters=iters, tol=config.kmeans_tol,
                            impl=kmeans_impl, chunk=config.kmeans_chunk)
    return run(qn, q_init), run(kn, k_init)


def _to_cache(qk, kk, batch):
    return SVG2Cache(q_centroids=rearrange(qk.centroids, "(b h) c d -> b h c d", b=batch),
                     k_centroids=rearrange(kk.centroids, "(b h) c d -> b h c d", b=batch))


@functools.partial(jax.jit, static_argnames=("config",))
def svg2_kmeans(q: jax.Array, k: jax.Array, cache: SVG2Cache | None, config: SVG2Config,
                key: jax.Array | None = None) -> SVG2Cache:
    """Only the clustering step of `svg2_attention` (same arguments, no v): returns the
    updated cache. For dense steps that warm up the centroids for later sparse ones."""
    _check_inputs(q, k, k, cache, config)
    qk, kk = _cluster(*(rearrange(x, "b s h d -> (b h) s d") for x in (q, k)), cache, config,
                      key, _resolve(config)[1])
    return _to_cache(qk, kk, q.shape[0])


@functools.partial(jax.jit, static_argnames=("config", "scale"))
def svg2_attention(q: jax.Array, k: jax.Array, v: jax.Array, cache: SVG2Cache | None,
                   config: SVG2Config, key: jax.Array | None = None, *,
                   scale: float | None = None):
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
      scale: softmax scale, default 1/sqrt(D).

    Returns:
      (out [B, Sq, H, D] in q.dtype, new cache, SVG2Stats).
    """
    _check_inputs(q, k, v, cache, config)
    b, _, _, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    qn, kn, vn = (rearrange(x, "b s h d -> (b h) s d") for x in (q, k, v))
    on, _, qk, kk, selected = svg2_core(qn, kn, vn, cache, config, key, scale)
    out = rearrange(on, "(b h) s d -> b s h d", b=b)
    density = block_density(selected, qk.sizes, kk.sizes)
    return out, _to_cache(qk, kk, b), _stats(density, qk, kk, selected, b)


def svg2_core(qn, kn, vn, cache, config: SVG2Config, key, scale):
    """The algorithm on per-head problems: qn: [N, Sq, D]; kn, vn: [N, Sk, D] ->
    (out [N, Sq, D], lse [N, Sq], q KMeansResult, k KMeansResult, selected [N, QC, KC])."""
    backend, kmeans_impl = _resolve(config, qn.dtype, qn.shape[-1])
    qk, kk = _cluster(qn, kn, cache, config, key, kmeans_impl)
    if config.target_density is None:
        selected = select_clusters(qk.centroids, kk.centroids, kk.sizes, config.top_p,
                                   config.min_k_clusters)
    else:
        selected = select_by_density(qk.centroids, kk.centroids, kk.sizes,
                                     config.target_density, config.min_k_clusters)
    if backend == "masked_dense":
        on, lse = sparse_attention_masked_dense(qn, kn, vn, qk.labels, kk.labels, selected,
                                                scale)
        return on, lse, qk, kk, selected
    if backend in ("pallas", "pallas_reference"):
        on, lse = _pallas_sparse(qn, kn, vn, qk, kk, selected, scale, config,
                                 reference=backend == "pallas_reference")
        return on, lse, qk, kk, selected
    q_order, k_order = cluster_order(qk.labels), cluster_order(kk.labels)
    sorted_q_labels = jnp.take_along_axis(qk.labels, q_order, axis=-1)
    sorted_k_labels = jnp.take_along_axis(kk.labels, k_order, axis=-1)
    o_perm, lse_perm = sparse_attention_chunked(
        permute(qn, q_order), permute(kn, k_order), permute(vn, k_order), sorted_q_labels,
        sorted_k_labels, selected, scale, config.q_tile)
    return (unpermute(o_perm, q_order), unpermute(lse_perm, q_order), qk, kk, selected)


def pallas_layout(qn, kn, vn, qk: KMeansResult, kk: KMeansResult, selected, tuning,
                  key_order: str = "co_selection"):
    """The Hopper kernel's inputs from the clustering: qn [N, Sq, D]; kn, vn [N, Sk, D];
    k-means results of queries and keys; selected [N, QC, KC] -> (work list, q in the
    padded layout, k and v in the key layout, q_order [N, Sq]).

    key_order "co_selection" lays key clusters out in `co_selection_order` (those the
    same query clusters select sit together and merge into runs); "label" in label order
    (for benchmarks)."""
    from pallas_kernels import sparse_worklist as wl
    (_, sq, _), sk = qn.shape, kn.shape[1]
    if key_order == "co_selection":
        mass = cluster_mass(qk.centroids, kk.centroids, kk.sizes)
        k_perm = wl.co_selection_order(mass, kk.sizes)         # layout position -> cluster
    elif key_order == "label":
        k_perm = jnp.broadcast_to(jnp.arange(kk.sizes.shape[1], dtype=jnp.int32),
                                  kk.sizes.shape)
    else:
        raise ValueError(f"pallas_layout: key_order must be 'co_selection' or 'label', "
                         f"got {key_order!r}")
    k_rank = inverse_order(k_perm)                              # cluster -> layout position
    q_order = cluster_order(qk.labels)
    k_order = cluster_order(jnp.take_along_axis(k_rank, kk.labels, axis=-1))
    k_sizes = jnp.take_along_axis(kk.sizes, k_perm, axis=-1)
    selected = jnp.take_along_axis(selected, k_perm[:, None, :], axis=-1)
    work = wl.build_work_list(qk.sizes, k_sizes, selected, sq, sk, tuning)
    q_idx = wl.padded_index(q_order, qk.sizes, wl.q_padded_len(sq, qk.sizes.shape[1], tuning))
    k_idx = wl.key_layout_index(k_order, wl.k_layout_len(sk, tuning))
    return work, permute(qn, q_idx), permute(kn, k_idx), permute(vn, k_idx), q_order


def _pallas_sparse(qn, kn, vn, qk, kk, selected, scale, config: SVG2Config,
                   reference: bool = False):
    """The Hopper kernel's path: layouts, work list, kernel, slots back to token order.
    reference=True runs the kernel's pure-JAX twin (CPU tests)."""
    from pallas_kernels import sparse_flash_mgpu as sf
    tuning = config.kernel_config
    work, qp, kp, vp, q_order = pallas_layout(qn, kn, vn, qk, kk, selected, tuning)
    run = sf.sparse_flash_attention_reference if reference else sf.sparse_flash_attention
    out_slots, lse_slots = run(qp, kp, vp, work, scale=scale, config=tuning)
    return sf.gather_rows(out_slots, lse_slots, work, q_order)


def _stats(density, qk, kk, selected, b):
    """SVG2Stats from per-problem ([B*H]) results."""
    per_head = functools.partial(rearrange, pattern="(b h) -> b h", b=b)
    q_min, q_max, q_empty = _size_summary(qk.sizes)
    k_min, k_max, k_empty = _size_summary(kk.sizes)
    kept = jnp.sum(selected, axis=-1).astype(jnp.float32)
    q_nonempty = (qk.sizes > 0).astype(jnp.float32)
    return SVG2Stats(
        density=per_head(density),
        kept_k_clusters=per_head(jnp.sum(kept * q_nonempty, -1) / jnp.sum(q_nonempty, -1)),
        q_size_min=per_head(q_min), q_size_max=per_head(q_max), q_empty=per_head(q_empty),
        k_size_min=per_head(k_min), k_size_max=per_head(k_max), k_empty=per_head(k_empty),
        q_kmeans_iters=qk.iterations, k_kmeans_iters=kk.iterations)

