"""Tables from research/results/*.json: every method interpolated at equal density.

  python research/summarize.py [--methods a,b,...] [--inputs A,B] [--rank] [--curves]

Per input and seed the reference point is SVG2 (top_p 0.9, min_kc_ratio 0.1): density d0,
error e0. For each method (curves interpolated linearly in log density; error in log):
  err@d0, recall@d0, p10@d0       at the reference's density (targets 2 and 3)
  err@0.4d0                        at 0.4 x that density
  d(e0)/d0                         the smallest density reaching error e0, over d0 (target 1)
Values are means over seeds (per-seed interpolation first). '-' = outside the swept range.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
from collections import defaultdict

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def load(pattern="*.json"):
    out = defaultdict(list)
    for f in sorted(glob.glob(os.path.join(HERE, "results", pattern))):
        r = json.load(open(f))
        tag = os.path.basename(f).rsplit("_s", 1)[0]
        out[tag].append(r)
    return out


def curve(points, key):
    pts = sorted((r for r in points if r["density"] > 0), key=lambda r: r["density"])
    d = np.array([r["density"] for r in pts])
    y = np.array([r[key] for r in pts])
    # collapse equal densities (top_p sweeps saturate at the floor): keep the mean
    ud, inv = np.unique(np.round(d, 10), return_inverse=True)
    uy = np.array([y[inv == i].mean() for i in range(len(ud))])
    return ud, uy


def at_density(points, key, d, log_y=False):
    x, y = curve(points, key)
    if d < x[0] * 0.999 or d > x[-1] * 1.001:
        return None
    if len(x) == 1:
        return float(y[0])
    yy = np.log(np.maximum(y, 1e-12)) if log_y else y
    v = float(np.interp(math.log(d), np.log(x), yy))
    return math.exp(v) if log_y else v


def density_at_error(points, e):
    """Smallest density whose (interpolated) error is <= e."""
    x, y = curve(points, "err")
    if y[0] <= e:
        return float(x[0]) if abs(y[0] - e) < 1e-12 else -float(x[0])  # negative: below range
    for i in range(1, len(x)):
        if y[i] <= e < y[i - 1]:
            t = (math.log(e) - math.log(y[i - 1])) / (math.log(y[i]) - math.log(y[i - 1]))
            return math.exp(math.log(x[i - 1]) + t * (math.log(x[i]) - math.log(x[i - 1])))
    return None


def metrics(runs, name):
    rows = []
    for r in runs:
        ref = [p for p in r["methods"]["svg2"]["points"] if abs(p["top_p"] - 0.9) < 1e-9][0]
        d0, e0 = ref["density"], ref["err"]
        if name not in r["methods"]:
            return None
        pts = r["methods"][name]["points"]
        if all(p["density"] == 0 for p in pts):   # a single point at density 0
            rows.append(dict(d0=d0, e0=e0, err=pts[0]["err"], rec=0.0, p10=0.0, err04=None,
                             rec04=None, p1004=None,
                             dratio=0.0 if pts[0]["err"] <= e0 else None, dmin=0.0))
            continue
        dr = density_at_error(pts, e0)
        rows.append(dict(d0=d0, e0=e0, err=at_density(pts, "err", d0, True),
                         rec=at_density(pts, "recall", d0), p10=at_density(pts, "recall_p10", d0),
                         err04=at_density(pts, "err", 0.4 * d0, True),
                         rec04=at_density(pts, "recall", 0.4 * d0),
                         p1004=at_density(pts, "recall_p10", 0.4 * d0),
                         dratio=None if dr is None else dr / d0,
                         dmin=min(p["density"] for p in pts)))

    def mean(k):
        vals = [x[k] for x in rows]
        if any(v is None for v in vals):
            return None
        if k == "dratio" and any(v < 0 for v in vals):
            return -float(np.mean([abs(v) for v in vals]))  # '<=' the lowest swept density
        return float(np.mean(vals))

    return {k: mean(k) for k in rows[0]}


def fmt(v, nd=3):
    if v is None:
        return "-"
    if v < 0:
        return f"<={-v:.{nd}f}"
    return f"{v:.{nd}f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods")
    ap.add_argument("--inputs")
    ap.add_argument("--rank", action="store_true", help="rank all methods by err@d0 / e0")
    ap.add_argument("--pattern", default="*.json")
    ap.add_argument("--tau", help="a tolerance-swept method: density/d0 and err/e0 per tau")
    ap.add_argument("--grid", help="comma-separated absolute densities: err / recall / p10 "
                                   "of --methods at each (means over seeds)")
    args = ap.parse_args()
    data = load(args.pattern)
    inputs = args.inputs.split(",") if args.inputs else sorted(data)
    all_names = sorted({n for runs in data.values() for r in runs for n in r["methods"]})
    names = args.methods.split(",") if args.methods else all_names
    if args.tau:
        print("| tau | " + " | ".join(f"{i}: density/d0, err/e0" for i in inputs) + " |")
        print("|---" * (1 + len(inputs)) + "|")
        taus = sorted({p["tau"] for r in data[inputs[0]] for p in r["methods"][args.tau]["points"]})
        for t in taus:
            cells = []
            for i in inputs:
                vals = []
                for r in data[i]:
                    ref = [p for p in r["methods"]["svg2"]["points"] if abs(p["top_p"] - 0.9) < 1e-9][0]
                    pt = [p for p in r["methods"][args.tau]["points"] if p["tau"] == t][0]
                    vals.append((pt["density"] / ref["density"], pt["err"] / ref["err"]))
                m = np.mean(vals, 0)
                cells.append(f"{m[0]:.2f}, {m[1]:.2f}")
            print(f"| {t:g} | " + " | ".join(cells) + " |")
        return
    if args.grid:
        ds = [float(x) for x in args.grid.split(",")]
        print("| input | method | " + " | ".join(f"d={d:g}: err / rec / p10" for d in ds) + " |")
        print("|---" * (2 + len(ds)) + "|")
        for i in inputs:
            for n in names:
                cells = []
                for d in ds:
                    vals = []
                    for r in data[i]:
                        if n not in r["methods"]:
                            continue
                        pts = r["methods"][n]["points"]
                        vals.append([at_density(pts, "err", d, True),
                                     at_density(pts, "recall", d),
                                     at_density(pts, "recall_p10", d)])
                    if not vals or any(v is None for x in vals for v in x):
                        cells.append("-")
                    else:
                        m = np.mean(np.array(vals, float), 0)
                        cells.append(f"{m[0]:.3f} / {m[1]:.3f} / {m[2]:.2f}")
                print(f"| {i} | {n} | " + " | ".join(cells) + " |")
        return
    if args.rank:
        score = {}
        for n in all_names:
            vals = []
            for i in inputs:
                m = metrics(data[i], n)
                if m is None or m["err"] is None:
                    break
                vals.append(m["err"] / m["e0"])
            else:
                score[n] = float(np.exp(np.mean(np.log(vals))))
        for n, s in sorted(score.items(), key=lambda kv: kv[1]):
            per = " ".join(f"{i}:{metrics(data[i], n)['err'] / metrics(data[i], n)['e0']:.2f}"
                           for i in inputs)
            print(f"{s:.3f}  {n:45s} {per}")
        return
    for i in inputs:
        runs = data[i]
        r0 = runs[0]
        print(f"\n### {i}: S={r0['S']} QC={r0['QC']} KC={r0['KC']} heads/seed={r0['heads']} "
              f"seeds={len(runs)} max prob {np.mean([r['max_prob'] for r in runs]):.3f} "
              f"entropy {np.mean([r['entropy'] for r in runs]):.2f}")
        m0 = metrics(runs, "svg2")
        print(f"reference SVG2 top_p 0.9: density d0 = {m0['d0']:.4f}, error e0 = {m0['e0']:.4f}\n")
        print("| method | err@d0 | err/e0 | recall@d0 | p10@d0 | err / recall / p10 @0.4d0 "
              "| d(e0)/d0 | min density |")
        print("|---|---|---|---|---|---|---|---|")
        for n in names:
            m = metrics(runs, n)
            if m is None:
                continue
            ratio = None if m["err"] is None else m["err"] / m["e0"]
            print(f"| {n} | {fmt(m['err'])} | {fmt(ratio, 2)} | {fmt(m['rec'])} | {fmt(m['p10'])} | "
                  f"{fmt(m['err04'])} / {fmt(m['rec04'])} / {fmt(m['p1004'], 2)} | "
                  f"{fmt(m['dratio'], 2)} | {fmt(m['dmin'])} |")


if __name__ == "__main__":
    main()
