"""FLOPs per layer of SVG2's additions at a model shape (default Wan 720p), beside dense
attention: what `svg2_jax.compensation` and the error-aware selection add, counted from
their operations. A multiply-add is 2 FLOPs; exp / expm1 / log count as transcendentals.

  python -m scripts.quality.flops [--S 75600 --H 40 --D 128 --QC 300 --KC 1000]
"""

from __future__ import annotations

import argparse

# Wan2.1-14B at 720p, 81 frames: 21 x 45 x 80 latent tokens, 40 heads of 128; the
# reference's clusters.
WAN_720P = dict(S=75600, H=40, D=128, QC=300, KC=1000)


def cost_items(S, H, D, QC, KC, kmeans_iters=2):
    """-> (dense FLOPs, [(item, FLOPs, transcendentals)], [(variant, FLOPs)]) per layer."""
    dense = 4 * S * S * D * H                          # QK^T + PV
    logits = 2 * S * KC * D * H                        # one [S, D] x [D, KC] matmul, all heads
    rows = {
        "SVG2 (reference): warm k-means on Q and K": (kmeans_iters * 2 * S * (QC + KC) * D * H, 0),
        "SVG2 (reference): centroid selection scores": (2 * QC * KC * D * H, QC * KC * H),
        "key cluster stats (sums of K and V, squared deviations)": (6 * S * D * H, 0),
        "per-token cluster logits q_t . c_j (each pass)": (logits, 0),
        "scalar variance term (q_t . q_t) kvar_j (each pass)": (S * KC * H + 2 * S * D * H, 0),
        "error estimate: softmax, e2, sums per query cluster": (16 * S * KC * H, 3 * S * KC * H),
        "estimated output norm and selection ranking": (2 * QC * KC * D * H + 4 * QC * KC * H, 0),
        "compensation: weights e^l, x mean values (w @ vbar)": (logits + 2 * S * KC * H,
                                                               S * KC * H),
        "compensation: own key q_t . k_t and its weight": (4 * S * D * H, 2 * S * H),
        "lse merge with the sparse part": (6 * S * D * H, 2 * S * H),
        "for scale: SVG-EAR's error probe (query centroid x member keys)": (
            4 * QC * S * D * H, QC * S * H),
        "for scale: a per-dimension key variance term (each pass)": (logits, 0),
    }
    r = {k: v[0] for k, v in rows.items()}
    pass_logits = (r["per-token cluster logits q_t . c_j (each pass)"]
                   + r["scalar variance term (q_t . q_t) kvar_j (each pass)"])
    compensation = (pass_logits + r["compensation: weights e^l, x mean values (w @ vbar)"]
                    + r["compensation: own key q_t . k_t and its weight"]
                    + r["lse merge with the sparse part"]
                    + r["key cluster stats (sums of K and V, squared deviations)"])
    selection = (pass_logits + r["error estimate: softmax, e2, sums per query cluster"]
                 + r["estimated output norm and selection ranking"])
    variants = [
        ("error-aware (SVG2Config.error_aware()): error-aware selection + compensation, "
         "logits computed in both passes", compensation + selection),
        ("reference selection + compensation (selection='svg2', compensation=True)",
         compensation),
        ("the reference's own k-means + selection, for scale",
         r["SVG2 (reference): warm k-means on Q and K"]
         + r["SVG2 (reference): centroid selection scores"]),
    ]
    return dense, [(k, f, t) for k, (f, t) in rows.items()], variants


def markdown(shape=WAN_720P) -> str:
    """The cost tables for `shape` (S, H, D, QC, KC) as markdown."""
    dense, items, variants = cost_items(**shape)
    lines = [f"S = {shape['S']}, H = {shape['H']}, D = {shape['D']}, QC = {shape['QC']}, "
             f"KC = {shape['KC']}; per layer (all heads)", "",
             "| item | GFLOP | % of dense | transcendentals (M) |", "|---|---|---|---|",
             f"| dense attention (QK^T + PV) | {dense / 1e9:.1f} | 100 | "
             f"{shape['S'] ** 2 * shape['H'] / 1e6:.0f} |"]
    lines += [f"| {name} | {f / 1e9:.1f} | {100 * f / dense:.3f} | {t / 1e6:.0f} |"
              for name, f, t in items]
    lines += ["", "| work beside the sparse attention, per layer | GFLOP | % of dense |", "|---|---|---|"]
    lines += [f"| {name} | {f / 1e9:.1f} | {100 * f / dense:.2f} |" for name, f in variants]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, value in WAN_720P.items():
        p.add_argument(f"--{name}", type=int, default=value)
    print(markdown(vars(p.parse_args(argv))))


if __name__ == "__main__":
    main()
