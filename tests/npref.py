"""Independent numpy (float64) implementations of the SVG2 steps, written from the
algorithm's description, for the tests. Nothing here imports svg2_jax."""

import numpy as np


def kmeans(x, c0, iters, tol):
    """x: [N, S, D]; c0: [N, K, D] -> (labels, centroids, sizes, iterations)."""
    x = np.asarray(x, np.float64)
    c = np.asarray(c0, np.float64).copy()
    n, _, _ = x.shape
    k = c.shape[1]
    labels = sizes = None
    for it in range(1, iters + 1):
        d = ((x[:, :, None, :] - c[:, None, :, :]) ** 2).sum(-1)
        labels = d.argmin(-1)
        new = c.copy()
        sizes = np.zeros((n, k), np.int64)
        for b in range(n):
            for j in range(k):
                members = x[b, labels[b] == j]
                sizes[b, j] = len(members)
                if len(members):
                    new[b, j] = members.mean(0)
        shift = np.sqrt(((new - c) ** 2).sum(-1)).max()
        if shift < tol:
            return labels, c, sizes, it
        c = new
    return labels, c, sizes, iters


def select(qc, kc, ksizes, top_p, min_count, scale=None):
    """Per query cluster: descending mass (softmax of scale * qc.kc, default scale
    1/sqrt(D), weighted by cluster size), keep while mass-before < top_p, at least
    min_count non-empty clusters; empty clusters never kept. -> bool [N, QC, KC]."""
    qc = np.asarray(qc, np.float64)
    kc = np.asarray(kc, np.float64)
    n, nq, d = qc.shape
    nk = kc.shape[1]
    scale = 1 / np.sqrt(d) if scale is None else scale
    out = np.zeros((n, nq, nk), bool)
    for b in range(n):
        nonempty = [j for j in range(nk) if ksizes[b, j] > 0]
        for i in range(nq):
            s = np.array([qc[b, i] @ kc[b, j] * scale for j in nonempty])
            w = np.array([ksizes[b, j] for j in nonempty]) * np.exp(s - s.max())
            p = w / w.sum()
            ranked = sorted(range(len(nonempty)), key=lambda t: (-p[t], nonempty[t]))
            total = 0.0
            for r, t in enumerate(ranked):
                if top_p >= 1.0 or total < top_p or r < min_count:
                    out[b, i, nonempty[t]] = True
                total += p[t]
    return out


def masked_attention(q, k, v, mask, scale):
    """q: [N, Sq, D]; k, v: [N, Sk, D]; mask [N, Sq, Sk] -> [N, Sq, D]; empty rows -> 0."""
    return masked_attention_lse(q, k, v, mask, scale)[0]


def masked_attention_lse(q, k, v, mask, scale):
    """As masked_attention, also the log-sum-exp [N, Sq] (-inf for empty rows)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    s = np.einsum("nqd,nkd->nqk", q, k) * scale
    s = np.where(mask, s, -np.inf)
    m = s.max(-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    p = np.exp(s - m)
    l = p.sum(-1, keepdims=True)
    with np.errstate(divide="ignore"):
        lse = np.where(l > 0, m + np.log(np.where(l > 0, l, 1.0)), -np.inf)[..., 0]
    return np.einsum("nqk,nkd->nqd", p, v) / np.where(l > 0, l, 1.0), lse


# ---- error-aware selection and compensation (issue #13) ---------------------------------
# Written from the algorithm's description (svg2_jax/compensation.py and
# selection.select_by_error docstrings), per head, float64.

SIG2_MAX = 20.0


def key_stats(k, v, klab, kc):
    """k, v [Sk, D]; labels [Sk] -> sizes [KC], key mean [KC, D], value mean [KC, D],
    key variance [KC] (mean over members and dimensions), value variance [KC] (mean
    over members of the squared distance)."""
    k, v = np.asarray(k, np.float64), np.asarray(v, np.float64)
    d = k.shape[1]
    n = np.bincount(klab, minlength=kc).astype(np.float64)
    c, vb, kv, vv = np.zeros((kc, d)), np.zeros((kc, d)), np.zeros(kc), np.zeros(kc)
    for j in range(kc):
        members = klab == j
        if members.any():
            c[j], vb[j] = k[members].mean(0), v[members].mean(0)
            kv[j] = ((k[members] - c[j]) ** 2).mean()
            vv[j] = ((v[members] - vb[j]) ** 2).sum(-1).mean()
    return n, c, vb, kv, vv


def token_logits(q, n, c, kv, scale):
    """-> (l [Sq, KC], -inf for empty clusters; sig2 [Sq, KC])."""
    q = np.asarray(q, np.float64)
    sig2 = np.minimum(scale ** 2 * (q * q).sum(-1, keepdims=True) * kv[None], SIG2_MAX)
    with np.errstate(divide="ignore"):
        l = scale * q @ c.T + np.log(np.maximum(n, 1)) + 0.5 * sig2
    return np.where(n > 0, l, -np.inf), sig2


def error_blocks(q, qlab, qc, n, c, vb, kv, vv, scale):
    """One head's blocks: (err [QC, KC] summed over each query cluster's tokens, mass
    [QC, KC] mean pi, estimated squared output norm, pairs [QC, KC])."""
    l, sig2 = token_logits(q, n, c, kv, scale)
    pi = np.exp(l - l.max(-1, keepdims=True))
    pi /= pi.sum(-1, keepdims=True)
    e2 = pi ** 2 / np.maximum(n, 1) * (np.expm1(sig2) * (vb ** 2).sum(-1) + np.exp(sig2) * vv)
    e2 = np.where(n > 0, e2, 0.0)
    qn = np.bincount(qlab, minlength=qc).astype(np.float64)
    err = np.zeros((qc, len(n)))
    mass = np.zeros((qc, len(n)))
    np.add.at(err, qlab, e2)
    np.add.at(mass, qlab, pi)
    mass /= np.maximum(qn, 1)[:, None]
    out2 = (qn * ((mass @ vb) ** 2).sum(-1)).sum()
    return err, mass, out2, qn[:, None] * n[None]


def error_select_pooled(heads, tau=None, density=None):
    """Blocks of several heads competing together; heads: a list of `error_blocks` results
    -> (selected [heads, QC, KC], estimated relative error per head)."""
    err = np.stack([h[0] for h in heads])
    area = np.stack([h[3] for h in heads])
    out2 = sum(h[2] for h in heads)
    blocks = [b for b in np.ndindex(err.shape) if area[b] > 0]  # head-major, row-major
    rank = {b: err[b] / area[b] for b in blocks}
    sel = np.zeros(err.shape, bool)
    if density is not None:  # most error per pair first, while the pairs before < budget
        taken = 0.0
        for b in sorted(blocks, key=lambda b: -rank[b]):  # sorted() is stable
            if taken < density * area.sum():
                sel[b] = True
            taken += area[b]
    else:  # least error per pair left out first, while the summed error < tau^2 out2
        for b in blocks:
            sel[b] = True
        left = 0.0
        for b in sorted(blocks, key=lambda b: rank[b]):
            left += err[b]
            if left < tau ** 2 * out2:
                sel[b] = False
    left_err = np.where(sel | (area == 0), 0.0, err).sum((1, 2))
    return sel, np.sqrt(left_err / np.array([h[2] for h in heads]))


def error_select(q, qlab, qc, n, c, vb, kv, vv, scale, tau=None, density=None):
    """One head: -> (selected [QC, KC], mass [QC, KC], estimated relative error)."""
    blocks = error_blocks(q, qlab, qc, n, c, vb, kv, vv, scale)
    sel, est = error_select_pooled([blocks], tau, density)
    return sel[0], blocks[1], est[0]


def compensated_attention(q, k, v, qlab, klab, sel, n, c, vb, kv, scale, own_key=True):
    """One head: exact softmax over the selected blocks plus, for each query, the left-out
    non-empty clusters through their mean value with weight e^{l_tj}, and (own_key) its
    own key exactly instead of one average member of its cluster. -> (out [Sq, D], lse)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    mask = sel[qlab][:, klab]
    logits = scale * q @ k.T
    l, _ = token_logits(q, n, c, kv, scale)
    left = ~sel[qlab] & (n > 0)[None]
    w_num = np.zeros(q.shape)
    w_den = np.zeros(len(q))
    m = np.max(np.concatenate([np.where(mask, logits, -np.inf), np.where(left, l, -np.inf)],
                              -1), -1)
    for t in range(len(q)):
        e = np.exp(logits[t] - m[t]) * mask[t]
        num, den = e @ v, e.sum()
        for j in np.nonzero(left[t])[0]:
            w = np.exp(l[t, j] - m[t])
            if own_key and j == klab[t]:  # n - 1 average members + the exact own key
                num += w * (n[j] - 1) / n[j] * (n[j] * vb[j] - v[t]) / max(n[j] - 1, 1)
                den += w * (n[j] - 1) / n[j]
                a = np.exp(logits[t, t] - m[t])
                num, den = num + a * v[t], den + a
            else:
                num, den = num + w * vb[j], den + w
        w_num[t], w_den[t] = num, den
    out = w_num / np.where(w_den > 0, w_den, 1)[:, None]
    with np.errstate(divide="ignore"):
        lse = np.where(w_den > 0, m + np.log(np.where(w_den > 0, w_den, 1)), -np.inf)
    return out, lse


def svg2(q, k, v, qc0, kc0, iters, tol, top_p, min_count, scale=None, *, tau=None,
         compensation=False, own_key=True):
    """The whole warm-started algorithm on per-head problems: q [N, Sq, D]; k, v [N, Sk, D];
    qc0 [N, QC, D], kc0 [N, KC, D] initial centroids; scale default 1/sqrt(D); tau: the
    error-aware rule at this tolerance, each problem alone, instead of top-p; compensation:
    the left-out clusters compensated (own_key: each query's own key exact, when
    Sq == Sk). -> dict with out [N, Sq, D], q / k (the `kmeans` results), selected
    [N, QC, KC], mask [N, Sq, Sk], density [N] (fraction of query-key pairs computed),
    estimated [N] (the error rule's estimate; -1 under top-p) and compensated [N] (mean
    over queries of the compensation's share of the softmax denominator; 0 without)."""
    scale = np.shape(q)[-1] ** -0.5 if scale is None else scale
    qk, kk = kmeans(q, qc0, iters, tol), kmeans(k, kc0, iters, tol)
    num_q, num_k = np.shape(qc0)[1], np.shape(kc0)[1]
    stats = [key_stats(k[n], v[n], kk[0][n], num_k) for n in range(len(q))]
    if tau is None:
        sel = select(qk[1], kk[1], kk[2], top_p, min_count, scale)
        estimated = np.full(len(q), -1.0)
    else:
        picked = [error_select(q[n], qk[0][n], num_q, *stats[n], scale, tau=tau)
                  for n in range(len(q))]
        sel = np.stack([p[0] for p in picked])
        estimated = np.array([p[2] for p in picked])
    mask = np.stack([sel[n][qk[0][n]][:, kk[0][n]] for n in range(len(sel))])
    out, lse = masked_attention_lse(q, k, v, mask, scale)
    compensated = np.zeros(len(q))
    if compensation:
        own = own_key and np.shape(q)[1] == np.shape(k)[1]
        parts = [compensated_attention(q[n], k[n], v[n], qk[0][n], kk[0][n], sel[n],
                                       *stats[n][:4], scale, own) for n in range(len(q))]
        out = np.stack([p[0] for p in parts])
        total = np.stack([p[1] for p in parts])
        compensated = (1 - np.exp(lse - total)).mean(-1)  # lse -inf: all compensation
    return dict(out=out, q=qk, k=kk, selected=sel, mask=mask, density=mask.mean((1, 2)),
                estimated=estimated, compensated=compensated)
