"""Runs every method's sweep on one input set and seed; writes research/results/<input>_s<seed>.json.

  PYTHONPATH=. python research/run_lab.py A 0          # one input, one seed
Inputs (build_qkv images, frames, px, heads, temperature, qk noise; QC, KC):
  A  astronaut 5 x 256x448, T 0.5 (bench_quality --quick; peaked, own key dominates), QC 22, KC 74
  B  coffee 4 x 384x384, T 1.0 (soft), QC 40, KC 120
  C  chelsea 4 x 384x384, T 0.7, QC 40, KC 120
  P  chelsea 4 x 384x384, T 0.5 (peakier), QC 40, KC 120
  D  rocket 4 x 384x384, T 0.5, q/k noise 0.6 (another image, noisier heads), QC 40, KC 120
  M  coffee 4 x 384x384, 4 heads of temperatures 0.35, 0.7, 1.0, 1.4 (mixed peakiness:
     per-head vs shared budgets), QC 40, KC 120
  N  coffee 4 x 384x384, T 0.7, keys/values shifted one token along x (attention peaks at a
     neighbour, not at the own key: no self advantage), QC 40, KC 120
  W  coffee 4 x 384x384, T 0.7, QC 9, KC 30 (Wan 720p's tokens per cluster: 256 / 77)
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import numpy as np

from research import ear_lab as L

INPUTS = {
    "A": dict(images=["astronaut"], frames=5, height=256, width=448, heads=2, temperature=0.5,
              qc=22, kc=74),
    "B": dict(images=["coffee"], frames=4, height=384, width=384, heads=2, temperature=1.0,
              qc=40, kc=120),
    "C": dict(images=["chelsea"], frames=4, height=384, width=384, heads=2, temperature=0.7,
              qc=40, kc=120),
    "P": dict(images=["chelsea"], frames=4, height=384, width=384, heads=2, temperature=0.5,
              qc=40, kc=120),
    "D": dict(images=["rocket"], frames=4, height=384, width=384, heads=2, temperature=0.5,
              qk_noise=0.6, qc=40, kc=120),
    "M": dict(mixed=True, images=["coffee"], frames=4, height=384, width=384, heads=1,
              temperatures=[0.35, 0.7, 1.0, 1.4], qc=40, kc=120),
    "N": dict(images=["coffee"], frames=4, height=384, width=384, heads=2, temperature=0.7,
              roll_kv=1, qc=40, kc=120),
    "W": dict(images=["coffee"], frames=4, height=384, width=384, heads=2, temperature=0.7,
              qc=9, kc=30),
}
TOP_PS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
TAUS = (0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.045, 0.065, 0.09, 0.13, 0.18, 0.25, 0.35)
DENSITIES = (0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.055, 0.075, 0.1, 0.13, 0.17, 0.22, 0.3, 0.4)


def log_eff(e2, ks, gamma):
    """log(error^2) - gamma * log(n_j): error per unit of cost (EAR's efficiency form)."""
    return np.log(np.maximum(e2, 1e-300)) - gamma * np.log(np.maximum(ks, 1))[:, None, :]


def an_error_tok(p: L.Problem, lw_var, lw_nov, lw_mass):
    """Per token [N, S, KC] estimated squared error (relative to the output scale) of
    leaving cluster j to the compensation, from a lognormal model of the member weights
    with independent members: with the estimated mass m_tj = softmax_j(lw_mass)[t, j] and
    sigma2_tj = 2 (lw_var - lw_nov) (= scale^2 sum_d q_td^2 var_jd), the sum of n_j
    members' w_s v_s deviates from n_j E[w] vbar_j by
      e2_tj = m_tj^2 / n_j * ((e^{sigma2} - 1) ||vbar_j||^2 + e^{sigma2} vvar_j),
    vvar_j = mean ||v_s - vbar_j||^2."""
    pt = L.softmax_rows(lw_mass)
    sig2 = 2.0 * (lw_var - lw_nov)
    vb2 = np.sum(p.vmean ** 2, -1)[:, None, :]
    return pt * pt / np.maximum(p.ks, 1)[:, None, :] * (
        np.expm1(sig2) * vb2 + np.exp(sig2) * p.vvar[:, None, :])


def an_error(p: L.Problem, lw_var, lw_nov, lw_mass):
    """an_error_tok averaged over each query cluster: [N, QC, KC]."""
    return L.seg_mean(an_error_tok(p, lw_var, lw_nov, lw_mass), p.ql, p.QC)


def subsample_mask(p: L.Problem, every):
    """[N, S] bool: every `every`-th member of each query cluster (in token order)."""
    m = np.zeros(p.ql.shape, bool)
    for i in range(p.n):
        for c in range(p.QC):
            idx = np.nonzero(p.ql[i] == c)[0]
            m[i, idx[::every]] = True
    return m


def an_error_sub(p: L.Problem, lw_var, lw_nov, sub):
    """an_error from the subsampled query tokens only."""
    e2 = an_error_tok(p, lw_var, lw_nov, lw_var)
    out = np.zeros((p.n, p.QC, p.KC))
    for i in range(p.n):
        np.add.at(out[i], p.ql[i][sub[i]], e2[i][sub[i]])
        cnt = np.bincount(p.ql[i][sub[i]], minlength=p.QC)
        out[i] /= np.maximum(cnt, 1)[:, None]
    return out


def methods(p: L.Problem):
    """name -> (param name, sweep, select(param) -> sel, comp spec or None)."""
    lw_var = L.token_logw(p, "dim")
    lw_nov = L.token_logw(p, "none")
    lw_sca = L.token_logw(p, "scalar")
    lw_var_self = L.token_logw(p, "dim", self_term=True)
    lw_sca_self = L.token_logw(p, "scalar", self_term=True)
    lw_nov_self = L.token_logw(p, "none", self_term=True)
    lw_ear = L.token_logw(p, "none", kcen="km")
    comp = {
        "var": ("tok", lw_var), "novar": ("tok", lw_nov), "scalarvar": ("tok", lw_sca),
        "ear": ("tok", lw_ear),
        "qc_cen": ("qc", L.centroid_logw(p, "dim", qcen="mean", kcen="mean")),
        "qc_meanexp": ("qc", L.seg_logmeanexp(lw_var, p.ql, p.QC)),
        "var_self": ("tokself", lw_var), "sca_self": ("tokself", lw_sca),
        "novar_self": ("tokself", lw_nov),
    }
    m_cen = L.softmax_rows(L.centroid_logw(p))               # SVG2's estimate
    masses = dict(tok=L.token_mass(p, lw_nov), tokvar=L.token_mass(p, lw_var),
                  tokself=L.token_mass(p, lw_nov_self), tokvarself=L.token_mass(p, lw_var_self),
                  toksca_self=L.token_mass(p, lw_sca_self), cen=m_cen)
    ks = p.ks
    per_key = lambda m: m / np.maximum(ks, 1)[:, None, :]

    e_qbar, m_qbar = L.qbar_block_error(p, L.centroid_logw(p, "dim", qcen="km", kcen="mean"))
    masses["qbarexact"] = m_qbar
    errs = dict(
        qbar=e_qbar,
        an=an_error(p, lw_var, lw_nov, lw_var),
        an_self=an_error(p, lw_var, lw_nov, lw_var_self),
        an_sca=an_error(p, lw_sca, lw_nov, lw_sca),
        an_sca_self=an_error(p, lw_sca, lw_nov, lw_sca_self),
        spread=masses["tokvar"] ** 2 * p.vvar[:, None, :])
    eff_ear = L.ear_efficiency(p)

    M = {}
    add = lambda name, param, sweep, fn, c: M.__setitem__(name, (param, sweep, fn, c))
    # (a) reference, its lower floor, its estimate under a budget
    add("svg2", "top_p", TOP_PS, lambda t: L.sel_svg2(p, t, 0.1), None)
    add("svg2_floor0.02", "top_p", TOP_PS, lambda t: L.sel_svg2(p, t, 0.02), None)
    add("svg2_budget", "density", DENSITIES, lambda d: L.sel_budget_rows(p, m_cen, d), None)
    # (b) compensation variants on the reference selection (equal density by construction)
    for c in comp:
        add(f"svg2+comp_{c}", "top_p", TOP_PS, lambda t: L.sel_svg2(p, t, 0.1), comp[c])
    for c in ("var", "var_self", "sca_self"):
        add(f"svg2_budget+comp_{c}", "density", DENSITIES,
            lambda d: L.sel_budget_rows(p, m_cen, d), comp[c])
    # SVG-EAR exactly (its selection + its compensation), and with our compensation
    for floor in (0.1, 0.02):
        add(f"ear_ref_floor{floor}", "top_p", TOP_PS,
            lambda t, f=floor: L.sel_ear(p, eff_ear, t, f), comp["ear"])
        add(f"ear_ref_floor{floor}+comp_var_self", "top_p", TOP_PS,
            lambda t, f=floor: L.sel_ear(p, eff_ear, t, f), comp["var_self"])
    add("err_ear_rows+comp_var_self", "density", DENSITIES,
        lambda d: L.sel_budget_rows(p, eff_ear, d), comp["var_self"])
    # (c) mass estimates: per query-cluster budget by mass or mass per key; top-p
    for mname, m in masses.items():
        for rank, score in (("mass", m), ("perkey", per_key(m))):
            add(f"{mname}_{rank}_rows", "density", DENSITIES,
                lambda d, s=score: L.sel_budget_rows(p, s, d), None)
            for c in ("var", "var_self"):
                add(f"{mname}_{rank}_rows+comp_{c}", "density", DENSITIES,
                    lambda d, s=score: L.sel_budget_rows(p, s, d), comp[c])
        add(f"{mname}_topp_floor0.02+comp_var_self", "top_p", TOP_PS,
            lambda t, m=m: L.sel_top_p(p, m, t, max(1, int(0.02 * p.KC))), comp["var_self"])
        for grp, ph in (("head", True), ("global", False)):
            add(f"{mname}_perkey_{grp}", "density", DENSITIES,
                lambda d, s=per_key(m), ph=ph: L.sel_budget_global(p, s, d, ph), None)
            add(f"{mname}_perkey_{grp}+comp_var_self", "density", DENSITIES,
                lambda d, s=per_key(m), ph=ph: L.sel_budget_global(p, s, d, ph),
                comp["var_self"])
    # (d) error-aware ranking (error per key of cost, gamma = 1), rows / head / global
    for ename, e2 in errs.items():
        for c in ("var", "var_self", "sca_self"):
            add(f"err_{ename}_rows+comp_{c}", "density", DENSITIES,
                lambda d, e=e2: L.sel_budget_rows(p, log_eff(e, ks, 1.0), d), comp[c])
            for grp, ph in (("head", True), ("global", False)):
                add(f"err_{ename}_{grp}+comp_{c}", "density", DENSITIES,
                    lambda d, e=e2, ph=ph: L.sel_budget_global(p, log_eff(e, ks, 1.0), d, ph),
                    comp[c])
    # error tolerance (the error-aware analogue of top-p): adaptive density
    pt = L.softmax_rows(lw_var)
    out2 = L.seg_mean(np.sum(np.einsum("nsk,nkd->nsd", pt, p.vmean) ** 2, -1)[..., None],
                      p.ql, p.QC)[..., 0]
    for ename in ("an", "an_sca"):
        for per in ("head", "rows"):
            add(f"tol_{ename}_{per}+comp_var_self", "tau", TAUS,
                lambda t, e=errs[ename], per=per: L.sel_err_tolerance(p, e, out2, t, per),
                comp["var_self"])
    # SVG-EAR's budget rule (centroid top-p area, floor) with our error estimate
    for floor in (0.1, 0.02):
        add(f"earrule_an_floor{floor}+comp_var_self", "top_p", TOP_PS,
            lambda t, f=floor: L.sel_ear(p, log_eff(errs["an"], ks, 1.0), t, f),
            comp["var_self"])
    # query subsampling for the selection pass (1 token in 4 per query cluster)
    sub = subsample_mask(p, 4)
    e_sub = an_error_sub(p, lw_sca, lw_nov, sub)
    for grp, ph in (("head", True), ("global", False)):
        add(f"err_an_sca_sub4_{grp}+comp_sca_self", "density", DENSITIES,
            lambda d, ph=ph: L.sel_budget_global(p, log_eff(e_sub, ks, 1.0), d, ph),
            comp["sca_self"])
    add("tol_an_sca_sub4_head+comp_sca_self", "tau", TAUS,
        lambda t: L.sel_err_tolerance(p, e_sub, out2, t, "head"), comp["sca_self"])
    # nothing computed exactly: pure centroid attention (+ exact self term)
    none = np.zeros((p.n, p.QC, p.KC), bool)
    for c in ("var", "var_self", "sca_self", "ear"):
        add(f"comp_only_{c}", "density", (0.0,), lambda d: none, comp[c])
    # oracles: true mass per pair (bench_quality's), the true error after compensation
    add("oracle", "density", DENSITIES, lambda d: L.sel_oracle(p, d), None)
    add("oracle+comp_var_self", "density", DENSITIES, lambda d: L.sel_oracle(p, d),
        comp["var_self"])
    true_e2 = true_comp_error(p, lw_var)
    add("oracle_err_head+comp_var", "density", DENSITIES,
        lambda d: L.sel_budget_global(p, log_eff(true_e2, ks, 1.0), d, True), comp["var"])
    return M


def true_comp_error(p: L.Problem, lw):
    """Mean over the query cluster of || Y[t, j] - w_tj vbar_j ||^2 (w relative to the
    dense denominator): the real error of compensating block (i, j) (an oracle)."""
    w = np.exp(np.minimum(lw - p.lse_dense[..., None], 60.0))
    out = np.zeros((p.n, p.QC, p.KC))
    for i in range(p.n):
        res = p.Y[i].astype(np.float64) - w[i][..., None] * p.vmean[i][None]
        out[i] = L.seg_mean(np.sum(res * res, -1)[None], p.ql[i:i + 1], p.QC)[0]
    return out


def run(input_name, seed, only=None, scope=False):
    spec = dict(INPUTS[input_name])
    qc, kc = spec.pop("qc"), spec.pop("kc")
    t0 = time.time()
    cs = None
    if scope:
        from research.scope_try import cluster_space
        cs = cluster_space
    if spec.get("mixed"):
        spec.pop("mixed")
        temps = spec.pop("temperatures")
        p = L.concat_problems(input_name, [
            L.make_problem(f"{input_name}_T{t}", seed=seed, qc=qc, kc=kc, temperature=t,
                           cluster_space=cs, **spec) for t in temps])
    else:
        p = L.make_problem(input_name + ("_scope" if scope else ""), seed=seed, qc=qc,
                           kc=kc, cluster_space=cs, **spec)
    t_build = time.time() - t0
    maxp, ent = L.peakiness(p)
    M = methods(p)
    res = dict(input=input_name, seed=seed, S=p.S, QC=p.QC, KC=p.KC, heads=p.n,
               max_prob=maxp, entropy=ent, build_s=t_build, meta=p.meta, methods={})
    lw_var = L.token_logw(p, "dim")
    res["library_check"] = L.check_against_library(p, L.sel_svg2(p, 0.9), lw_var)
    for name, (param, sweep, fn, comp) in M.items():
        if only and not any(o in name for o in only):
            continue
        pts = []
        for x in sweep:
            r = L.evaluate(p, fn(x), comp)
            r[param] = x
            pts.append(r)
        res["methods"][name] = dict(param=param, points=pts)
    res["wall_s"] = time.time() - t0
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    tag = f"{input_name}{'_scope' if scope else ''}_s{seed}"
    path = os.path.join(os.path.dirname(__file__), "results", f"{tag}.json")
    with open(path, "w") as f:
        json.dump(res, f)
    print(f"{tag}: S={p.S} QC={p.QC} KC={p.KC} maxp={maxp:.3f} H={ent:.2f} "
          f"check={res['library_check']} {res['wall_s']:.0f}s -> {path}")
    return res


if __name__ == "__main__":
    args = sys.argv[1:]
    scope = "--scope" in args
    args = [a for a in args if a != "--scope"]
    run(args[0], int(args[1]), only=args[2].split(",") if len(args) > 2 else None, scope=scope)
