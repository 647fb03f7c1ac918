"""Plain-numpy reference of the recommended error-aware SVG2 (one head), for tests.

Independent of the lab's block tricks: it forms the token mask and computes the exact
sparse part directly, so `check()` comparing it with `ear_lab.evaluate` tests both.

  k-means stats (per key cluster j, from the final labels; n_j = 0 marks an empty one):
    n_j, c_j = mean k_s, vbar_j = mean v_s,
    kvar_j = mean_s ||k_s - c_j||^2 / D      (scalar per-dim average variance),
    vvar_j = mean_s ||v_s - vbar_j||^2
  per token t (query cluster i = qlab[t]), per non-empty cluster j:
    l_tj   = s q_t . c_j + log n_j + 0.5 s^2 ||q_t||^2 kvar_j           (s = softmax scale)
    pi_tj  = softmax_j(l_tj);  sig2_tj = s^2 ||q_t||^2 kvar_j
    e2_tj  = pi_tj^2 / n_j * (expm1(sig2_tj) ||vbar_j||^2 + exp(sig2_tj) vvar_j)
    E_ij   = mean_{t in i} e2_tj;  eta_ij = E_ij / n_j  (estimated error per key of cost)
  selection per head, budget `density`: blocks by descending eta while the pairs taken
    before each one are < density * Sq * Sk (the crossing block is kept); empty never.
  output: exact softmax over the selected pairs (o_s, lse_s), merged through the lse with
    the compensation (o_c, lse_c) over the unselected non-empty clusters:
      weights e^{l_tj} on vbar_j, plus, when the own key's cluster j* = klab[t] is not
      selected, delta_t = e^{s q_t.k_t} - e^{l_tj*} / n_j* on v_t (own key exact).
"""

from __future__ import annotations

import math

import numpy as np


def stats(k, v, klab, kc):
    d = k.shape[1]
    n = np.bincount(klab, minlength=kc).astype(np.float64)
    den = np.maximum(n, 1)[:, None]
    c = np.zeros((kc, d)); np.add.at(c, klab, k); c /= den
    vb = np.zeros((kc, d)); np.add.at(vb, klab, v); vb /= den
    kv = np.zeros(kc); np.add.at(kv, klab, np.sum((k - c[klab]) ** 2, -1)); kv /= den[:, 0] * d
    vv = np.zeros(kc); np.add.at(vv, klab, np.sum((v - vb[klab]) ** 2, -1)); vv /= den[:, 0]
    return n, c, vb, kv, vv


def token_logits(q, n, c, kv, scale):
    q2 = np.sum(q * q, -1, keepdims=True)
    l = scale * q @ c.T + np.log(np.maximum(n, 1)) + 0.5 * scale * scale * q2 * kv
    return np.where(n > 0, l, -np.inf), scale * scale * q2 * kv


def select(q, qlab, qc, n, c, vb, kv, vv, scale, density, nk):
    l, sig2 = token_logits(q, n, c, kv, scale)
    m = l.max(-1, keepdims=True)
    pi = np.exp(l - m); pi /= pi.sum(-1, keepdims=True)
    e2 = pi ** 2 / np.maximum(n, 1) * (np.expm1(sig2) * np.sum(vb ** 2, -1) + np.exp(sig2) * vv)
    e2 = np.where(n > 0, e2, 0.0)
    E = np.zeros((qc, len(n))); np.add.at(E, qlab, e2)
    qn = np.bincount(qlab, minlength=qc).astype(np.float64)
    E /= np.maximum(qn, 1)[:, None]
    eta = E / np.maximum(n, 1)
    area = qn[:, None] * n[None, :]
    valid = (area > 0).ravel()
    order = np.argsort(-np.where(valid, eta.ravel(), -np.inf), kind="stable")
    order = order[valid[order]]
    before = np.cumsum(area.ravel()[order]) - area.ravel()[order]
    sel = np.zeros(qc * len(n), bool)
    sel[order[before < density * len(q) * nk]] = True
    return sel.reshape(qc, len(n))


def attend(q, k, v, qlab, klab, sel, n, c, vb, kv, scale, self_term=True):
    """Sparse exact part + compensation, merged; float64. Returns [Sq, D]."""
    mask = sel[qlab][:, klab]
    lg = scale * q @ k.T
    lgm = np.where(mask, lg, -np.inf)
    ms = lgm.max(-1)
    ms_f = np.where(np.isfinite(ms), ms, 0.0)
    p = np.exp(lgm - ms_f[:, None])
    ls = p.sum(-1)
    o_s = (p @ v) / np.where(ls > 0, ls, 1)[:, None]
    lse_s = np.where(ls > 0, ms_f + np.log(np.where(ls > 0, ls, 1)), -np.inf)

    l, _ = token_logits(q, n, c, kv, scale)
    l = np.where(sel[qlab], -np.inf, l)                      # unselected clusters only
    extra_l = np.full(len(q), -np.inf)
    own = None
    if self_term:
        own = klab[: len(q)]
        own_unsel = ~sel[qlab, own]
        extra_l = np.where(own_unsel, scale * np.sum(q * k[: len(q)], -1), -np.inf)
    mc = np.maximum(l.max(-1), extra_l)
    mc_f = np.where(np.isfinite(mc), mc, 0.0)
    w = np.exp(l - mc_f[:, None])
    num = w @ vb
    den = w.sum(-1)
    if self_term:
        w_own = np.take_along_axis(w, own[:, None], -1)[:, 0]
        delta = np.where(own_unsel, np.exp(extra_l - mc_f) - w_own / np.maximum(n[own], 1), 0.0)
        num = num + delta[:, None] * v[: len(q)]
        den = den + delta
    o_c = num / np.where(den > 0, den, 1)[:, None]
    lse_c = np.where(den > 0, mc_f + np.log(np.where(den > 0, den, 1)), -np.inf)

    mx = np.maximum(lse_s, lse_c)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    a, b = np.exp(lse_s - mx), np.exp(lse_c - mx)
    return (a[:, None] * o_s + b[:, None] * o_c) / np.where(a + b > 0, a + b, 1)[:, None]


def check(seed=0, density=0.05):
    """This reference vs the lab's block evaluation on input A (one run, both heads)."""
    from research import ear_lab as L
    from research.run_lab import an_error, log_eff
    p = L.make_problem("A", ["astronaut"], 5, 256, 448, 2, 0.5, seed, 22, 74)
    scale = 1.0 / math.sqrt(p.D)
    errs, sels = [], []
    for h in range(p.n):
        q, k, v = (x[h].astype(np.float64) for x in (p.q, p.k, p.v))
        n, c, vb, kv, vv = stats(k, v, p.kl[h], p.KC)
        sel = select(q, p.ql[h], p.QC, n, c, vb, kv, vv, scale, density, p.S)
        o = attend(q, k, v, p.ql[h], p.kl[h], sel, n, c, vb, kv, scale)
        od = p.o_dense[h]
        errs.append(np.sqrt(np.sum((o - od) ** 2) / np.sum(od ** 2)))
        sels.append(sel)
    lw_sca = L.token_logw(p, "scalar")
    e = an_error(p, lw_sca, L.token_logw(p, "none"), lw_sca)
    lab_sel = L.sel_budget_global(p, log_eff(e, p.ks, 1.0), density, per_head=True)
    lab = L.evaluate(p, np.stack(sels), ("tokself", lw_sca))
    return dict(same_selection=bool((np.stack(sels) == lab_sel).all()),
                ref_err=[float(x) for x in errs], lab_err=lab["err_per_head"])


if __name__ == "__main__":
    print(check())
