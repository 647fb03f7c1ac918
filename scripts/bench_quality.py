"""Quality of SVG2's block selection: density vs output error and attention-mass recall.

This is a quality benchmark, not a timing one. On structured queries and keys built from
real images it compares, at equal density, three ways (and a diagnostic fourth) of choosing
which query-key pairs to compute:

1. SVG2 (`svg2_jax`): cold start (random init, 50 k-means iterations), per-head k-means
   on Q (QC clusters) and K (KC clusters), centroid-level top-p selection of
   (query cluster, key cluster) blocks, for several top_p with min_kc_ratio 0.10, plus
   one row with min_kc_ratio 0 at top_p 0.9.
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
`svg2_attention` itself is then run (`--api-check`) and must reproduce the same per-head
densities and output error, which checks that the numbers are those of the public
function.

Usage:
  python -m scripts.bench_quality                  # = --quick, under a minute on 2 cores
  python -m scripts.bench_quality --full --write-doc

Every printed figure, per head, is written to JSON: `--json`, by default
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
                                    table_markdown, utc_date, write_doc)
from scripts.quality.selectors import KERNEL_TILE_SELECTORS, SELECTORS
from scripts.raw_data import REPO, default_path, write_json

QUICK = dict(images="astronaut", frames=5, height=256, width=448, heads=2)
FULL = dict(images="astronaut,coffee,chelsea", frames=9, height=320, width=576, heads=4)


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
                      help=f"small problem, the default: {QUICK}")
    mode.add_argument("--full", action="store_true", help=f"larger problem: {FULL}")
    p.add_argument("--images", help="comma-separated skimage.data names")
    p.add_argument("--frames", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--patch", type=int, default=16, help="token size in px (16 or 8)")
    p.add_argument("--pool", type=int, default=4, help="pooled cells per patch side")
    p.add_argument("--pan-px", type=int, default=8, help="pan per frame, px")
    p.add_argument("--context-weight", type=float, default=0.5)
    p.add_argument("--temperature", type=float, default=0.5,
                   help="logits q.k/sqrt(D) scale as 1/temperature")
    p.add_argument("--qk-noise", type=float, default=0.3,
                   help="relative noise between Wq and Wk")
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
                   help="re-run svg2_attention itself for all settings or one (top_p 0.9; "
                        "default) and check it gives the same densities and errors")
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
    tiles = [t for t in args.query_tiles.split(",") if t]
    if set(tiles) - set(KERNEL_TILE_SELECTORS):
        p.error(f"--query-tiles {args.query_tiles!r}: known tilings are "
                f"{list(KERNEL_TILE_SELECTORS)}")
    preset = FULL if args.full else QUICK
    if args.json is None:
        args.json = default_path(f"quality_{'full' if args.full else 'quick'}.json")
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    command = "python -m scripts.bench_quality " + " ".join(
        sys.argv[1:] if argv is None else argv)

    t_start = time.perf_counter()
    images = [s.strip() for s in args.images.split(",") if s.strip()]
    q, k, v, meta = build_qkv(images, args.frames, args.height, args.width, args.heads,
                              patch=args.patch, pool=args.pool, pan_px=args.pan_px,
                              context_weight=args.context_weight,
                              temperature=args.temperature, qk_noise=args.qk_noise,
                              seed=args.seed)
    g = meta["grid"]
    print(f"inputs: {', '.join(images)}; {args.frames} frames {args.height}x{args.width} px -> "
          f"{g[0]}x{g[1]}x{g[2]} = {meta['S']} tokens, {args.heads} heads, D=128 "
          f"({time.perf_counter() - t_start:.1f} s)")
    res = run_quality(q, k, v, top_ps=[float(x) for x in args.top_p.split(",")],
                      min_kc_ratio=args.min_kc_ratio, num_q_clusters=args.qc,
                      num_k_clusters=args.kc, q_tokens_per_cluster=args.q_tokens_per_cluster,
                      k_tokens_per_cluster=args.k_tokens_per_cluster,
                      kmeans_iters=args.kmeans_iters, block=args.block, seed=args.seed,
                      tile=args.tile, api_check=args.api_check,
                      selectors=SELECTORS + tuple(KERNEL_TILE_SELECTORS[t] for t in tiles))
    wall = time.perf_counter() - t_start
    print("dense attention:", attention_line(res))
    print()
    print(table_markdown(res))
    print()
    print(summary(res))
    print(f"wall time {wall:.1f} s ({', '.join(f'{k} {v:.1f}' for k, v in res['timings'].items())})")
    plot_note = "no plot requested"
    plot_path = args.plot or (PLOT_PATH if args.write_doc else None)
    if plot_path and args.no_plot:
        plot_note = "plot skipped (--no-plot)"
    elif plot_path:
        plot_note = plot(res, plot_path)
        print(plot_note)
    write_json(args.json, dict(command=command, date=utc_date(), machine=machine(),
                               wall_s=wall, inputs=meta, **res))
    if args.write_doc:
        write_doc(res, meta, command, wall, plot_note, args.json)
        print(f"wrote {os.path.relpath(DOC_PATH, REPO)}")
    return res


if __name__ == "__main__":
    main()
