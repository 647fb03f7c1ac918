"""The quality benchmark's plot: output error, recall and recall p10 against density, per
method, one row of panels per input set."""

from __future__ import annotations

# Known methods keep their look; any other method gets the next of these.
STYLES = {"SVG2": "o-", "SVG2 + compensation": "o--", "oracle (same clusters)": "s:",
          "oracle (same clusters) + compensation": "s--",
          "error-aware (tolerance) + compensation": "D-",
          "error-aware (tolerance) + compensation, no own key": "d:",
          "error-aware (tolerance, one pool per layer) + compensation": "x-.",
          "error-aware (budget) + compensation": "P--", "block top-k": "^:"}
OTHER_STYLES = ("X:", "*-.", "v-.", "h--")
# Left out of the figure (they are in the tables): diagnostics and near-duplicates.
HIDDEN = ("block oracle", "SVG2 + compensation per query cluster")
PANELS = (("rel_error", "output relative error"), ("recall", "attention-mass recall"),
          ("recall_p10", "recall p10 (10th percentile over queries)"))


def _curves(res):
    """method -> rows sorted by density: the settings with a min_kc_ratio floor, and every
    swept row."""
    out = {}
    for r in res["rows"]:
        if r["method"].startswith(HIDDEN):
            continue
        if r["min_kc_ratio"] is None or r["min_kc_ratio"] > 0:
            out.setdefault(r["method"], []).append(r)
    return {m: sorted(rows, key=lambda r: r["density"]) for m, rows in out.items()}


def plot(runs, path) -> str:
    """The figure for the benchmark's runs (a list of result dicts with a name, or one
    result dict), written to `path`; returns what was done."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot written"
    runs = [runs] if isinstance(runs, dict) else runs
    fig, axes = plt.subplots(len(runs), len(PANELS), figsize=(15, 4 * len(runs)),
                             squeeze=False)
    for row, res in zip(axes, runs):
        others = iter(OTHER_STYLES * len(res["rows"]))
        for name, rows in _curves(res).items():
            style = next((st for known, st in STYLES.items()
                          if name == known or name.startswith(known + " (")), None) or next(others)
            dens = [r["density"] for r in rows]
            for ax, (key, _) in zip(row, PANELS):
                ax.plot(dens, [r[key] for r in rows], style, label=name, markersize=4)
        for ax, (key, label) in zip(row, PANELS):
            ax.set_xscale("log")
            ax.set_ylabel(label)
            ax.set_xlabel("density (fraction of pairs computed exactly)")
            ax.grid(alpha=0.3)
            if key == "rel_error":
                ax.set_yscale("log")
        row[0].set_title(f"{res.get('name', '')}: S={res['S']}, {res['B']} x {res['H']} heads, "
                         f"QC={res['QC']}, KC={res['KC']}", fontsize=9)
        row[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"plot written to {path}"
