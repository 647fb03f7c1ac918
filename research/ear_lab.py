"""Research lab for issue #13 (error-aware SVG2): estimators, selection rules and
compensation of the dropped key clusters, measured at equal density.

Not product code. It reuses the library (k-means, selection, masked sparse attention
and the lse merge) and `scripts.bench_quality` (inputs, cold-start clustering, oracle).

Evaluation trick (exact, not an approximation): for a problem (one head) the dense
softmax P [S, S] is computed once, and from it, per query token t and key cluster j,
  Y[t, j] = sum_{s in j} P[t, s] v_s  ([S, KC, D])   and   R[t, j] = sum_{s in j} P[t, s].
Any block selection then gives the exact sparse output without another S x S pass:
  o_sparse[t] = sum_{j sel} Y[t, j] / sum_{j sel} R[t, j],  recall[t] = sum_{j sel} R[t, j],
and a compensation term with per-token log-weights lw[t, j] (unnormalised, same units as
the logits) is merged through the log-sum-exp exactly as `merge_attention` does:
  o[t] = (sum_{j sel} Y[t, j] + sum_{j unsel} e^{lw[t,j] - lse_dense[t]} vbar_j)
         / (sum_{j sel} R[t, j] + sum_{j unsel} e^{lw[t,j] - lse_dense[t]}).
`check_against_library` verifies this against `sparse_attention_masked_dense` +
`merge_attention` on a few selections.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from scripts.bench_quality import build_qkv, oracle_select, svg2_clusters
from svg2_jax import SVG2Config
from svg2_jax.selection import _keep_heaviest, select_clusters
from svg2_jax.sparse_attention import merge_attention, sparse_attention_masked_dense

NEG = -1e30


# --------------------------------------------------------------------------- problem


@dataclass
class Problem:
    """One input set: N = B x H independent heads, all arrays numpy float64 unless noted."""
    name: str
    q: np.ndarray          # [N, S, D] float32
    k: np.ndarray
    v: np.ndarray
    ql: np.ndarray         # [N, S] query cluster labels
    kl: np.ndarray         # [N, S] key cluster labels
    qs: np.ndarray         # [N, QC] sizes
    ks: np.ndarray         # [N, KC]
    qcen_km: np.ndarray    # [N, QC, D] k-means centroids (what the library's selection uses)
    kcen_km: np.ndarray    # [N, KC, D]
    kmean: np.ndarray      # [N, KC, D] exact member mean of K (= k-means centroid after an update)
    kvar: np.ndarray       # [N, KC, D] per-dimension member variance of K
    vmean: np.ndarray      # [N, KC, D] member mean of V
    vvar: np.ndarray       # [N, KC] mean squared distance of members' V to vmean
    qmean: np.ndarray      # [N, QC, D]
    Y: np.ndarray          # [N, S, KC, D] float32 (see module docstring)
    R: np.ndarray          # [N, S, KC] float32
    o_dense: np.ndarray    # [N, S, D]
    lse_dense: np.ndarray  # [N, S] natural-log softmax denominator (scale included)
    self_logit: np.ndarray  # [N, S] q_t . k_t * scale
    meta: dict

    @property
    def n(self):
        return self.q.shape[0]

    @property
    def S(self):
        return self.q.shape[1]

    @property
    def D(self):
        return self.q.shape[2]

    @property
    def QC(self):
        return self.qs.shape[1]

    @property
    def KC(self):
        return self.ks.shape[1]


def cluster_stats(x, labels, num):
    """Member mean, per-dim variance, size and scalar spread per cluster (numpy).
    x: [S, D]; labels [S] -> mean [C, D], var [C, D], size [C], spread [C]."""
    d = x.shape[1]
    size = np.bincount(labels, minlength=num).astype(np.float64)
    s1 = np.zeros((num, d))
    s2 = np.zeros((num, d))
    np.add.at(s1, labels, x)
    np.add.at(s2, labels, x * x)
    den = np.maximum(size, 1)[:, None]
    mean = s1 / den
    var = np.maximum(s2 / den - mean * mean, 0.0)
    return mean, var, size, var.sum(-1)


def make_problem(name, images, frames, height, width, heads, temperature, seed, qc, kc,
                 qk_noise=0.3, kmeans_iters=50, cluster_space=None, roll_kv=0):
    q, k, v, meta = build_qkv(tuple(images), frames, height, width, heads,
                              temperature=temperature, qk_noise=qk_noise, seed=seed)
    if roll_kv:  # key/value of token (t, y, x) come from (t, y, x - roll): no self preference
        g = meta["grid"]
        k, v = (jnp.roll(x.reshape(x.shape[0], *g, *x.shape[2:]), roll_kv, axis=3)
                .reshape(x.shape) for x in (k, v))
        meta["roll_kv"] = roll_kv
    meta.update(name=name, QC=qc, KC=kc,
                cluster_space=getattr(cluster_space, "__module__", None))
    cfg = SVG2Config(num_q_clusters=qc, num_k_clusters=kc, kmeans_iters_cold=kmeans_iters,
                     backend="jax", kmeans_impl="xla")
    key = jax.random.PRNGKey(seed)
    if cluster_space is None:
        qk, kk = svg2_clusters(q, k, cfg, key)
    else:  # SCOPE-style try: k-means on transformed features, same labels used after
        qk, kk = svg2_clusters(cluster_space(q), cluster_space(k), cfg, key)
    qn, kn, vn = (np.asarray(rearrange(x, "b s h d -> (b h) s d"), np.float64) for x in (q, k, v))
    n, s, d = qn.shape
    ql, kl = np.asarray(qk.labels), np.asarray(kk.labels)
    scale = 1.0 / math.sqrt(d)
    out = {f: [] for f in ("kmean", "kvar", "vmean", "vvar", "qmean", "Y", "R", "o", "lse",
                           "self")}
    for i in range(n):
        km_, kv_, _, _ = cluster_stats(kn[i], kl[i], kc)
        vm_, _, _, vsp = cluster_stats(vn[i], kl[i], kc)
        qm_, _, _, _ = cluster_stats(qn[i], ql[i], qc)
        logits = (qn[i] @ kn[i].T) * scale
        m = logits.max(-1, keepdims=True)
        e = np.exp(logits - m)
        z = e.sum(-1, keepdims=True)
        p = e / z
        y = np.zeros((s, kc, d), np.float32)
        r = np.zeros((s, kc), np.float32)
        for j in range(kc):
            idx = np.nonzero(kl[i] == j)[0]
            if idx.size:
                y[:, j] = p[:, idx] @ vn[i][idx]
                r[:, j] = p[:, idx].sum(-1)
        out["kmean"].append(km_); out["kvar"].append(kv_); out["vmean"].append(vm_)
        out["vvar"].append(vsp); out["qmean"].append(qm_); out["Y"].append(y)
        out["R"].append(r); out["o"].append(p @ vn[i]); out["lse"].append((m + np.log(z))[:, 0])
        out["self"].append(np.sum(qn[i] * kn[i], -1) * scale)
    st = {k_: np.stack(v_) for k_, v_ in out.items()}
    qcen, kcen = np.asarray(qk.centroids, np.float64), np.asarray(kk.centroids, np.float64)
    if cluster_space is not None:  # centroids in the clustering space mean nothing here
        qcen, kcen = st["qmean"], st["kmean"]
    return Problem(name=name, q=qn.astype(np.float32), k=kn.astype(np.float32),
                   v=vn.astype(np.float32), ql=ql, kl=kl, qs=np.asarray(qk.sizes, np.float64),
                   ks=np.asarray(kk.sizes, np.float64),
                   qcen_km=qcen, kcen_km=kcen, kmean=st["kmean"],
                   kvar=st["kvar"], vmean=st["vmean"], vvar=st["vvar"], qmean=st["qmean"],
                   Y=st["Y"], R=st["R"], o_dense=st["o"], lse_dense=st["lse"],
                   self_logit=st["self"], meta=meta)


def peakiness(p: Problem):
    """Mean max probability and mean entropy (nats) of the dense attention, and the mean
    fraction of queries whose own key is the top key (from the block arrays: the max over
    clusters bounds, so recomputed here from logits on a subsample)."""
    sub = slice(None, None, 4)
    mp, ent = [], []
    for i in range(p.n):
        lg = (p.q[i][sub].astype(np.float64) @ p.k[i].T.astype(np.float64)) / math.sqrt(p.D)
        lg -= lg.max(-1, keepdims=True)
        e = np.exp(lg)
        pr = e / e.sum(-1, keepdims=True)
        mp.append(pr.max(-1).mean())
        ent.append(-(pr * np.log(np.maximum(pr, 1e-300))).sum(-1).mean())
    return float(np.mean(mp)), float(np.mean(ent))


# --------------------------------------------------------------------------- estimates


def token_logw(p: Problem, var: str = "dim", self_term: bool = False, kcen: str = "mean"):
    """Per token estimated log-weight of each key cluster, [N, S, KC]:
    log n_j + q_t . c_j * scale (+ 0.5 * scale^2 * sum_d q_td^2 var_jd) (the lognormal
    second-moment term; var = "dim" per dimension, "scalar" isotropic mean var, "none").
    self_term: the token's own key (same position) is taken exactly: its cluster's
    weight becomes (n - 1)/n * w + exp(q_t . k_t * scale). Empty clusters get NEG."""
    scale = 1.0 / math.sqrt(p.D)
    c = p.kmean if kcen == "mean" else p.kcen_km
    q = p.q.astype(np.float64)
    lw = np.einsum("nsd,nkd->nsk", q, c) * scale + np.log(np.maximum(p.ks, 1))[:, None, :]
    if var == "dim":
        lw += 0.5 * scale * scale * np.einsum("nsd,nkd->nsk", q * q, p.kvar)
    elif var == "scalar":
        lw += 0.5 * scale * scale * np.sum(q * q, -1)[..., None] * p.kvar.mean(-1)[:, None, :]
    if self_term:
        own = np.take_along_axis(lw, p.kl[..., None], -1)[..., 0]
        n_own = np.take_along_axis(np.broadcast_to(p.ks[:, None, :], lw.shape), p.kl[..., None],
                                   -1)[..., 0]
        rest = own + np.log(np.maximum(n_own - 1, 0) / n_own + 1e-300)
        new = np.logaddexp(rest, p.self_logit)
        np.put_along_axis(lw, p.kl[..., None], new[..., None], -1)
    return np.where(p.ks[:, None, :] > 0, lw, NEG)


def centroid_logw(p: Problem, var: str = "none", qcen: str = "km", kcen: str = "km"):
    """Per query cluster log-weights [N, QC, KC] from the query centroid (SVG2: var none,
    k-means centroids)."""
    scale = 1.0 / math.sqrt(p.D)
    qc = p.qcen_km if qcen == "km" else p.qmean
    kc_ = p.kcen_km if kcen == "km" else p.kmean
    lw = np.einsum("nqd,nkd->nqk", qc, kc_) * scale + np.log(np.maximum(p.ks, 1))[:, None, :]
    if var == "dim":
        lw += 0.5 * scale * scale * np.einsum("nqd,nkd->nqk", qc * qc, p.kvar)
    return np.where(p.ks[:, None, :] > 0, lw, NEG)


def softmax_rows(lw):
    m = lw.max(-1, keepdims=True)
    e = np.exp(lw - m)
    return e / e.sum(-1, keepdims=True)


def seg_mean(x, labels, num):
    """x [N, S, ...] -> mean over each query cluster [N, QC, ...]."""
    n = x.shape[0]
    out = np.zeros((n, num) + x.shape[2:])
    for i in range(n):
        np.add.at(out[i], labels[i], x[i])
        cnt = np.bincount(labels[i], minlength=num).astype(np.float64)
        out[i] /= np.maximum(cnt, 1).reshape((-1,) + (1,) * (x.ndim - 2))
    return out


def seg_logmeanexp(lw, labels, num):
    """log of the mean over each query cluster of exp(lw): [N, S, KC] -> [N, QC, KC]."""
    m = lw.max(axis=(1,), keepdims=True)
    return np.log(np.maximum(seg_mean(np.exp(lw - m), labels, num), 1e-300)) + m


def token_mass(p: Problem, lw_tok):
    """Mean over each query cluster of the per-token softmax over clusters: [N, QC, KC]."""
    return seg_mean(softmax_rows(lw_tok), p.ql, p.QC)


def qbar_block_error(p: Problem, lw_comp_qc, qcen="km"):
    """Exact compensation error at the query centroid: for each (i, j),
    || sum_{s in j} e^{qbar_i . k_s * scale} v_s - e^{lw_comp[i, j]} vbar_j ||^2 / Zbar_i^2,
    Zbar_i = sum_s e^{qbar_i . k_s * scale}. Also returns the exact block mass at qbar.
    Costs QC x S x D for the logits and as much for the sums (GPU: one small matmul)."""
    scale = 1.0 / math.sqrt(p.D)
    qc = p.qcen_km if qcen == "km" else p.qmean
    err = np.zeros((p.n, p.QC, p.KC))
    mass = np.zeros((p.n, p.QC, p.KC))
    for i in range(p.n):
        lg = qc[i] @ p.k[i].T.astype(np.float64) * scale       # [QC, S]
        m = lg.max(-1, keepdims=True)
        e = np.exp(lg - m)
        z = e.sum(-1, keepdims=True)
        onehot = np.eye(p.KC)[p.kl[i]]                          # [S, KC]
        blk_m = e @ onehot                                      # [QC, KC]
        yv = np.einsum("qs,sk,sd->qkd", e, onehot, p.v[i].astype(np.float64))
        w = np.exp(lw_comp_qc[i] - m)                           # same shift
        res = yv - w[..., None] * p.vmean[i][None]
        err[i] = np.sum(res * res, -1) / (z * z)
        mass[i] = blk_m / z
    return err, mass


def ear_efficiency(p: Problem, gamma=1.0, eps=1e-8):
    """SVG-EAR's estimate (svg-project SVG-EAR, `_error_estimation_kernel`): per (i, j),
    sum_{s in j} || a_s v_s - a_c vbar_j ||^2 with a_s = exp(qbar_i . k_s * scale),
    a_c = exp(qbar_i . kc_j * scale) (k-means centroids, no size, no variance term);
    efficiency = log(err) - gamma * log(n_i * n_j). Rows are shifted by their max logit
    (a per-row constant; EAR ranks within a row)."""
    scale = 1.0 / math.sqrt(p.D)
    out = np.zeros((p.n, p.QC, p.KC))
    for i in range(p.n):
        lg = p.qcen_km[i] @ p.k[i].T.astype(np.float64) * scale
        cl = p.qcen_km[i] @ p.kcen_km[i].T * scale
        m = lg.max(-1, keepdims=True)
        a = np.exp(lg - m)
        ac = np.exp(cl - m)
        onehot = np.eye(p.KC)[p.kl[i]]
        v = p.v[i].astype(np.float64)
        vn2 = np.sum(v * v, -1)
        cvd = np.einsum("sd,sd->s", v, p.vmean[i][p.kl[i]])
        sq = (a * a * vn2) @ onehot
        cross = (a * cvd) @ onehot
        err = sq - 2 * ac * cross + ac * ac * np.sum(p.vmean[i] ** 2, -1)[None] * p.ks[i][None]
        err = np.maximum(err, eps)
        area = np.maximum(p.qs[i][:, None] * p.ks[i][None], eps)
        out[i] = np.log(err) - gamma * np.log(area)
    return out


# --------------------------------------------------------------------------- selection


def nonempty_mask(p: Problem):
    return np.broadcast_to((p.ks > 0)[:, None, :], (p.n, p.QC, p.KC))


def sel_svg2(p: Problem, top_p, min_kc_ratio=0.1):
    """The library's rule, called as svg2_attention calls it."""
    cfg = SVG2Config(num_q_clusters=p.QC, num_k_clusters=p.KC, top_p=top_p,
                     min_kc_ratio=min_kc_ratio)
    return np.asarray(select_clusters(jnp.asarray(p.qcen_km, jnp.float32),
                                      jnp.asarray(p.kcen_km, jnp.float32),
                                      jnp.asarray(p.ks, jnp.int32), top_p, cfg.min_k_clusters))


def sel_top_p(p: Problem, mass, top_p, min_clusters):
    """SVG2's top-p + floor rule on any mass estimate [N, QC, KC] (rows sum to 1)."""
    ne = nonempty_mask(p)
    return np.asarray(_keep_heaviest(jnp.asarray(mass, jnp.float32), jnp.asarray(ne),
                                     jnp.asarray(mass, jnp.float32), top_p, min_clusters))


def sel_budget_rows(p: Problem, score, density, min_clusters=0):
    """Per query cluster: key clusters by descending score until `density` of the keys
    (the crossing cluster kept)."""
    ne = nonempty_mask(p)
    frac = p.ks / p.ks.sum(-1, keepdims=True)
    amount = np.broadcast_to(frac[:, None, :], ne.shape)
    return np.asarray(_keep_heaviest(jnp.asarray(score, jnp.float32), jnp.asarray(ne),
                                     jnp.asarray(amount, jnp.float32), density, min_clusters))


def sel_budget_global(p: Problem, score, density, per_head=False, floor=None):
    """A total budget: blocks by descending score over all heads (per_head=False) or
    within each head, until `density` of all pairs; `floor` [N, QC, KC] bool blocks are
    always taken (and counted)."""
    ne = nonempty_mask(p)
    area = p.qs[:, :, None] * p.ks[:, None, :]
    sel = np.zeros(ne.shape, bool) if floor is None else floor.copy() & ne
    groups = [slice(i, i + 1) for i in range(p.n)] if per_head else [slice(None)]
    for g in groups:
        a, s_, taken = area[g].ravel(), score[g].ravel(), sel[g].ravel().copy()
        total = area[g].sum()
        budget = density * total - a[taken].sum()
        cand = np.nonzero(ne[g].ravel() & ~taken)[0]
        order = cand[np.argsort(-s_[cand], kind="stable")]
        cum = np.cumsum(a[order]) - a[order]
        taken[order[cum < budget]] = True
        sel[g] = taken.reshape(sel[g].shape)
    return sel


def sel_err_tolerance(p: Problem, e2, out2, tau, per="head"):
    """Error-aware analogue of top-p: blocks are left to the compensation in ascending
    order of estimated error per key of cost (e2_ij / n_j) while the sum of the dropped
    blocks' estimated squared error (n_i e2_ij, errors of different blocks adding in
    quadrature) stays within tau^2 x the estimated squared output norm (sum_i n_i out2_i),
    per head ("head") or per query cluster ("rows"). e2 [N, QC, KC]; out2 [N, QC]."""
    ne = nonempty_mask(p)
    eff = np.where(ne, e2 / np.maximum(p.ks, 1)[:, None, :], np.inf)
    cost = p.qs[:, :, None] * e2                   # squared error summed over the queries
    if per == "rows":
        order = np.argsort(eff, -1, kind="stable")
        c = np.take_along_axis(np.where(ne, cost, 0.0), order, -1)
        drop_sorted = np.cumsum(c, -1) <= tau * tau * (p.qs * out2)[..., None]
        drop = np.zeros(ne.shape, bool)
        np.put_along_axis(drop, order, drop_sorted, -1)
        return ne & ~drop
    sel = np.zeros(ne.shape, bool)
    for i in range(p.n):
        order = np.argsort(eff[i].ravel(), kind="stable")
        c = np.where(ne[i], cost[i], 0.0).ravel()[order]
        drop_sorted = np.cumsum(c) <= tau * tau * np.sum(p.qs[i] * out2[i])
        keep = np.ones(order.size, bool)
        keep[order[drop_sorted]] = False
        sel[i] = keep.reshape(ne[i].shape) & ne[i]
    return sel


def sel_ear(p: Problem, eff, top_p, min_kc_ratio=0.1, eps=1e-8):
    """SVG-EAR's `identify_dynamic_map_estimated`: the area budget of each query cluster
    is that of its centroid top-p set (with min_kc_ratio * 2 clusters at least), the
    min_kc_ratio top-mass clusters are guaranteed, the rest of the budget goes to blocks
    by descending efficiency (the crossing block kept)."""
    kc = p.KC
    cl = np.einsum("nqd,nkd->nqk", p.qcen_km, p.kcen_km) / math.sqrt(p.D)
    bl = cl + np.log(p.ks + eps)[:, None, :]
    bp = softmax_rows(bl)
    order = np.argsort(-bp, -1, kind="stable")
    sp = np.take_along_axis(bp, order, -1)
    keep = np.cumsum(sp, -1) <= top_p
    keep = np.concatenate([np.ones_like(keep[..., :1]), keep[..., :-1]], -1)
    preserve = 0
    if min_kc_ratio > 0:
        preserve = max(1, int(min_kc_ratio * kc))
        keep[..., :max(1, int(min_kc_ratio * kc * 2))] = True
    area = p.qs[:, :, None] * p.ks[:, None, :]
    sarea = np.take_along_axis(area, order, -1)
    budget = (keep * sarea).sum(-1, keepdims=True)
    guar = np.zeros(area.shape, bool)
    if preserve:
        np.put_along_axis(guar, order[..., :preserve], True, -1)
    rem = np.maximum(budget - (guar * area).sum(-1, keepdims=True), 0)
    e = np.where(guar, -1e10, eff)
    eo = np.argsort(-e, -1, kind="stable")
    ca = np.take_along_axis(area, eo, -1)
    dk = (np.cumsum(ca, -1) - ca) < rem
    dyn = np.zeros(area.shape, bool)
    np.put_along_axis(dyn, eo, dk, -1)
    return (guar | dyn) & nonempty_mask(p)


def sel_oracle(p: Problem, density):
    """bench_quality's oracle: true mass per pair, greedy per head to the density."""
    bm = seg_mean(p.R.astype(np.float64), p.ql, p.QC) * p.qs[..., None]  # block mass sums
    return oracle_select(bm, p.qs, p.ks, np.full(p.n, density))


# --------------------------------------------------------------------------- evaluation


@jax.jit
def _eval(sel_tok, Y, R, o_dense, comp_w, vmean, self_w, v):
    """sel_tok [N, S, KC] bool; comp_w [N, S, KC] weights relative to the dense
    denominator (0 where nothing is compensated); self_w [N, S] the extra weight of the
    token's own value (exact-self compensation, else 0) -> per-head rel error, recall."""
    a = jnp.einsum("nsk,nskd->nsd", sel_tok.astype(jnp.float32), Y)
    r = jnp.sum(jnp.where(sel_tok, R, 0.0), -1)
    c = jnp.einsum("nsk,nkd->nsd", comp_w, vmean) + self_w[..., None] * v
    w = jnp.sum(comp_w, -1) + self_w
    den = r + w
    o = jnp.where(den[..., None] > 0, (a + c) / jnp.where(den > 0, den, 1.0)[..., None], 0.0)
    err = jnp.sqrt(jnp.sum((o - o_dense) ** 2, (1, 2)) / jnp.sum(o_dense ** 2, (1, 2)))
    return err, r


def comp_weights(p: Problem, sel_tok, comp):
    """comp: None, ("tok", lw [N,S,KC]), ("tokself", lw [N,S,KC]) or ("qc", lw [N,QC,KC])
    -> ([N, S, KC] weights relative to each token's dense denominator, zero on selected
    and empty clusters; [N, S] exact-self weight delta).

    "tokself": the token's own key is compensated exactly when its cluster is not
    selected: the cluster's n members become n - 1 average ones plus the exact key,
    w_own vbar -> (n-1)/n w_own (n vbar - v_t)/(n-1) + e^{q_t.k_t*scale} v_t, i.e. an extra
    weight delta_t = e^{q_t.k_t*scale} - w_own/n on v_t (delta may be negative)."""
    zero_self = np.zeros(sel_tok.shape[:2], np.float32)
    if comp is None:
        return np.zeros(sel_tok.shape, np.float32), zero_self
    kind, lw = comp
    if kind == "qc":
        lw = np.take_along_axis(lw, p.ql[..., None], 1)
    w = np.exp(np.minimum(lw - p.lse_dense[..., None], 60.0))
    w = np.where(sel_tok | (p.ks[:, None, :] == 0), 0.0, w)
    if kind != "tokself":
        return w.astype(np.float32), zero_self
    own_w = np.take_along_axis(w, p.kl[..., None], -1)[..., 0]   # 0 if the own cluster is selected
    n_own = p.ks[np.arange(p.n)[:, None], p.kl]
    own_sel = np.take_along_axis(sel_tok, p.kl[..., None], -1)[..., 0]
    delta = np.exp(p.self_logit - p.lse_dense) - own_w / n_own
    return w.astype(np.float32), np.where(own_sel, 0.0, delta).astype(np.float32)


def evaluate(p: Problem, sel, comp=None):
    """sel [N, QC, KC] bool -> dict(density, err, recall, recall_p10) (means over heads)."""
    sel = np.asarray(sel, bool) & nonempty_mask(p)
    sel_tok = np.take_along_axis(sel, p.ql[..., None], 1)   # [N, S, KC]
    w, self_w = comp_weights(p, sel_tok, comp)
    if not hasattr(p, "_dev"):  # device copies made once (re-copying Y dominated the run)
        p._dev = (jnp.asarray(p.Y), jnp.asarray(p.R), jnp.asarray(p.o_dense, jnp.float32),
                  jnp.asarray(p.vmean, jnp.float32), jnp.asarray(p.v))
    err, r = _eval(jnp.asarray(sel_tok), p._dev[0], p._dev[1], p._dev[2], jnp.asarray(w),
                   p._dev[3], jnp.asarray(self_w), p._dev[4])
    err, r = np.asarray(err, np.float64), np.asarray(r, np.float64)
    pairs = np.einsum("nq,nqk,nk->n", p.qs, sel.astype(np.float64), p.ks)
    dens = pairs / (p.S * p.S)
    return dict(density=float(dens.mean()), err=float(err.mean()),
                recall=float(r.mean()), recall_p10=float(np.percentile(r, 10, axis=-1).mean()),
                density_per_head=dens.tolist(), err_per_head=err.tolist())


def check_against_library(p: Problem, sel, lw_tok):
    """The block evaluation vs the library: `sparse_attention_masked_dense` for the
    exact part and `merge_attention` with the compensation's (o, lse). Returns the max
    abs difference of the per-head errors (uncompensated, compensated)."""
    scale = 1.0 / math.sqrt(p.D)
    q, k, v = (jnp.asarray(x) for x in (p.q, p.k, p.v))
    o_s, lse_s = sparse_attention_masked_dense(q, k, v, jnp.asarray(p.ql), jnp.asarray(p.kl),
                                               jnp.asarray(sel), scale)
    sel_tok = np.take_along_axis(np.asarray(sel), p.ql[..., None], 1)
    lwm = np.where(sel_tok | (p.ks[:, None, :] == 0), -np.inf, lw_tok)
    m = np.max(lwm, -1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    e = np.exp(lwm - m)
    l = e.sum(-1)
    o_c = np.einsum("nsk,nkd->nsd", e, p.vmean) / np.where(l > 0, l, 1)[..., None]
    lse_c = np.where(l > 0, m[..., 0] + np.log(np.where(l > 0, l, 1)), -np.inf)
    o_m, _ = merge_attention(o_s, lse_s, jnp.asarray(o_c, jnp.float32),
                             jnp.asarray(lse_c, jnp.float32))
    od = p.o_dense

    def rel(o):
        o = np.asarray(o, np.float64)
        return np.sqrt(((o - od) ** 2).sum((1, 2)) / (od ** 2).sum((1, 2)))

    a = evaluate(p, sel)["err_per_head"]
    b = evaluate(p, sel, ("tok", lw_tok))["err_per_head"]
    return float(np.max(np.abs(rel(o_s) - a))), float(np.max(np.abs(rel(o_m) - b)))


def concat_problems(name, problems):
    """Heads of several problems (same S, QC, KC) as one problem: per-head budgets vs a
    budget shared over heads of different peakiness."""
    ps = problems
    cat = lambda f: np.concatenate([getattr(x, f) for x in ps], 0)
    fields = [f for f in Problem.__dataclass_fields__ if f not in ("name", "meta")]
    return Problem(name=name, meta=dict(parts=[x.meta for x in ps], name=name),
                   **{f: cat(f) for f in fields})
