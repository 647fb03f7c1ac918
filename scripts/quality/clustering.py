"""SVG2's clusters for the quality benchmark: the cold-start k-means of `svg2_attention`.

Kept as one function so that it can be replaced by the library's own entry point once
that exists; every selector takes its clusters from here."""

from __future__ import annotations

import functools

import jax
from einops import rearrange

from svg2_jax import SVG2Config
from svg2_jax import kmeans as km


@functools.partial(jax.jit, static_argnames=("config",))
def svg2_clusters(q, k, config: SVG2Config, key):
    """The cold-start k-means of `svg2_attention`, called exactly as it calls it."""
    qn, kn = (rearrange(x, "b s h d -> (b h) s d") for x in (q, k))
    key_q, key_k = jax.random.split(key)
    q_init = km.random_init(key_q, qn, config.num_q_clusters)
    k_init = km.random_init(key_k, kn, config.num_k_clusters)
    run = functools.partial(km.kmeans, num_iters=config.kmeans_iters_cold,
                            tol=config.kmeans_tol, impl="xla", chunk=config.kmeans_chunk)
    return run(qn, q_init), run(kn, k_init)
