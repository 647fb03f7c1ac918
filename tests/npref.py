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


def svg2(q, k, v, qc0, kc0, iters, tol, top_p, min_count, scale=None):
    """The whole warm-started algorithm on per-head problems: q [N, Sq, D]; k, v [N, Sk, D];
    qc0 [N, QC, D], kc0 [N, KC, D] initial centroids; scale default 1/sqrt(D). -> dict with
    out [N, Sq, D], q / k (the `kmeans` results), selected [N, QC, KC], mask [N, Sq, Sk]
    and density [N] (fraction of query-key pairs computed)."""
    scale = np.shape(q)[-1] ** -0.5 if scale is None else scale
    qk, kk = kmeans(q, qc0, iters, tol), kmeans(k, kc0, iters, tol)
    sel = select(qk[1], kk[1], kk[2], top_p, min_count, scale)
    mask = np.stack([sel[n][qk[0][n]][:, kk[0][n]] for n in range(len(sel))])
    return dict(out=masked_attention(q, k, v, mask, scale), q=qk, k=kk, selected=sel,
                mask=mask, density=mask.mean((1, 2)))
