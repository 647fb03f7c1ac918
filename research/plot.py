"""Error and recall p10 vs density per input (seed 0): research/curves.png.

  python research/plot.py
"""
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
INPUTS = ("A", "B", "C", "P", "D", "N", "M", "W")
METHODS = {
    "svg2": ("SVG2 (top_p, min_kc 0.1)", "k-o"),
    "svg2+comp_var": ("SVG2 + comp (var)", "k--"),
    "svg2+comp_var_self": ("SVG2 + comp (var, self)", "k:"),
    "ear_ref_floor0.1": ("SVG-EAR (min_kc 0.1)", "m-^"),
    "ear_ref_floor0.02": ("SVG-EAR (min_kc 0.02)", "m--^"),
    "oracle": ("oracle (true mass)", "g-s"),
    "oracle+comp_var_self": ("oracle + comp", "g--s"),
    "err_an_sca_head+comp_var": ("error-aware + comp (no self)", "b--"),
    "err_an_sca_head+comp_sca_self": ("error-aware + comp (self)", "b-"),
    "tol_an_sca_head+comp_var_self": ("error tolerance + comp (self)", "c-"),
}


def main():
    fig, axes = plt.subplots(4, 4, figsize=(18, 17))
    for n, inp in enumerate(INPUTS):
        path = os.path.join(HERE, "results", f"{inp}_s0.json")
        if not os.path.exists(path):
            continue
        r = json.load(open(path))
        ae, ap = axes[n // 2, (n % 2) * 2], axes[n // 2, (n % 2) * 2 + 1]
        for m, (label, style) in METHODS.items():
            if m not in r["methods"]:
                continue
            pts = sorted((p for p in r["methods"][m]["points"] if p["density"] > 0),
                         key=lambda p: p["density"])
            d = [p["density"] for p in pts]
            ae.plot(d, [p["err"] for p in pts], style, label=label, ms=3)
            ap.plot(d, [p["recall_p10"] for p in pts], style, label=label, ms=3)
        for ax in (ae, ap):
            ax.set_xscale("log")
            ax.set_xlabel("density")
            ax.grid(alpha=0.3)
        ae.set_yscale("log")
        ae.set_ylabel(f"{inp}: rel. output error")
        ap.set_ylabel(f"{inp}: recall p10")
        ae.set_title(f"{inp} (S={r['S']}, QC={r['QC']}, KC={r['KC']}, max prob {r['max_prob']:.2f})")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    out = os.path.join(HERE, "curves.png")
    fig.savefig(out, dpi=80)
    print("wrote", out)


if __name__ == "__main__":
    main()
