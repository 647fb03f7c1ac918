"""Error-aware ranking with a share of the dropped mass counted as error (recall p10 vs
error trade-off): e2'_ij = e2_ij + lam * mean_{t in i} pi_tj^2 * mean ||v||^2.

  PYTHONPATH=. python research/hybrid_try.py A,B,C 0
"""
import sys

import numpy as np

from research import ear_lab as L
from research.run_lab import INPUTS, an_error, log_eff
from research.summarize import at_density


def main(inputs, seed):
    for name in inputs:
        spec = dict(INPUTS[name]); qc, kc = spec.pop("qc"), spec.pop("kc")
        p = L.make_problem(name, seed=seed, qc=qc, kc=kc, **spec)
        lw_sca, lw_nov = L.token_logw(p, "scalar"), L.token_logw(p, "none")
        e = an_error(p, lw_sca, lw_nov, lw_sca)
        pi2 = L.seg_mean(L.softmax_rows(lw_sca) ** 2, p.ql, p.QC)
        v2 = np.mean(np.sum(p.v.astype(np.float64) ** 2, -1), -1)[:, None, None]
        ref = L.evaluate(p, L.sel_svg2(p, 0.9))
        d0 = ref["density"]
        comp = ("tokself", lw_sca)
        for lam in (0.0, 0.003, 0.01, 0.03, 0.1, 0.3):
            score = log_eff(e + lam * pi2 * v2, p.ks, 1.0)
            pts = [L.evaluate(p, L.sel_budget_global(p, score, d, True), comp)
                   for d in (0.35 * d0, 0.45 * d0, 0.9 * d0, 1.1 * d0)]
            print(f"{name} s{seed} lam={lam:<6g} err@0.4d0 {at_density(pts, 'err', 0.4 * d0, True):.4f}"
                  f" err@d0 {at_density(pts, 'err', d0, True):.4f} (e0 {ref['err']:.4f})"
                  f" p10@d0 {at_density(pts, 'recall_p10', d0):.3f} rec@d0 {at_density(pts, 'recall', d0):.3f}",
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1].split(","), int(sys.argv[2]))
