"""Quality of SVG2's block selection and compensation: density vs output error and
attention-mass recall.

This is a quality benchmark, not a timing one. On structured queries and keys built from
real images it compares ways of choosing which query-key pairs to compute, and of
standing in for the rest:

1. SVG2, the reference rule (`SVG2Config.reference()`): cold start (random init, 50
   k-means iterations), per-head k-means on Q (QC clusters) and K (KC clusters),
   centroid-level top-p selection of (query cluster, key cluster) blocks, for several
   top_p with min_kc_ratio 0.10, plus one row with min_kc_ratio 0 at top_p 0.9; the
   same selections with the left-out key clusters compensated (`svg2_jax.compensation`),
   per query token (the library's) and per query cluster (cheaper, coarser).
1b. The error-aware rule with compensation (`SVG2Config.error_aware()`), swept
   over its error tolerance (the preset's knob), with and without the own-key term,
   and over a per-head density budget; and the oracle below with compensation over the
   same budgets. These rows have their own densities: compare along the density axis
   (the curves, and `scripts/quality/targets.py`'s interpolation at SVG2's density).
2. Oracle at equal density: the same SVG2 clusters, but blocks chosen by the TRUE
   attention mass (from the exact dense softmax): per head, (query cluster, key cluster)
   blocks are taken greedily in descending order of true mass per token pair until the
   number of pairs is closest to SVG2's for that head (so within half a block of it). It
   shows how much of the gap is the centroid estimate and how much the clustering.
3. Fixed 64-token block top-k at equal density: original token order (no permutation),
   64-query x 64-key blocks, block score = mean-pooled q . mean-pooled k / sqrt(D), the
   top-k key blocks per query block with k = max(1, round(density x number of key
   blocks)), density = SVG2's for that head: the usual static-block baseline.
4. Block oracle (a diagnostic): the same fixed 64-token blocks chosen by true mass per
   pair like the oracle of 2, at SVG2's density. Comparing it with 2 separates the
   grouping (clusters vs contiguous blocks) from the scoring (estimate vs true mass).

`--query-tiles clusters,spanning` adds one row per tiling of the Hopper kernel
(`SparseTuningConfig.query_tiles`) at SVG2's own selection: the pairs its tiles *use*
(density, error, recall: spanning tiles attend to the union of their clusters'
selections, a superset) and the pairs they compute (`computed`, tile waste included).

Metrics per (method, setting), averaged over heads (and images):
  density      fraction of query-key pairs computed (counted from the token mask);
  rel. error   ||o - o_dense||_F / ||o_dense||_F per head, o = exact softmax attention
               restricted to the computed pairs;
  recall       mean over query tokens of the true softmax mass on the computed pairs;
  recall p10   10th percentile over queries of that per-query mass (how bad the worst
               tenth of the queries is: error is driven by queries that lose most of
               their mass, which the mean hides);
  top-1 kept   fraction of queries whose single most probable key is computed.
The dense reference is exact float32 attention, chunked over query tiles.

Inputs (all float32, seeds explicit):
  video   real images bundled with scikit-image (astronaut, coffee, chelsea, ...: no
          download). Each image is rescaled so that a frame-sized window fits with room
          to pan, and T frames are crops of `--height` x `--width` px sliding right by
          `--pan-px` px per frame (a panning camera).
  tokens  16x16-px patches on a (t, y, x) grid, like Wan's latent grid (Wan: 1x2x2
          patches of an 8x downsampled VAE latent, so one token ~ 16x16 px). A token's
          pixels are average-pooled to 4x4 cells x RGB (48 numbers: a VAE latent keeps
          2x2 latent pixels x 16 channels per token), standardised per video, and
          concatenated with `--context-weight` x the mean of the same features over the
          3x3 token neighbourhood in its frame. A fixed random linear map (seed
          `--seed`) projects them to width 128, followed by a layer norm (no affine).
  heads   H heads, D = 128: per head a shared matrix A_h = diag(w_h) G_h / sqrt(128)
          (G_h Gaussian, w_h a random positive per-feature weighting, so heads weigh
          features differently), Wq_h = A_h + noise, Wk_h = A_h + noise (relative noise
          `--qk-noise`), so q . k measures feature similarity, as trained attention often
          does; Wv_h Gaussian. q and k are divided by sqrt(`--temperature`), so the logits
          q . k / sqrt(D) scale as 1 / temperature; the default makes attention peaky
          (the dense attention's mean entropy, max probability and the token-level
          fraction of keys holding 90% of each query's mass are printed).
  RoPE    3-D rotary embedding exactly as diffusers' WanRotaryPosEmbed / Wan's
          rope_apply: head dim 128 split into t = 44, h = 42, w = 42 channels
          (h_dim = w_dim = 2 * (128 // 6), t_dim = 128 - h_dim - w_dim), theta 10000,
          per axis frequencies 1 / theta^(2i / dim), positions = token grid indices,
          applied to consecutive (even, odd) channel pairs as a complex multiplication.

Cluster counts scale with the problem: QC = clip(round(S / q_tokens_per_cluster), 4, 300),
KC = clip(round(S / k_tokens_per_cluster), 8, 1000), defaults 100 and 30 tokens per
cluster; Wan 720p (S = 75600, QC = 300, KC = 1000) has 252 and 75.6, so clusters here are
2.5x smaller relative to S.

Code (`scripts/quality/`): `inputs` builds q, k, v; `clustering` runs SVG2's k-means
once per problem, exactly as `svg2_attention` calls it; `selectors` holds the methods
(`SELECTORS`: adding a method is a function and one row there), each top_p re-running
only the selection; `metrics` has the dense and masked passes; `benchmark.run_quality`
puts them together; `report` and `plot` write docs/quality.md and its figure.
`svg2_attention` itself is then run (`--api-check`) for every row the library can
produce (SVG2, SVG2 + compensation, the error-aware rows) and must reproduce the same
per-head densities and output errors, which checks that the numbers are those of the
public function. `targets` reads issue #13's targets off the curves; `flops` counts the
added work at Wan 720p.

Input sets (`--inputs`, or `--quick` = quick, `--full` = all four; flags such as
--images or --temperature override the named sets' values):
  quick      astronaut, 5 frames 256x448, 2 heads, temperature 0.5 (peaked: the query's
             own key is its top key for most queries)
  full       astronaut, coffee, chelsea, 9 frames 320x576, 4 heads, temperature 0.5
  peaky      chelsea, 4 frames 384x384, 2 heads, temperature 0.5, QC 40, KC 120
             (peakier: the largest mean max probability of the four)
  neighbour  coffee, 4 frames 384x384, 2 heads, temperature 0.7, QC 40, KC 120, keys and
             values shifted one token along x (attention peaks at a neighbour: no own-key
             advantage; the conservative reading for the compensation's own-key term)

Usage:
  python -m scripts.bench_quality                  # = --quick, a few minutes on 2 cores
  python -m scripts.bench_quality --full --write-doc

Every printed figure, per head and input set, is written to JSON: `--json`, by default
docs/bench/quality_quick.json or docs/bench/quality_full.json (the data behind
docs/quality.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from scripts.quality.benchmark import DEFAULT_TOP_PS, run_quality
from scripts.quality.inputs import build_qkv
from scripts.quality.plot import plot
from scripts.quality.report import (DOC_PATH, PLOT_PATH, attention_line, machine, summary,
                                    table_markdown, targets_line, utc_date, write_doc)
from scripts.quality.selectors import KERNEL_TILE_SELECTORS, SELECTORS
from scripts.raw_data import REPO, default_path, write_json

# The input sets (module docstring). Fields: build_qkv's, plus qc / kc (None: from the
# tokens per cluster).
_BASE = dict(temperature=0.5, qk_noise=0.3, roll_kv=0, qc=None, kc=None)
INPUTS = {
    "quick": dict(_BASE, images="astronaut", frames=5, height=256, width=448, heads=2),
    "full": dict(_BASE, images="astronaut,coffee,chelsea", frames=9, height=320, width=576,
                 heads=4),
    "peaky": dict(_BASE, images="chelsea", frames=4, height=384, width=384, heads=2, qc=40,
                  kc=120),
    "neighbour": dict(_BASE, images="coffee", frames=4, height=384, width=384, heads=2,
                      temperature=0.7, roll_kv=1, qc=40, kc=120),
}
QUICK, FULL = ("quick",), ("quick", "full", "peaky", "neighbour")


def main(argv=None) -> None:
    """Command-line entry point (also the `svg2-quality-report` console script)."""
    run_cli(argv)


def run_cli(argv=None):
    """Parses `argv`, runs the benchmark, prints and writes the reports; returns the results."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 1)[1])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help=f"input set {','.join(QUICK)}, the default")
    mode.add_argument("--full", action="store_true", help=f"input sets {','.join(FULL)}")
    mode.add_argument("--inputs", help=f"comma-separated input sets of {tuple(INPUTS)}")
    p.add_argument("--images", help="comma-separated skimage.data names")
    p.add_argument("--frames", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--patch", type=int, default=16, help="token size in px (16 or 8)")
    p.add_argument("--pool", type=int, default=4, help="pooled cells per patch side")
    p.add_argument("--pan-px", type=int, default=8, help="pan per frame, px")
    p.add_argument("--context-weight", type=float, default=0.5)
    p.add_argument("--temperature", type=float,
                   help="logits q.k/sqrt(D) scale as 1/temperature (default: the set's)")
    p.add_argument("--qk-noise", type=float, help="relative noise between Wq and Wk")
    p.add_argument("--roll-kv", type=int, help="shift keys and values this many tokens "
                   "along x (no own-key advantage)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top-p", default=",".join(map(str, DEFAULT_TOP_PS)))
    p.add_argument("--min-kc-ratio", type=float, default=0.10)
    p.add_argument("--q-tokens-per-cluster", type=float, default=100)
    p.add_argument("--k-tokens-per-cluster", type=float, default=30)
    p.add_argument("--qc", type=int, help="override QC")
    p.add_argument("--kc", type=int, help="override KC")
    p.add_argument("--kmeans-iters", type=int, default=50)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--tile", type=int, default=128, help="query rows per evaluation step")
    p.add_argument("--api-check", choices=("all", "one", "none"), default="one",
                   help="re-run svg2_attention itself for all the library's rows or one "
                        "per method (top_p 0.9, the default tolerance; default) and check "
                        "it gives the same densities and errors")
    p.add_argument("--query-tiles", default="",
                   help=f"comma-separated, from {list(KERNEL_TILE_SELECTORS)}: also rows of "
                        f"SVG2's selection as the kernel's tiles use it (used and computed "
                        f"pairs)")
    p.add_argument("--json", help="write all numbers here (default: docs/bench/"
                   "quality_quick.json, or quality_full.json with --full)")
    p.add_argument("--write-doc", action="store_true", help=f"(re)write {DOC_PATH}")
    p.add_argument("--plot", help="write the plot here (with --write-doc: docs/quality.png)")
    p.add_argument("--no-plot", action="store_true", help="no plot, even with --write-doc")
    args = p.parse_args(argv)
    names = FULL if args.full else (QUICK if not args.inputs else
                                    tuple(x.strip() for x in args.inputs.split(",") if x.strip()))
    unknown = [n for n in names if n not in INPUTS]
    if unknown or not names:
        p.error(f"--inputs: unknown input set(s) {unknown}; choose from {tuple(INPUTS)}")
    tiles = [t for t in args.query_tiles.split(",") if t]
    if set(tiles) - set(KERNEL_TILE_SELECTORS):
        p.error(f"--query-tiles {args.query_tiles!r}: known tilings are "
                f"{list(KERNEL_TILE_SELECTORS)}")
    selectors = SELECTORS + tuple(KERNEL_TILE_SELECTORS[t] for t in tiles)
    if args.json is None:
        args.json = default_path(f"quality_{'full' if args.full else 'quick'}.json")
    command = "python -m scripts.bench_quality " + " ".join(
        sys.argv[1:] if argv is None else argv)
    overrides = {name: getattr(args, name) for name in
                 ("images", "frames", "height", "width", "heads", "temperature", "qk_noise",
                  "roll_kv", "qc", "kc") if getattr(args, name) is not None}

    t_start = time.perf_counter()
    runs = []
    for name in names:
        spec = dict(INPUTS[name], **overrides)
        runs.append(run_input(name, spec, args, selectors))
    wall = time.perf_counter() - t_start
    print(f"wall time {wall:.1f} s")
    plot_note = "no plot requested"
    plot_path = args.plot or (PLOT_PATH if args.write_doc else None)
    if plot_path and args.no_plot:
        plot_note = "plot skipped (--no-plot)"
    elif plot_path:
        plot_note = plot(runs, plot_path)
        print(plot_note)
    write_json(args.json, dict(command=command, date=utc_date(), machine=machine(),
                               wall_s=wall, runs=runs))
    if args.write_doc:
        write_doc(runs, command, wall, plot_note, args.json)
        print(f"wrote {os.path.relpath(DOC_PATH, REPO)}")
    return {run["name"]: run for run in runs}


def run_input(name, spec, args, selectors=SELECTORS) -> dict:
    """One input set through the benchmark: prints its tables; returns its results with
    name, inputs (the builder's description) and wall_s."""
    t_start = time.perf_counter()
    images = [s.strip() for s in spec["images"].split(",") if s.strip()]
    q, k, v, meta = build_qkv(images, spec["frames"], spec["height"], spec["width"],
                              spec["heads"], patch=args.patch, pool=args.pool,
                              pan_px=args.pan_px, context_weight=args.context_weight,
                              temperature=spec["temperature"], qk_noise=spec["qk_noise"],
                              seed=args.seed, roll_kv=spec["roll_kv"])
    g = meta["grid"]
    print(f"[{name}] inputs: {', '.join(images)}; {spec['frames']} frames "
          f"{spec['height']}x{spec['width']} px -> {g[0]}x{g[1]}x{g[2]} = {meta['S']} tokens, "
          f"{spec['heads']} heads, D=128 ({time.perf_counter() - t_start:.1f} s)")
    res = run_quality(q, k, v, top_ps=[float(x) for x in args.top_p.split(",")],
                      min_kc_ratio=args.min_kc_ratio, num_q_clusters=spec["qc"],
                      num_k_clusters=spec["kc"], q_tokens_per_cluster=args.q_tokens_per_cluster,
                      k_tokens_per_cluster=args.k_tokens_per_cluster,
                      kmeans_iters=args.kmeans_iters, block=args.block, seed=args.seed,
                      tile=args.tile, api_check=args.api_check, selectors=selectors)
    wall = time.perf_counter() - t_start
    print(f"[{name}] dense attention:", attention_line(res))
    print()
    print(table_markdown(res))
    print()
    print(summary(res))
    print(targets_line(res))
    print(f"[{name}] wall time {wall:.1f} s "
          f"({', '.join(f'{k} {v:.1f}' for k, v in res['timings'].items())})")
    return dict(name=name, inputs=meta, wall_s=wall, **res)


if __name__ == "__main__":
    main()
