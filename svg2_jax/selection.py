"""Selection of (query cluster, key cluster) blocks, by the rule a config names
(`SELECTION_RULES`, `select_blocks`):

| rule | what |
|---|---|
| "svg2" | the reference's: per query cluster, key clusters by descending centroid mass until top_p (`select_clusters`) or a fixed share of the keys (`select_by_density`), with the min_kc_ratio floor |
| "error" | error-aware: per head, the blocks whose compensation would leave the largest estimated error per computed pair are computed exactly, up to an error tolerance or a density budget (`select_by_error`) |
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from svg2_jax.clustering import Clustering
from svg2_jax.compensation import KeyClusterStats, error_estimates

if TYPE_CHECKING:
    from svg2_jax.config import SVG2Config


class Selection(NamedTuple):
    """What the selection decided and what it decided from, for the steps after it.

    selected: [N, QC, KC] bool, the blocks computed.
    mass: [N, QC, KC] float32, each query cluster's estimated attention distribution
      over the key clusters ("svg2": `cluster_mass`, which it ranked; "error": the mean
      over the cluster's queries of their estimated distribution pi); the Pallas layout
      orders key clusters by it (`co_selection_order`).
    estimated_error: [N] float32, the rule's estimate of each head's relative output
      error once the left-out blocks are compensated ("error"), or None (a rule that
      estimates none).
    Read fields by name: rules that estimate more per cluster add fields here.
    """

    selected: jax.Array
    mass: jax.Array
    estimated_error: jax.Array | None = None


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


def _keep_heaviest(mass, nonempty, amount, budget, min_clusters: int, crossing: bool = True):
    """Per row (query cluster), entries (key clusters) by descending mass while the
    `amount` taken before each one is below `budget` (so the crossing one is kept; with
    crossing=False only while the amount including it is), and never fewer than
    `min_clusters`; empty ones sort last and are never kept. mass, amount: [N, R, C];
    nonempty: bool [N, R, C]; budget: a float or [N, R] -> bool [N, R, C]."""
    # Empty clusters sort after every non-empty one, even one whose mass underflowed to 0.
    order = jnp.argsort(jnp.where(nonempty, -mass, jnp.inf), axis=-1, stable=True)
    sorted_amount = jnp.take_along_axis(amount, order, axis=-1)
    taken = jnp.cumsum(sorted_amount, axis=-1)
    if crossing:
        taken = taken - sorted_amount
    rank = jnp.arange(mass.shape[-1])
    keep_sorted = (taken < jnp.asarray(budget)[..., None]) | (rank < min_clusters)
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


def select_by_error(qn: jax.Array, clustering: Clustering, stats: KeyClusterStats,
                    scale: float, *, error_tolerance: float | None = None,
                    target_density: float | None = None, q_tile: int = 256,
                    pool: int = 1) -> Selection:
    """Error-aware selection (issue #13): the blocks the compensation handles worst are
    computed exactly, chosen per head over all its (query cluster, key cluster) blocks.

    From `error_estimates`, block (i, j) left to the compensation adds an estimated
    squared error err_ij (summed over the n_i queries) and costs n_i n_j pairs if
    computed; blocks are ranked by err_ij / (n_i n_j), the error saved per computed pair.
    The head's estimated squared output norm is out2 = sum_i n_i |sum_j P_ij vbar_j|^2
    (P_ij the mean of pi over the cluster's queries).

    - error_tolerance tau (the adaptive rule): blocks are left to the compensation from
      the lowest rank up while their summed err stays below tau^2 out2; all others are
      computed. tau = 0 computes every non-empty block.
    - target_density d (a fixed budget): blocks from the highest rank down while the
      pairs taken before each are below d Sq Sk (the crossing block is kept).

    pool: the blocks of `pool` consecutive problems (heads) compete together, against the
    sum of their budgets (out2, or pairs); 1: per head.

    Exactly one of the two is given. qn [N, Sq, D]; the call's clustering and key
    cluster stats; scale: the softmax scale -> Selection (mass: P; estimated_error:
    sqrt(summed err of the left-out blocks / out2) per head)."""
    if (error_tolerance is None) == (target_density is None):
        raise ValueError("select_by_error: give exactly one of error_tolerance and "
                         "target_density")
    n, sq, _ = qn.shape
    if pool < 1 or n % pool:
        raise ValueError(f"select_by_error: pool={pool} must divide the {n} problems")
    qk = clustering.q
    num_q = qk.sizes.shape[-1]
    err, mass = error_estimates(qn, qk.labels, num_q, stats, scale, q_tile)
    q_sizes = qk.sizes.astype(jnp.float32)
    k_sizes = stats.sizes.astype(jnp.float32)
    mass = mass / jnp.maximum(q_sizes, 1.0)[..., None]
    area = q_sizes[:, :, None] * k_sizes[:, None, :]
    valid = area > 0
    est_out = jnp.einsum("nqk,nkd->nqd", mass, stats.value_mean)
    out2 = jnp.sum(q_sizes * jnp.sum(est_out * est_out, axis=-1), axis=-1)        # [N]
    rank = err / jnp.maximum(area, 1.0)
    flat = lambda x: x.reshape(n // pool, 1, -1)   # one row per pool of problems
    if target_density is None:
        budget = error_tolerance ** 2 * out2.reshape(n // pool, pool).sum(-1)
        left = _keep_heaviest(flat(-rank), flat(valid), flat(err), budget[:, None], 0,
                              crossing=False)
        selected = valid & ~left.reshape(valid.shape)
    else:
        total = (sq * jnp.sum(k_sizes, axis=-1)).reshape(n // pool, pool).sum(-1)
        selected = _keep_heaviest(flat(rank), flat(valid), flat(area) / total[:, None, None],
                                  target_density, 0).reshape(valid.shape)
    left_err = jnp.sum(jnp.where(selected | ~valid, 0.0, err), axis=(1, 2))
    estimated = jnp.sqrt(left_err / jnp.where(out2 > 0, out2, 1.0))
    return Selection(selected, mass, estimated)


class SelectionRule(Protocol):
    def __call__(self, clustering: Clustering, config: SVG2Config, qn: jax.Array | None,
                 key_stats: KeyClusterStats | None, scale: float | None, heads: int
                 ) -> Selection:
        """The blocks to compute for the call's clustering (qn [N, Sq, D], the key
        cluster stats and the softmax scale for rules that estimate per query; heads:
        the problems of one batch element, N = batch x heads in (b h) order)."""


def _svg2_rule(clustering, config, qn, key_stats, scale, heads) -> Selection:
    q, k = clustering.q, clustering.k
    if config.target_density is None:
        return select_clusters(q.centroids, k.centroids, k.sizes, config.top_p,
                               config.min_k_clusters, scale)
    return select_by_density(q.centroids, k.centroids, k.sizes, config.target_density,
                             config.min_k_clusters, scale)


def _error_rule(clustering, config, qn, key_stats, scale, heads) -> Selection:
    if qn is None or key_stats is None:
        raise ValueError("selection='error' needs the queries and the key cluster stats "
                         "(select_blocks(..., qn=, key_stats=))")
    scale = qn.shape[-1] ** -0.5 if scale is None else scale
    budget = (dict(error_tolerance=config.error_tolerance) if config.target_density is None
              else dict(target_density=config.target_density))
    return select_by_error(qn, clustering, key_stats, scale, q_tile=config.q_tile,
                           pool=heads if config.error_pool == "layer" else 1, **budget)


# SVG2Config.selection names one of these (module docstring).
SELECTION_RULES: dict[str, SelectionRule] = {"error": _error_rule, "svg2": _svg2_rule}


def select_blocks(clustering: Clustering, config: SVG2Config, scale: float | None = None, *,
                  qn: jax.Array | None = None, key_stats: KeyClusterStats | None = None,
                  heads: int = 1) -> Selection:
    """The selection config asks for (`config.selection`, a SELECTION_RULES name):
    "svg2": top-p (`config.top_p`) or the per query cluster budget
    `config.target_density`, at least `config.min_k_clusters` key clusters; "error"
    (`select_by_error`): the tolerance `config.error_tolerance`, or the budget
    `config.target_density` when set, per head or pooled over the `heads` problems of
    each batch element (`config.error_pool`; needs qn [N, Sq, D] and key_stats). scale:
    the attention's softmax scale (default 1/sqrt(D)), which the mass and error
    estimates use."""
    return SELECTION_RULES[config.selection](clustering, config, qn, key_stats, scale, heads)


def block_density(selected: jax.Array, q_sizes: jax.Array, k_sizes: jax.Array) -> jax.Array:
    """Fraction of query-key token pairs computed. selected: [N, QC, KC];
    q_sizes: [N, QC]; k_sizes: [N, KC] -> [N] float32."""
    qs = q_sizes.astype(jnp.float32)
    ks = k_sizes.astype(jnp.float32)
    pairs = jnp.einsum("nq,nqk,nk->n", qs, selected.astype(jnp.float32), ks)
    return pairs / (jnp.sum(qs, axis=-1) * jnp.sum(ks, axis=-1))
