"""SVG2's clusters for the quality benchmark: the cold-start k-means of `svg2_attention`,
through the library's own entry point (`svg2_jax.clustering.cluster_qk`); every selector
takes its clusters from here."""

from __future__ import annotations

import functools

import jax
from einops import rearrange

from svg2_jax import SVG2Config
from svg2_jax.clustering import cluster_qk


@functools.partial(jax.jit, static_argnames=("config",))
def svg2_clusters(q, k, config: SVG2Config, key):
    """The cold-start k-means of `svg2_attention` (XLA assignment on every device, so CPU
    and GPU runs of the benchmark cluster alike): q, k [B, S, H, D] -> Clustering."""
    qn, kn = (rearrange(x, "b s h d -> (b h) s d") for x in (q, k))
    return cluster_qk(qn, kn, None, config, key, kmeans_impl="xla")
