"""Compensation of the key clusters a selection leaves out (issue #13, after SVG-EAR).

Every query still attends to the key clusters its query cluster did not select, through
one estimate per cluster instead of the exact keys: cluster j of n_j keys with member
mean key c_j, mean value vbar_j and mean per-dimension key variance kvar_j weighs, for
query q_t (s = softmax scale),

    l_tj = s q_t . c_j + log n_j + sig2_tj / 2,    sig2_tj = min(s^2 |q_t|^2 kvar_j, SIG2_MAX)

(the log of n_j E[e^{s q_t . k}] for keys spread isotropically around c_j: the
lognormal second-moment term), and stands for n_j keys of value vbar_j. The token's
own key (self-attention, Sq = Sk: key t for query t) is taken exactly when its cluster
j* is left out: the cluster then counts n - 1 average members plus key t itself, an
extra weight delta_t = e^{s q_t . k_t} - e^{l_tj*} / n_j* on v_t. The compensation's
(out, lse) merges with the backend's sparse (out, lse) through the log-sum-exp
(`merge_attention`, float32), exactly as two disjoint key sets do.

Empty clusters (n_j = 0) weigh nothing. With every non-empty cluster selected there is
nothing to compensate and the merge returns the sparse result unchanged.

NaN/Inf elements of q, k and v count as 0 in the statistics and the error estimate (as in
the k-means, `svg2_jax.nonfinite`), so a bad token never makes another token's estimate or
another head's selection NaN; the output is made NaN where dense attention's would be
after the compensation (`attention.svg2_core`), which so cannot hide it.

Everything streams over row tiles (`scan_row_tiles`: `q_tile` queries, or 4096 keys for
the statistics), so the [Sq, KC] logits exist one tile at a time and nothing is padded or
copied whole: no [S, KC] array for all heads at Wan 720p, and the output is merged in
place.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from svg2_jax.kmeans import KMeansResult
from svg2_jax.nonfinite import finite_or_zero
from svg2_jax.sparse_attention import merge_attention

# sig2 is clamped here: e^{sig2} appears in the error estimate, and a cluster whose
# spread makes sig2 this large is already weighted as dominant.
SIG2_MAX = 20.0


class KeyClusterStats(NamedTuple):
    """Per key cluster statistics of one call, from the final k-means assignment
    (N = batch x heads problems, float32):

    sizes: [N, KC] int32 members (0: an empty cluster, excluded everywhere).
    key_mean: [N, KC, D] mean member key (the k-means update's sums / counts).
    value_mean: [N, KC, D] mean member value.
    key_var: [N, KC] mean over members and dimensions of (k - key_mean)^2.
    value_var: [N, KC] mean over members of |v - value_mean|^2.
    """

    sizes: jax.Array
    key_mean: jax.Array
    value_mean: jax.Array
    key_var: jax.Array
    value_var: jax.Array


def _segment_sum(x, labels, num):
    """Per problem sums of x [N, t, ...] by labels [N, t] into [N, num, ...]; labels out of
    [0, num) are dropped."""
    return jax.vmap(lambda xi, li: jax.ops.segment_sum(xi, li, num_segments=num))(x, labels)


def key_cluster_stats(kn: jax.Array, vn: jax.Array, k_clusters: KMeansResult,
                      tile: int = 4096) -> KeyClusterStats:
    """kn, vn [N, Sk, D]; the keys' k-means result -> KeyClusterStats: segment sums over the
    tokens, `tile` tokens at a time (`scan_row_tiles`), so no float32 copy of K or V is
    made; one pass for the sums, one for the squared deviations from the means. NaN/Inf
    elements count as 0 (module docstring)."""
    n, _, d = kn.shape
    num = k_clusters.sizes.shape[-1]
    labels = k_clusters.labels

    def tiles(start, valid):
        ids = jnp.where(valid, jax.lax.dynamic_slice_in_dim(labels, start, valid.shape[1], 1),
                        num)
        cut = lambda x: finite_or_zero(jax.lax.dynamic_slice_in_dim(
            x, start, valid.shape[1], 1).astype(jnp.float32))
        return ids, cut(kn), cut(vn)

    def sums(acc, start, valid):
        ids, k, v = tiles(start, valid)
        return acc + _segment_sum(jnp.concatenate([k, v], axis=-1), ids, num)

    sizes = k_clusters.sizes
    den = jnp.maximum(sizes, 1).astype(jnp.float32)
    total = scan_row_tiles(sums, jnp.zeros((n, num, 2 * d), jnp.float32), kn.shape[1], tile)
    key_mean, value_mean = total[..., :d] / den[..., None], total[..., d:] / den[..., None]

    def deviations(acc, start, valid):
        ids, k, v = tiles(start, valid)
        own = jnp.minimum(ids, num - 1)[..., None]
        dk = k - jnp.take_along_axis(key_mean, own, axis=1)
        dv = v - jnp.take_along_axis(value_mean, own, axis=1)
        return acc + _segment_sum(jnp.stack([jnp.sum(dk * dk, -1), jnp.sum(dv * dv, -1)], -1),
                                  ids, num)

    sq = scan_row_tiles(deviations, jnp.zeros((n, num, 2), jnp.float32), kn.shape[1], tile)
    return KeyClusterStats(sizes, key_mean, value_mean, sq[..., 0] / (den * d),
                           sq[..., 1] / den)


def token_logits(q: jax.Array, stats: KeyClusterStats, scale: float):
    """q [N, t, D] -> (l [N, t, KC] float32, -inf for empty clusters; sig2 [N, t, KC]):
    each key cluster's estimated log-weight for each query (module docstring)."""
    q32 = q.astype(jnp.float32)
    dots = jnp.einsum("ntd,nkd->ntk", q, stats.key_mean.astype(q.dtype),
                      preferred_element_type=jnp.float32,
                      precision=jax.lax.Precision.HIGHEST)
    q2 = jnp.sum(q32 * q32, axis=-1, keepdims=True)
    sig2 = jnp.minimum(scale * scale * q2 * stats.key_var[:, None, :], SIG2_MAX)
    n = stats.sizes[:, None, :]
    l = scale * dots + jnp.log(jnp.maximum(n, 1).astype(jnp.float32)) + 0.5 * sig2
    return jnp.where(n > 0, l, -jnp.inf), sig2


def _safe_max(x, axis=-1):
    m = jnp.max(x, axis=axis)
    return jnp.where(jnp.isfinite(m), m, 0.0)


def compensation_tile(q, own_k, own_v, own_label, left_out, stats: KeyClusterStats,
                      scale: float, own_key: bool):
    """The compensation of one query tile: q [N, t, D]; own_k, own_v [N, t, D] and
    own_label [N, t] the key, value and key cluster at each query's position (used when
    own_key); left_out [N, t, KC] bool, the clusters this query does not attend to
    exactly -> (out [N, t, D] float32, lse [N, t] float32; 0 and -inf where nothing is
    left out)."""
    l, _ = token_logits(q, stats, scale)
    l = jnp.where(left_out, l, -jnp.inf)
    if own_key:
        own_out = jnp.take_along_axis(left_out, own_label[..., None], axis=-1)[..., 0]
        a = jnp.einsum("ntd,ntd->nt", q, own_k, preferred_element_type=jnp.float32,
                       precision=jax.lax.Precision.HIGHEST) * scale
        a = jnp.where(own_out, a, -jnp.inf)
        m = jnp.maximum(_safe_max(l), jnp.where(jnp.isfinite(a), a, -jnp.inf))
    else:
        m = _safe_max(l)
    w = jnp.exp(l - m[..., None])                                  # [N, t, KC]
    total = jnp.sum(w, axis=-1)
    num = jnp.einsum("ntk,nkd->ntd", w.astype(own_v.dtype),
                     stats.value_mean.astype(own_v.dtype), preferred_element_type=jnp.float32)
    if own_key:
        n_own = jnp.take_along_axis(stats.sizes, own_label, axis=-1).astype(jnp.float32)
        w_own = jnp.take_along_axis(w, own_label[..., None], axis=-1)[..., 0]
        delta = jnp.where(own_out, jnp.exp(a - m) - w_own / jnp.maximum(n_own, 1.0), 0.0)
        total = total + delta
        num = num + delta[..., None] * own_v.astype(jnp.float32)
    ok = total > 0
    out = num / jnp.where(ok, total, 1.0)[..., None]
    lse = jnp.where(ok, m + jnp.log(jnp.where(ok, total, 1.0)), -jnp.inf)
    return jnp.where(ok[..., None], out, 0.0), lse


def scan_row_tiles(fn, carry, num_rows: int, tile: int):
    """carry = fn(carry, start, valid) for row tiles [start, start + t) covering
    [0, num_rows), t = min(tile, num_rows): the last tile is moved back to end at num_rows
    (no padding, so no padded copy of anything), and valid [1, t] bool marks its rows not
    covered by an earlier tile. One lax.scan: only one tile's temporaries are live, and a
    carried buffer updated with `dynamic_update_slice` stays in place."""
    t = min(tile, num_rows)
    rows = jnp.arange(t)

    def body(c, i):
        start = jnp.minimum(i * t, num_rows - t)
        return fn(c, start, (start + rows >= i * t)[None]), None

    return jax.lax.scan(body, carry, jnp.arange(-(-num_rows // t)))[0]


def error_estimates(qn: jax.Array, q_labels: jax.Array, num_q_clusters: int,
                    stats: KeyClusterStats, scale: float, q_tile: int = 256):
    """What compensating each block would cost, estimated per query token and summed over
    each query cluster (one pass over query tiles, carrying only the [N, QC, KC] sums):

      pi_tj = softmax_j l_tj       (the estimated share of key cluster j in query t's mass)
      e2_tj = pi_tj^2 / n_j (expm1(sig2_tj) |vbar_j|^2 + e^{sig2_tj} vvar_j)

    e2 is the expected squared deviation, relative to the output's scale, between the
    cluster's exact contribution and its compensation, for n_j members drawn independently
    with the cluster's spread (lognormal weights e^{s q . k}, values spread vvar around
    vbar). qn [N, Sq, D]; q_labels [N, Sq] -> (error [N, QC, KC] = sum over the tokens of
    e2, mass [N, QC, KC] = sum over the tokens of pi), float32."""
    n, kc = stats.sizes.shape
    vb2 = jnp.sum(stats.value_mean * stats.value_mean, axis=-1)[:, None, :]
    inv_n = 1.0 / jnp.maximum(stats.sizes, 1).astype(jnp.float32)[:, None, :]

    def body(acc, start, valid):
        q = finite_or_zero(jax.lax.dynamic_slice_in_dim(qn, start, valid.shape[1], 1))
        ids = jnp.where(valid, jax.lax.dynamic_slice_in_dim(q_labels, start, valid.shape[1], 1),
                        num_q_clusters)  # rows of an earlier tile are dropped
        l, sig2 = token_logits(q, stats, scale)
        p = jnp.exp(l - _safe_max(l)[..., None])
        pi = p / jnp.sum(p, axis=-1, keepdims=True)
        e2 = pi * pi * inv_n * (jnp.expm1(sig2) * vb2 + jnp.exp(sig2) * stats.value_var[:, None])
        e2 = jnp.where(stats.sizes[:, None, :] > 0, e2, 0.0)
        return (acc[0] + _segment_sum(e2, ids, num_q_clusters),
                acc[1] + _segment_sum(pi, ids, num_q_clusters))

    zeros = jnp.zeros((n, num_q_clusters, kc), jnp.float32)
    return scan_row_tiles(body, (zeros, zeros), qn.shape[1], q_tile)


def left_out_of(selected: jax.Array, q_labels: jax.Array, sizes: jax.Array) -> jax.Array:
    """selected [N, QC, KC]; q_labels [N, t]; sizes [N, KC] -> [N, t, KC] bool: the
    non-empty key clusters each query's cluster did not select."""
    sel = jnp.take_along_axis(selected, q_labels[..., None], axis=1)
    return ~sel & (sizes[:, None, :] > 0)


def compensate(qn, kn, vn, q_labels, k_labels, selected, stats: KeyClusterStats, scale: float,
               out, lse, *, own_key: bool = True, q_tile: int = 256):
    """The sparse attention's (out [N, Sq, D], lse [N, Sq]) merged with the compensation of
    the key clusters it left out: qn [N, Sq, D]; kn, vn [N, Sk, D]; q_labels [N, Sq],
    k_labels [N, Sk]; selected [N, QC, KC] (query t attended key cluster j exactly when
    selected[n, q_labels[n, t], j]; q_labels may be any grouping of the queries, e.g. the
    Pallas tiles' `backends.attended_blocks`); the key clusters' stats. own_key: take each
    query's own key exactly (only used when Sq == Sk: self-attention).

    Returns (out [N, Sq, D] in out.dtype, lse [N, Sq] float32, compensation lse [N, Sq]:
    the log of the compensation's share of the softmax denominator plus the lse, -inf
    where nothing was left out)."""
    own_key = own_key and qn.shape[1] == kn.shape[1]
    if not own_key:  # placeholders of the right shape, never read
        kn, vn, k_labels = qn, qn, q_labels

    def body(carry, start, valid):
        o_all, l_all, c_all = carry
        cut = lambda x: jax.lax.dynamic_slice_in_dim(x, start, valid.shape[1], 1)
        q, ql = cut(qn), cut(q_labels)
        o_c, lse_c = compensation_tile(q, cut(kn), cut(vn), cut(k_labels),
                                       left_out_of(selected, ql, stats.sizes), stats, scale,
                                       own_key)
        # rows an earlier tile merged already keep their values (the last tile overlaps)
        lse_c = jnp.where(valid, lse_c, -jnp.inf)
        o, l = merge_attention(cut(o_all), cut(l_all), o_c, lse_c)
        c = jnp.where(valid, lse_c, cut(c_all))
        put = lambda buf, x: jax.lax.dynamic_update_slice_in_dim(buf, x, start, 1)
        return put(o_all, o), put(l_all, l), put(c_all, c)

    init = (out, lse, jnp.full(lse.shape, -jnp.inf, jnp.float32))
    return scan_row_tiles(body, init, qn.shape[1], q_tile)
