"""FLOPs per layer of the error-aware additions at Wan 720p, beside dense attention.

  python research/flops.py [--S 75600 --H 40 --D 128 --QC 300 --KC 1000]

A multiply-add is 2 FLOPs; exp/expm1/log are counted separately (transcendentals).
"""

from __future__ import annotations

import argparse


def table(S, H, D, QC, KC, kmeans_iters=2):
    dense = 4 * S * S * D * H                      # QK^T + PV
    u = 2 * S * KC * D * H                         # one [S, D] x [D, KC] matmul, all heads
    rows = [
        ("dense attention (QK^T + PV)", dense, S * S * H),
        ("SVG2 today: warm k-means, Q and K", kmeans_iters * 2 * S * (QC + KC) * D * H, 0),
        ("SVG2 today: centroid selection scores", 2 * QC * KC * D * H, QC * KC * H),
        ("stats in the k-means update (sum V, sum K^2)", 2 * S * D * H, 0),
        ("per-token centroid logits q_t . c_j", u, 0),
        ("  per-dim variance term sum_d q_td^2 var_jd", u, 0),
        ("  scalar variance term |q_t|^2 var_j", S * KC * H + S * D * H, 0),
        ("self logit q_t . k_t", 2 * S * D * H, 0),
        ("per-token softmax + query-cluster mean (selection)", 4 * S * KC * H, S * KC * H),
        ("error estimate per (token, cluster) + cluster mean", 10 * S * KC * H, 2 * S * KC * H),
        ("compensation: weights x mean V (w @ vbar)", u, S * KC * H),
        ("lse merge of the two parts", 6 * S * D * H, 2 * S * H),
        ("SVG-EAR's error probe (qbar x member keys, 2 passes)", 2 * 2 * QC * S * D * H,
         QC * S * H),
    ]
    return dense, u, rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--S", type=int, default=75600)
    ap.add_argument("--H", type=int, default=40)
    ap.add_argument("--D", type=int, default=128)
    ap.add_argument("--QC", type=int, default=300)
    ap.add_argument("--KC", type=int, default=1000)
    a = ap.parse_args()
    dense, u, rows = table(a.S, a.H, a.D, a.QC, a.KC)
    print(f"S={a.S} H={a.H} D={a.D} QC={a.QC} KC={a.KC}; per layer\n")
    print("| item | GFLOP | % of dense | transcendentals (M) |")
    print("|---|---|---|---|")
    for name, f, t in rows:
        print(f"| {name} | {f / 1e9:.1f} | {100 * f / dense:.3f} | {t / 1e6:.0f} |")
    pieces = dict(rows=dict((n.strip(), f) for n, f, _ in rows))
    r = pieces["rows"]
    small = (r["self logit q_t . k_t"] + r["per-token softmax + query-cluster mean (selection)"]
             + r["error estimate per (token, cluster) + cluster mean"]
             + r["lse merge of the two parts"] + r["stats in the k-means update (sum V, sum K^2)"])
    logit, pdv, sca = (r["per-token centroid logits q_t . c_j"],
                       r["per-dim variance term sum_d q_td^2 var_jd"],
                       r["scalar variance term |q_t|^2 var_j"])
    comp = r["compensation: weights x mean V (w @ vbar)"]
    variants = [
        ("recommended: scalar var, logits recomputed in the compensation pass",
         2 * logit + 2 * sca + comp + small),
        ("scalar var, [S, KC] logits kept (bf16) between the passes", logit + sca + comp + small),
        ("per-dim var in both passes, logits recomputed", 2 * logit + 2 * pdv + comp + small),
        ("compensation only (reference selection), per-dim var", logit + pdv + comp + small),
        ("compensation only (reference selection), scalar var", logit + sca + comp + small),
    ]
    print("\n| variant (extra over SVG2) | GFLOP/layer | % of dense |")
    print("|---|---|---|")
    for n, f in variants:
        print(f"| {n} | {f / 1e9:.1f} | {100 * f / dense:.2f} |")


if __name__ == "__main__":
    main()
