"""The quality benchmark's measurements: the exact dense pass (output, true mass of
every block, peakiness) and the masked pass that scores every selection at once."""

from __future__ import annotations

import functools
import math

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from svg2_jax.compensation import KeyClusterStats, compensation_tile, left_out_of
from svg2_jax.sparse_attention import merge_attention


def _pad_tiles(x, tile):
    """[N, S, ...] -> [tiles, N, tile, ...], zero-padded to whole tiles."""
    s = x.shape[1]
    nt = -(-s // tile)
    pad = [(0, 0)] * x.ndim
    pad[1] = (0, nt * tile - s)
    xp = jnp.pad(x, pad)
    return jnp.moveaxis(xp.reshape(x.shape[0], nt, tile, *x.shape[2:]), 1, 0)


@functools.partial(jax.jit, static_argnames=("tile", "num_q_clusters", "num_k_clusters",
                                             "block"))
def dense_pass(qn, kn, vn, q_labels, k_labels, tile, num_q_clusters, num_k_clusters, block):
    """Exact dense attention, chunked over query tiles.

    Returns o_dense [N, S, D], the true mass of every (query cluster, key cluster) block
    [N, QC, KC] and of every fixed `block` x `block` tile in the original order
    [N, nb, nb], and per head the mean entropy (nats), the mean max probability and the
    fraction of queries whose most probable key is their own token.
    """
    n, s, d = qn.shape
    nb = -(-s // block)
    scale = 1.0 / math.sqrt(d)
    k_onehot = jax.nn.one_hot(k_labels, num_k_clusters, dtype=jnp.float32)  # [N, S, KC]
    pos = jnp.arange(s)
    kb_onehot = jax.nn.one_hot(pos // block, nb, dtype=jnp.float32)  # [S, nb]
    valid = _pad_tiles(jnp.ones((n, s), jnp.float32), tile)
    qpos_tiles = _pad_tiles(jnp.broadcast_to(pos, (n, s)), tile)

    def body(acc, xs):
        q_t, ql_t, qpos_t, val = xs
        qb_t = qpos_t // block
        sc = jnp.einsum("ntd,nsd->nts", q_t, kn) * scale
        m = jnp.max(sc, axis=-1, keepdims=True)
        e = jnp.exp(sc - m)
        l = jnp.sum(e, axis=-1, keepdims=True)
        p = e / l
        o = jnp.einsum("nts,nsd->ntd", p, vn)
        ent = jnp.log(l[..., 0]) - jnp.sum(p * (sc - m), axis=-1)
        mass_qk = jnp.einsum("nts,nsk->ntk", p, k_onehot) * val[..., None]
        q_onehot = jax.nn.one_hot(ql_t, num_q_clusters, dtype=jnp.float32)
        cl_mass = jnp.einsum("ntq,ntk->nqk", q_onehot, mass_qk)
        mass_tb = jnp.einsum("nts,sb->ntb", p, kb_onehot) * val[..., None]
        tile_mass = jnp.einsum("ntq,ntk->nqk", jax.nn.one_hot(qb_t, nb, dtype=jnp.float32),
                               mass_tb)
        is_self = (jnp.argmax(sc, axis=-1) == qpos_t).astype(jnp.float32)
        bm, tm, es, ms, ss = acc
        return (bm + cl_mass, tm + tile_mass, es + jnp.sum(ent * val, -1),
                ms + jnp.sum(val / l[..., 0], -1), ss + jnp.sum(is_self * val, -1)), o

    acc0 = (jnp.zeros((n, num_q_clusters, num_k_clusters), jnp.float32),
            jnp.zeros((n, nb, nb), jnp.float32),
            jnp.zeros((n,), jnp.float32), jnp.zeros((n,), jnp.float32),
            jnp.zeros((n,), jnp.float32))
    (bm, tm, es, ms, ss), o = jax.lax.scan(
        body, acc0, (_pad_tiles(qn, tile), _pad_tiles(q_labels, tile), qpos_tiles, valid))
    o = jnp.moveaxis(o, 0, 1).reshape(n, -1, d)[:, :s]
    return o, bm, tm, es / s, ms / s, ss / s


@functools.partial(jax.jit, static_argnames=("stride", "mass"))
def token_level_density(qn, kn, stride, mass=0.9):
    """Per head: mean over every stride-th query of the fraction of keys that the best
    token-level selection needs to hold `mass` of the query's attention."""
    d = qn.shape[-1]
    qs = qn[:, ::stride]
    sc = jnp.einsum("ntd,nsd->nts", qs, kn) / math.sqrt(d)
    p = jax.nn.softmax(sc, axis=-1)
    ps = -jnp.sort(-p, axis=-1)
    before = jnp.cumsum(ps, axis=-1) - ps
    needed = jnp.sum(before < mass, axis=-1)
    return jnp.mean(needed / kn.shape[1], axis=-1)


class CompensationInputs(NamedTuple):
    """What the masked pass needs to compensate cluster selections (the library's
    `compensation_tile`): the key clusters' stats; k_labels [N, S], the key cluster of
    each token (for the own-key term); q_means [N, QC, D], the mean query of each query
    cluster (for the per query cluster variant)."""

    stats: KeyClusterStats
    k_labels: jax.Array
    q_means: jax.Array


def _compensations(q_t, k_t, v_t, kl_t, qm_t, left, stats, scale):
    """One branch per `selectors.COMPENSATIONS` entry: (o [N, t, D], lse [N, t])."""
    tile = lambda q, own: lambda: compensation_tile(q, k_t, v_t, kl_t, left, stats, scale, own)
    none = lambda: (jnp.zeros(q_t.shape, jnp.float32), jnp.full(q_t.shape[:2], -jnp.inf))
    return (none, tile(q_t, True), tile(q_t, False), tile(qm_t, False))


@functools.partial(jax.jit, static_argnames=("tile",))
def masked_pass(qn, kn, vn, o_dense, q_labels, k_labels, selected, tile, comp_modes=None,
                comp: CompensationInputs | None = None):
    """Every selection at once: for query tiles, the exact softmax attention restricted
    to each selection's token mask, merged (through the lse) with the selection's
    compensation of its left-out key clusters.

    q_labels, k_labels [M, N, S]; selected [M, N, CQ, CK] bool (padded with False);
    comp_modes [M] int32, an index into `selectors.COMPENSATIONS` (None: no compensation
    anywhere); comp: what the compensation needs (selections with a mode other than
    "none" are cluster selections of comp.stats' clusters, labels q_labels).
    Returns per (selection, head) [M, N]: squared error sum vs o_dense, computed pairs,
    queries with no computed key, queries whose most probable key is computed; and the
    recall of every query [M, N, S] (the true mass on the computed pairs).
    """
    n, s, d = qn.shape
    scale = 1.0 / math.sqrt(d)
    m_ = q_labels.shape[0]
    if comp_modes is None:
        comp_modes = jnp.zeros((m_,), jnp.int32)
        kc = selected.shape[-1]
        comp = CompensationInputs(
            KeyClusterStats(jnp.zeros((n, kc), jnp.int32), jnp.zeros((n, kc, d)),
                            jnp.zeros((n, kc, d)), jnp.zeros((n, kc)), jnp.zeros((n, kc))),
            jnp.zeros((n, s), jnp.int32), jnp.zeros((n, 1, d)))
    num_q, num_k = comp.q_means.shape[1], comp.stats.sizes.shape[-1]
    valid = _pad_tiles(jnp.ones((n, s), jnp.float32), tile)
    # [M, N, S] -> [N, S, M] -> tiles [nt, N, t, M] -> [nt, M, N, t]
    ql_tiles = jnp.transpose(_pad_tiles(jnp.transpose(q_labels, (1, 2, 0)), tile), (0, 3, 1, 2))

    def body(acc, xs):
        q_t, od_t, ql_t, val, k_t, v_t, kl_t = xs
        sc = jnp.einsum("ntd,nsd->nts", q_t, kn) * scale
        m = jnp.max(sc, axis=-1, keepdims=True)
        e = jnp.exp(sc - m)
        l = jnp.sum(e, axis=-1)
        top1 = jnp.argmax(sc, axis=-1)  # [N, t]

        def one(args):
            sel, ql, kl, mode = args
            mask = jax.vmap(lambda se, a, b: se[a][:, b])(sel, ql, kl)
            em = jnp.where(mask, e, 0.0)
            lm = jnp.sum(em, axis=-1)
            o = jnp.einsum("nts,nsd->ntd", em, vn) / jnp.where(lm > 0, lm, 1.0)[..., None]
            lse = jnp.where(lm > 0, m[..., 0] + jnp.log(jnp.where(lm > 0, lm, 1.0)), -jnp.inf)
            cl = jnp.minimum(ql, num_q - 1)  # cluster labels (clamped for block selections)
            left = left_out_of(sel[:, :num_q, :num_k], cl, comp.stats.sizes)
            qm_t = jnp.take_along_axis(comp.q_means, cl[..., None], axis=1)
            o_c, lse_c = jax.lax.switch(mode, _compensations(q_t, k_t, v_t, kl_t, qm_t, left,
                                                             comp.stats, scale))
            o, _ = merge_attention(o, lse, o_c, lse_c)
            err = jnp.sum(jnp.sum((o - od_t) ** 2, -1) * val, -1)
            pairs = jnp.sum(jnp.sum(mask, -1).astype(jnp.float32) * val, -1)
            empty = jnp.sum((lm <= 0) * val, -1)
            hit = jnp.take_along_axis(mask, top1[..., None], axis=-1)[..., 0]
            return (err, pairs, empty, jnp.sum(hit * val, -1)), lm / l

        sums, rec = jax.lax.map(one, (selected, ql_t, k_labels, comp_modes))
        return jax.tree.map(jnp.add, acc, sums), rec

    acc0 = tuple(jnp.zeros((m_, n), jnp.float32) for _ in range(4))
    acc, rec = jax.lax.scan(body, acc0, (
        _pad_tiles(qn, tile), _pad_tiles(o_dense, tile), ql_tiles, valid, _pad_tiles(kn, tile),
        _pad_tiles(vn, tile), _pad_tiles(comp.k_labels, tile)))
    # rec: [nt, M, N, t]
    rec = jnp.transpose(rec, (1, 2, 0, 3)).reshape(m_, n, -1)[:, :, :s]
    return acc, rec


def pad_selection(sel, cq, ck):
    """[N, a, b] bool -> [N, cq, ck], padded with False (so selections stack)."""
    n, a, b = sel.shape
    out = np.zeros((n, cq, ck), bool)
    out[:, :a, :b] = sel
    return out
