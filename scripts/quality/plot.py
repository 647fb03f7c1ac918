"""The quality benchmark's plot: recall and output error against density, per method."""

from __future__ import annotations

# Known methods keep their look; any other method gets the next of these.
STYLES = {"SVG2": "o-", "oracle": "s--", "block top-k": "^:", "block oracle": "v-."}
OTHER_STYLES = ("D-", "P--", "X:", "*-.")


def plot(res, path) -> str:
    """Recall and relative error against density for every method (the settings with a
    min_kc_ratio floor), written to `path`; returns what was done."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot written"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    others = iter(OTHER_STYLES * len(res["rows"]))
    for name in dict.fromkeys(r["method"] for r in res["rows"]):
        rows = sorted((r for r in res["rows"] if r["method"] == name
                       and r["min_kc_ratio"] > 0), key=lambda r: r["density"])
        if not rows:
            continue
        style = next((st for known, st in STYLES.items()
                      if name == known or name.startswith(known + " ")), None) or next(others)
        dens = [r["density"] for r in rows]
        axes[0].plot(dens, [r["recall"] for r in rows], style, label=name)
        axes[1].plot(dens, [r["rel_error"] for r in rows], style, label=name)
    axes[0].set_ylabel("attention-mass recall")
    axes[1].set_ylabel("output relative error")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("density (fraction of pairs computed)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"S={res['S']}, {res['B']} video(s) x {res['H']} heads, QC={res['QC']}, "
                 f"KC={res['KC']} (min_kc=0.1 settings)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot written to {path}"
