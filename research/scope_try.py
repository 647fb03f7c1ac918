"""One measured try of SCOPE-style RoPE-subspace clustering (issue #13, item f).

SCOPE (2026) clusters along the 3-D RoPE subspaces; its exact recipe is not public here.
The try: before k-means, each RoPE axis subspace of q and k (Wan: channels 0-43 time,
44-85 height, 86-127 width, consecutive pairs rotated) is rescaled to the same mean norm,
so no axis dominates the Euclidean distance; the labels are then used with centroids
recomputed as exact member means in the original space (`make_problem`).
"""

from __future__ import annotations

import jax.numpy as jnp

AXES = ((0, 44), (44, 86), (86, 128))


def cluster_space(x):
    """x: [B, S, H, D] -> same shape, each axis subspace scaled to unit mean norm per head."""
    parts = []
    for a, b in AXES:
        sub = x[..., a:b]
        norm = jnp.mean(jnp.linalg.norm(sub, axis=-1, keepdims=True), axis=1, keepdims=True)
        parts.append(sub / jnp.maximum(norm, 1e-6))
    return jnp.concatenate(parts, -1)
