"""Batched squared-L2 k-means: many independent problems (one per batch x head) at once.

Semantics follow the reference (svg-project/Sparse-VideoGen, `batch_kmeans_Euclid`):
each iteration assigns every token to its nearest centroid, then moves each centroid
to the mean of its members; a cluster left empty keeps its previous centroid and
reports size 0. The loop stops early when the largest centroid shift (L2 norm,
over all problems and clusters) is below `tol`; it then returns the centroids the
last assignment was made against. Otherwise, after `num_iters` iterations, it
returns the freshly updated centroids (what the next call should warm-start from)
with the labels and sizes of the last assignment.

NaN/Inf elements of x count as 0 in the centroid means and in the cold-start rows, so
the centroids stay finite (a token with them still gets a label: every distance is NaN
and the argmin returns the first cluster, in both assignments).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from pallas_kernels import kmeans_assign
from svg2_jax.nonfinite import finite_or_zero


# Iteration counts up to this run unrolled instead of in a while loop.
UNROLL_MAX_ITERS = 4


class KMeansResult(NamedTuple):
    """labels: [N, S] int32; centroids: [N, K, D] float32; sizes: [N, K] int32 (members
    per label, consistent with `labels`); iterations: [] int32 run; shift: [] float32,
    the largest centroid shift of the last iteration."""

    labels: jax.Array
    centroids: jax.Array
    sizes: jax.Array
    iterations: jax.Array
    shift: jax.Array


def random_init(key: jax.Array, x: jax.Array, num_clusters: int, *,
                rows: jax.Array | None = None, num_rows: int | None = None) -> jax.Array:
    """Initial centroids: `num_clusters` distinct random token rows of each problem.

    x: [N, S, D] -> [N, K, D] float32. Distinct rows (the reference samples with
    replacement) so no two clusters start identical and one of them empty.
    rows: [N] int, these problems' indices among `num_rows` problems: the draw is that of
    all num_rows, so a problem starts the same whichever others share the call (heads
    spread over devices, `svg2_jax.head_group`). None: the N problems are all of them.
    """
    n, s, _ = x.shape
    if num_clusters > s:
        raise ValueError(f"cannot pick {num_clusters} distinct rows from {s} tokens")
    # top_k of i.i.d. uniforms = a uniformly random subset, batched over problems.
    uniform = (jax.random.uniform(key, (n, s)) if rows is None
               else jax.random.uniform(key, (num_rows, s))[rows])
    _, idx = jax.lax.top_k(uniform, num_clusters)
    return finite_or_zero(jnp.take_along_axis(x, idx[..., None], axis=1).astype(jnp.float32))


def assign_xla(x: jax.Array, centroids: jax.Array, chunk: int = 8192) -> jax.Array:
    """Nearest centroid per token: argmin_k ||c_k||^2 - 2 x.c_k (||x||^2 is constant per row).

    x: [N, S, D]; centroids: [N, K, D] -> labels [N, S] int32. The dot runs in x's dtype
    with float32 accumulation, as the reference's Triton kernel does. Tokens are
    processed `chunk` at a time so the [N, chunk, K] distance block bounds memory.
    """
    c32 = centroids.astype(jnp.float32)
    c_norm = jnp.sum(c32 * c32, axis=-1)  # [N, K]
    c_x = centroids.astype(x.dtype)

    def block(xb):  # xb: [N, s, D]
        # HIGHEST: float32 inputs stay off TF32 on GPUs (no effect on 16-bit inputs).
        dots = jnp.einsum("nsd,nkd->nsk", xb, c_x, preferred_element_type=jnp.float32,
                          precision=jax.lax.Precision.HIGHEST)
        return jnp.argmin(c_norm[:, None, :] - 2.0 * dots, axis=-1).astype(jnp.int32)

    n, s, d = x.shape
    if s <= chunk:
        return block(x)
    num_chunks = -(-s // chunk)
    xp = jnp.pad(x, ((0, 0), (0, num_chunks * chunk - s), (0, 0)))
    xc = jnp.moveaxis(xp.reshape(n, num_chunks, chunk, d), 1, 0)
    labels = jax.lax.map(block, xc)  # [C, N, chunk]
    return jnp.moveaxis(labels, 0, 1).reshape(n, num_chunks * chunk)[:, :s]


def update_xla(x: jax.Array, labels: jax.Array, num_clusters: int):
    """Per-cluster sums and member counts. x: [N, S, D], labels: [N, S] ->
    (sums [N, K, D] float32, with NaN/Inf elements as 0 (in the cast pass the sum makes
    anyway); counts [N, K] int32)."""
    n, s, d = x.shape
    ids = (labels + num_clusters * jnp.arange(n, dtype=jnp.int32)[:, None]).reshape(-1)
    sums = jax.ops.segment_sum(finite_or_zero(x.reshape(n * s, d).astype(jnp.float32)), ids,
                               num_segments=n * num_clusters)
    counts = jax.ops.segment_sum(jnp.ones_like(ids), ids, num_segments=n * num_clusters)
    return sums.reshape(n, num_clusters, d), counts.reshape(n, num_clusters)


# The assignment step of each implementation: assign(x, centroids, chunk) -> labels.
# "xla": chunked matmul + argmin. "pallas": the fused Triton assignment kernel, which
# never writes the [S, K] distances (GPU only). The update is segment_sum for both.
ASSIGNERS = {"xla": assign_xla, "pallas": lambda x, c, chunk: kmeans_assign(x, c)}
IMPLS = tuple(ASSIGNERS)


def kmeans_step(impl: str, chunk: int = 8192):
    """One assignment + update: step(x, centroids, K) -> (labels, sums, counts), with
    the assignment of ASSIGNERS[impl]."""
    if impl not in ASSIGNERS:
        raise ValueError(f"unknown k-means implementation {impl!r}; expected one of {IMPLS}")
    assign = ASSIGNERS[impl]
    return lambda x, c, k: (labels := assign(x, c, chunk),) + update_xla(x, labels, k)


def kmeans(x: jax.Array, init_centroids: jax.Array, num_iters: int, tol: float = 1e-4,
           *, impl: str = "xla", chunk: int = 8192, shift_max=None) -> KMeansResult:
    """Runs at most `num_iters` k-means iterations from `init_centroids`.

    x: [N, S, D] (any float dtype); init_centroids: [N, K, D]. See the module
    docstring for the exact stopping rule and what is returned. shift_max: applied to
    the largest shift before the stopping test, to take the maximum over problems held
    elsewhere too (`HeadGroup.global_max`); None: these N problems are all of them.
    """
    if x.ndim != 3 or init_centroids.ndim != 3:
        raise ValueError(f"kmeans expects x [N, S, D] and centroids [N, K, D], got "
                         f"{x.shape} and {init_centroids.shape}")
    if x.shape[0] != init_centroids.shape[0] or x.shape[2] != init_centroids.shape[2]:
        raise ValueError(f"x {x.shape} and centroids {init_centroids.shape} disagree on N or D")
    if num_iters < 1:
        raise ValueError(f"num_iters must be >= 1, got {num_iters}")
    step = kmeans_step(impl, chunk)
    n, s, _ = x.shape
    k = init_centroids.shape[1]

    def cond(state):
        it, _, _, _, _, converged = state
        return (it < num_iters) & ~converged

    def body(state):
        it, c, _, _, _, _ = state
        labels, sums, counts = step(x, c, k)
        new_c = jnp.where(counts[..., None] > 0,
                          sums / jnp.maximum(counts, 1)[..., None].astype(jnp.float32), c)
        shift = jnp.max(jnp.linalg.norm(new_c - c, axis=-1))
        if shift_max is not None:
            shift = shift_max(shift)
        converged = shift < tol
        return it + 1, jnp.where(converged, c, new_c), labels, counts, shift, converged

    state = (jnp.int32(0), init_centroids.astype(jnp.float32), jnp.zeros((n, s), jnp.int32),
             jnp.zeros((n, k), jnp.int32), jnp.float32(jnp.inf), jnp.bool_(False))
    if num_iters <= UNROLL_MAX_ITERS:
        # Few (warm) iterations: unrolled, a converged state simply stops changing. A GPU
        # while loop reads its predicate back on the host every iteration.
        for _ in range(num_iters):
            new = body(state)
            state = jax.tree.map(lambda a, b: jnp.where(state[-1], a, b), state, new)
    else:
        state = jax.lax.while_loop(cond, body, state)
    it, c, labels, counts, shift, _ = state
    return KMeansResult(labels, c, counts, it, shift)
