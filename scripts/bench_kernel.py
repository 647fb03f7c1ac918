"""The Hopper sparse flash-attention kernel against cuDNN dense attention (GPU benchmark).

For each shape (S, H, QC, KC) it builds structured bf16 q, k, v [1, S, H, 128] (tokens
around shared random centres with skewed popularity, so clusters are ragged and some
key clusters are much more relevant than others) and clusters them with SVG2's real
k-means (`clustering.cluster_qk`, cold, `--kmeans-iters`). Two selections:
  density   per query cluster, the key clusters of largest centroid mass until
            `--densities` of the keys are kept (a fixed budget: top-p at trained-model
            densities needs a trained model);
  top_p     SVG2's own rule at `--top-ps` (uneven budgets across query clusters, the
            load the kernel meets in a model); each tuning runs with heaviest-first and
            with plain (cluster) CTA order (`SparseTuningConfig.heavy_first`).
Then it times (`scripts/timing.py`, every output returned and summarised):
  kernel    the sparse kernel alone on its layouts (`svg2_jax.layout.pallas_layout`),
  layout    key cluster order + work-list build + gathers of q, k, v into the layouts +
            output back to token order (`gather_rows`),
  dense     cuDNN (jax.nn.dot_product_attention(implementation="cudnn")),
and reports efficiency = density x dense / kernel (the issue's figure of merit; 1.0 =
the kernel computes the selected pairs as fast as cuDNN computes all pairs), the
density of computed pairs (what the kernel's tiles cost) and of used pairs (those of
real query rows with their CTA's key list: the selected pairs for cluster tiles, a
superset for spanning tiles, `--query-tiles`), efficiency per used pair = used density
x dense / kernel, the
wasted fraction of computed (query row, key row) pairs (Q tails of 64-row tiles, key
rows of partial box_rows-row boxes outside their runs, empty box slots), and, as the
correctness signal, the non-finite values among the output rows of real queries (read
back through `gather_rows`: the slots of unused CTAs are never written).

Times are medians over 3 rounds of `--reps` back-to-back launches (dispatch
overlapped), each round timed as a whole and divided. Every printed figure is in the
`--json` file (rewritten after each shape).

`--query-tiles clusters,spanning` times each tuning with both query tilings
(`SparseTuningConfig.query_tiles`) on the same selection.

`--ablations` also times variants of the kernel built here from its pieces
(`ABLATIONS`, `ablation_pieces`; some give wrong results: timing experiments only).
`--dry-run` runs the whole script on any device at a tiny shape with the kernel's
pure-JAX twin in place of the kernel and XLA's dense attention (checks the script; its
figures say nothing about the kernel).

Usage (GPU machine):
  python -m scripts.bench_kernel --json out.json --png out.png
  python -m scripts.bench_kernel --shapes 32760x12 --densities 0.1,0.3 --top-ps 0.9 \
      --tunings 128:16:2,128:32:3 --key-orders co_selection,label --json out.json
  python -m scripts.bench_kernel --shapes 75600x40 --densities "" --top-ps 0.9 \
      --query-tiles clusters,spanning --json out.json
  python -m scripts.bench_kernel --dry-run --json /tmp/check.json     # any device
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import sys
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from einops import rearrange
from jax import lax

from pallas_kernels import sparse_flash_mgpu as sf
from pallas_kernels import sparse_worklist as wl
from pallas_kernels.sparse_worklist import ALIGN, SparseTuningConfig
from scripts.timing import summarize, time_jax
from svg2_jax import SVG2Config
from svg2_jax.clustering import cluster_qk
from svg2_jax.layout import KEY_ORDERS, pallas_layout
from svg2_jax.selection import block_density, select_by_density, select_clusters

# (S, H, QC, KC). "tiny" is the --dry-run shape.
SHAPES = {"75600x40": (75600, 40, 300, 1000), "32760x12": (32760, 12, 200, 1000),
          "tiny": (600, 2, 6, 24)}
DENSITIES = (0.05, 0.1, 0.13, 0.2, 0.3, 0.5)
TOP_PS = (0.5, 0.9)
SELECTIONS = {"density": select_by_density, "top_p": select_clusters}


# ------------------------------------------------------------------ kernel ablations
# Pieces that replace one step of the kernel (`sparse_flash_mgpu.KernelPieces`) to see
# what that step costs. Only the benchmark builds them; the library runs
# PRODUCTION_PIECES.


def _first_entry_rows(sizes, starts, j, first_box, total_boxes, config):
    """No walk: every tile's boxes are the first entry's first rows (no entry loads)."""
    row8 = lax.shift_right_logical(starts[0], jnp.int32(3))
    box8 = config.box_rows // ALIGN
    return [row8 + b * box8 for b in range(config.boxes_per_tile)], None, None, j


def _no_words(valids, config):
    return []


def _always_one_copy(row8s, config):
    return True


def _never_one_copy(row8s, config):
    return jnp.bool_(False)


def _no_mask(scores, mask_vals, add_mask):
    return scores


def _always_mask(scores, mask_vals, add_mask):
    return add_mask(scores)


class Ablation(NamedTuple):
    """pieces: the KernelPieces fields it replaces; right: whether results stay right."""

    pieces: dict[str, Callable]
    right: bool
    what: str


ABLATIONS = {
    "no_mask_store": Ablation({"words": _no_words}, False,
                              "the producer stores no mask words"),
    "no_walk": Ablation({"walk": _first_entry_rows, "words": _no_words}, False,
                        "no walk, no entry loads, no mask words: every tile is the first "
                        "entry's first rows"),
    "one_copy": Ablation({"one_copy": _always_one_copy}, False,
                         "K and V tiles arrive in one block_kv-row copy each, contiguous "
                         "or not"),
    "no_mask_add": Ablation({"mask": _no_mask}, False, "the consumers add no mask"),
    "box_copies": Ablation({"one_copy": _never_one_copy}, True,
                           "one copy per box even when a tile's boxes are contiguous"),
    "always_mask": Ablation({"mask": _always_mask}, True,
                            "the mask is added to full tiles too"),
}


def ablation_pieces(spec: str) -> sf.KernelPieces:
    """The kernel's pieces for a "+"-joined set of ABLATIONS names, e.g.
    "one_copy+no_mask_add"."""
    flags = spec.split("+")
    unknown = [f for f in flags if f not in ABLATIONS]
    if unknown:
        raise ValueError(f"unknown ablation(s) {unknown} in {spec!r}; known: {list(ABLATIONS)}")
    replace: dict[str, Callable] = {}
    for flag in flags:
        for piece, fn in ABLATIONS[flag].pieces.items():
            if replace.get(piece, fn) is not fn:
                raise ValueError(f"ablation {spec!r}: {flag} and another flag both replace "
                                 f"the kernel's {piece!r} piece")
            replace[piece] = fn
    return sf.PRODUCTION_PIECES._replace(**replace)


def ablation_is_right(spec: str) -> bool:
    return all(ABLATIONS[f].right for f in spec.split("+"))


# ------------------------------------------------------------------ inputs


def structured_qkv(key, s, h, d=128, centres=1500, noise=0.6):
    """q, k, v [1, S, H, D] bf16: q and k rows near shared centres (Zipf-like use)."""
    kc, kq, kk, kv, km = jax.random.split(key, 5)
    cen = jax.random.normal(kc, (h, centres, d))
    logits = -1.2 * jnp.log1p(jnp.arange(centres, dtype=jnp.float32))
    member_q = jax.random.categorical(kq, logits, shape=(h, s))
    member_k = jax.random.categorical(km, logits, shape=(h, s))
    take = jax.vmap(lambda c, m: c[m])
    q = take(cen, member_q) + noise * jax.random.normal(kk, (h, s, d))
    k = take(cen, member_k) + noise * jax.random.normal(kq, (h, s, d))
    v = jax.random.normal(kv, (h, s, d))
    to = lambda x: rearrange(x, "h s d -> 1 s h d").astype(jnp.bfloat16)
    return to(q), to(k), to(v)


def clustered(q, k, v, qc, kc, kmeans_iters):
    """Per-head q, k, v [B * H, S, D] and SVG2's cold clustering of them (no early stop)."""
    cfg = SVG2Config(num_q_clusters=qc, num_k_clusters=kc, kmeans_iters_cold=kmeans_iters,
                     kmeans_tol=0.0)
    qn, kn, vn = (rearrange(x, "b s h d -> (b h) s d") for x in (q, k, v))
    clustering = jax.jit(functools.partial(cluster_qk, cache=None, config=cfg))(qn, kn)
    return qn, kn, vn, clustering


# ------------------------------------------------------------------ measurement


def _cta_orders(tuning, selection):
    """The tunings a selection mode runs: top_p also with the other CTA order."""
    if selection == "density":
        return [tuning]
    return [tuning, dataclasses.replace(tuning, heavy_first=not tuning.heavy_first)]


def _describe(tuning):
    return (f"kv{tuning.block_kv} box{tuning.box_rows} st{tuning.max_concurrent_steps}"
            f"{'' if tuning.split_tails else ' nosplit'}"
            f"{'' if tuning.heavy_first else ' inorder'} {tuning.query_tiles} tiles")


def measure(problem, sel, tuning, key_order, reps, kernel, base):
    """One kernel configuration on one selection: a result row (times, efficiency,
    waste, correctness) plus its Timing records."""
    qn, kn, vn, clustering, scale = problem
    layout_t, lay = time_jax(functools.partial(pallas_layout, tuning=tuning,
                                               key_order=key_order),
                             qn, kn, vn, clustering, sel, reps=3, back_to_back=reps)
    kernel_t, (o_slots, lse_slots) = time_jax(
        functools.partial(kernel, scale=scale, config=tuning), lay.q, lay.k, lay.v, lay.work,
        reps=3, back_to_back=reps)
    gather_t, (out, _) = time_jax(sf.gather_rows, o_slots, lse_slots, lay.work, lay.q_order,
                                  reps=3, back_to_back=reps)
    # The kernel's correctness signal over the rows of real queries only.
    kernel_t = dataclasses.replace(kernel_t, outputs=summarize(out))
    computed, real = wl.tile_rows(lay.work, tuning)
    kernel_ms = kernel_t.median_ms
    layout_ms = layout_t.median_ms + gather_t.median_ms
    density, dense_ms = base["density"], base["dense_ms"]
    all_pairs = float(qn.shape[0]) * qn.shape[1] * kn.shape[1]
    used_density = float(jnp.sum(real)) / all_pairs
    row = dict(base, block_kv=tuning.block_kv, box_rows=tuning.box_rows,
               stages=tuning.max_concurrent_steps, split_tails=tuning.split_tails,
               heavy_first=tuning.heavy_first, key_order=key_order,
               query_tiles=tuning.query_tiles, kernel_ms=kernel_ms,
               layout_ms=layout_ms, efficiency=density * dense_ms / kernel_ms,
               efficiency_with_layout=density * dense_ms / (kernel_ms + layout_ms),
               computed_density=float(jnp.sum(computed)) / all_pairs,
               used_density=used_density,
               efficiency_per_used_pair=used_density * dense_ms / kernel_ms,
               wasted_pair_fraction=1.0 - float(jnp.sum(real) / jnp.sum(computed)),
               nonfinite=kernel_t.outputs["nonfinite"],
               timings=dict(kernel=kernel_t.as_json(), layout=layout_t.as_json(),
                            gather=gather_t.as_json()))
    return row, lay


def time_ablations(problem, lay, tuning, ablations, reps, row, log):
    """Rows of the kernel variants on the layout `lay` (GPU only)."""
    _, _, _, _, scale = problem
    rows = []
    for spec in ablations:
        run = sf.build_kernel(ablation_pieces(spec))
        ab = dict(shape=row["shape"], ablation=spec, right=ablation_is_right(spec),
                  key_order=row["key_order"], selection=row["selection"],
                  target=row["target"], density=row["density"],
                  shipped_kernel_ms=row["kernel_ms"])
        try:
            t, _ = time_jax(functools.partial(run, scale=scale, config=tuning), lay.q, lay.k,
                            lay.v, lay.work, reps=3, back_to_back=reps)
        except Exception as e:  # a variant that does not fit this tuning
            ab["error"] = str(e).splitlines()[0][:200]
            log(f"ablation {spec}: failed: {ab['error']}")
        else:
            ab.update(kernel_ms=t.median_ms, timing=t.as_json())
            log(f"ablation {spec}: kernel {t.median_ms:.3f} ms (shipped {row['kernel_ms']:.3f})")
        rows.append(ab)
    return rows


def bench_shape(name, s, h, qc, kc, targets, tunings, reps, kmeans_iters, min_clusters=0,
                ablations=(), key_orders=("co_selection",), dry_run=False,
                query_tiles=("clusters",)):
    """Rows of one shape: targets is a list of (selection mode, value); every tuning runs
    with each of `query_tiles` (ablations with the first)."""
    log = lambda msg: print(f"[{name}] {msg}", flush=True)
    d = 128
    q, k, v = structured_qkv(jax.random.PRNGKey(0), s, h, d)
    impl = None if dry_run else "cudnn"
    dense_t, _ = time_jax(functools.partial(jax.nn.dot_product_attention, implementation=impl),
                          q, k, v, reps=3, back_to_back=max(3, reps // 2))
    dense_ms = dense_t.median_ms
    log(f"{'XLA' if dry_run else 'cuDNN'} dense {dense_ms:.3f} ms")
    rows = [dict(shape=name, dense=True, dense_ms=dense_ms, timing=dense_t.as_json())]
    qn, kn, vn, clustering = clustered(q, k, v, qc, kc, kmeans_iters)
    problem = (qn, kn, vn, clustering, d ** -0.5)
    kernel = sf.sparse_flash_attention_reference if dry_run else sf.sparse_flash_attention
    qk, kk = clustering.q, clustering.k
    for mode, target in targets:
        sel = jax.jit(SELECTIONS[mode], static_argnums=(3, 4))(
            qk.centroids, kk.centroids, kk.sizes, target, min_clusters)
        density = float(jnp.mean(block_density(sel.selected, qk.sizes, kk.sizes)))
        kept = float(jnp.mean(jnp.sum(sel.selected, axis=-1)))
        base = dict(shape=name, S=s, H=h, QC=qc, KC=kc,
                    kernel="pallas_reference" if dry_run else "pallas", selection=mode,
                    target=target, density=density, kept_clusters=kept,
                    min_clusters=min_clusters, dense_ms=dense_ms)
        tiled = [dataclasses.replace(t, query_tiles=m) for t in tunings for m in query_tiles]
        for tuning, key_order in itertools.product(tiled, key_orders):
            for tun in _cta_orders(tuning, mode):
                row, lay = measure(problem, sel, tun, key_order, reps, kernel, base)
                rows.append(row)
                log(f"{_describe(tun)} keys by {key_order}, {mode} {target}: density "
                    f"{density:.3f}: kernel {row['kernel_ms']:.3f} ms, layout "
                    f"{row['layout_ms']:.3f} ms, efficiency {row['efficiency']:.3f}, computed "
                    f"{row['computed_density']:.3f}, used {row['used_density']:.3f}, per used "
                    f"pair {row['efficiency_per_used_pair']:.3f}, wasted "
                    f"pairs {row['wasted_pair_fraction']:.3f}, key clusters kept {kept:.0f} "
                    f"(floor {min_clusters}), non-finite outputs {row['nonfinite']}")
                if tun is tuning and tun.query_tiles == query_tiles[0]:
                    rows += time_ablations(problem, lay, tun, ablations, reps, row, log)
    return rows


def kernel_rows(rows):
    return [r for r in rows if "kernel_ms" in r and "ablation" not in r]


def table_markdown(rows) -> str:
    lines = ["| shape | block_kv / box / stages / split | CTA order | key order | query tiles "
             "| selection | density | computed | used | kernel ms | layout ms | dense ms "
             "| efficiency | per used pair | with layout | wasted pairs | non-finite |",
             "|" + "---|" * 17]
    fmt = lambda r, key: format(r[key], ".3f") if key in r else ""
    for r in kernel_rows(rows):
        lines.append(
            f"| {r['shape']} | {r['block_kv']} / {r['box_rows']} / {r['stages']} / "
            f"{'yes' if r.get('split_tails', True) else 'no'} "
            f"| {'heaviest first' if r.get('heavy_first', False) else 'cluster order'} "
            f"| {r.get('key_order', 'label (padded)')} | {r.get('query_tiles', 'clusters')} "
            f"| {r.get('selection', 'density')} {r.get('target', r.get('target_density'))} "
            f"| {r['density']:.3f} | {fmt(r, 'computed_density')} | {fmt(r, 'used_density')} "
            f"| {r['kernel_ms']:.2f} | {r['layout_ms']:.2f} "
            f"| {r['dense_ms']:.2f} | {r['efficiency']:.3f} "
            f"| {fmt(r, 'efficiency_per_used_pair')} | {r['efficiency_with_layout']:.3f} "
            f"| {r['wasted_pair_fraction']:.3f} | {r.get('nonfinite', '')} |")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    ident = lambda r: (r["shape"], r["block_kv"], r["box_rows"], r["stages"],
                       r.get("split_tails", True), r.get("key_order", "label (padded)"),
                       r.get("heavy_first", False), r.get("selection", "density"),
                       r.get("query_tiles", "clusters"))
    rows = kernel_rows(rows)
    for key in sorted(set(map(ident, rows))):
        pts = sorted((r["density"], r["efficiency"]) for r in rows if ident(r) == key)
        ax.plot(*zip(*pts), marker="o", label=f"S,H={key[0]} kv{key[1]} box{key[2]} "
                f"st{key[3]}{'' if key[4] else ' nosplit'}{'' if key[6] else ' inorder'} "
                f"{key[5]} {key[7]}{' spanning' if key[8] == 'spanning' else ''}")
    ax.axhline(0.9, color="gray", ls="--", lw=1, label="target 0.9")
    ax.set_xlabel("density (fraction of query-key pairs computed)")
    ax.set_ylabel("efficiency = density x dense / sparse")
    ax.set_ylim(0, 1.1)
    ax.legend(fontsize=7)
    ax.set_title("SVG2 sparse kernel vs cuDNN dense (H200, bf16, D=128)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_tunings(spec: str) -> list[SparseTuningConfig]:
    """"block_kv:box_rows:stages[:nosplit][:inorder],..." -> SparseTuningConfigs."""
    tunings = []
    for item in spec.split(","):
        kv, b, st, *flags = item.split(":")
        unknown = set(flags) - {"nosplit", "inorder"}
        if unknown:
            raise ValueError(f"--tunings {item!r}: unknown flag(s) {sorted(unknown)}")
        tunings.append(SparseTuningConfig(block_kv=int(kv), box_rows=int(b),
                                          max_concurrent_steps=int(st),
                                          split_tails="nosplit" not in flags,
                                          heavy_first="inorder" not in flags))
    return tunings


def _floats(spec: str) -> list[float]:
    return [float(x) for x in spec.split(",") if x.strip()]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=None,
                    help=f"comma-separated, from {list(SHAPES)} (default: the two Wan shapes; "
                         f"tiny with --dry-run)")
    ap.add_argument("--densities", default=",".join(map(str, DENSITIES)),
                    help="fixed-budget selections (empty: none)")
    ap.add_argument("--top-ps", default=",".join(map(str, TOP_PS)),
                    help="SVG2 top-p selections, each with both CTA orders (empty: none)")
    ap.add_argument("--tunings", default="192:32:2",
                    help="comma-separated block_kv:box_rows:stages[:nosplit][:inorder] kernel "
                         "configurations (nosplit: split_tails=False; inorder: "
                         "heavy_first=False)")
    ap.add_argument("--reps", type=int, default=10, help="back-to-back launches per round")
    ap.add_argument("--kmeans-iters", type=int, default=20)
    ap.add_argument("--min-clusters", default="0",
                    help="comma-separated floors on kept key clusters per query cluster "
                         "(SVG2's default is 10%% of KC)")
    ap.add_argument("--key-orders", default="co_selection",
                    help="comma-separated key cluster layouts: co_selection (the library's), "
                         "label")
    ap.add_argument("--query-tiles", default="clusters",
                    help=f"comma-separated query tilings each tuning runs with, from "
                         f"{list(wl.QUERY_TILES)} (spanning: CTAs over consecutive rows, "
                         f"their key lists the union of their clusters' selections)")
    ap.add_argument("--ablations", default="",
                    help="also time kernel variants, comma-separated, each a \"+\"-joined set "
                         f"of {list(ABLATIONS)} (e.g. box_copies+always_mask)")
    ap.add_argument("--dry-run", action="store_true",
                    help="any device: the kernel's pure-JAX twin and XLA dense attention at "
                         "the tiny shape (checks the script, measures nothing of the kernel)")
    ap.add_argument("--json", help="raw results (required unless --plot-from)")
    ap.add_argument("--png")
    ap.add_argument("--plot-from", help="only redraw the PNG from a --json file")
    args = ap.parse_args(argv)
    if args.plot_from:
        if not args.png:
            ap.error("--plot-from needs --png")
        with open(args.plot_from) as f:
            plot(json.load(f)["rows"], args.png)
        return 0
    if not args.json:
        ap.error("--json is required: every printed figure is also written there")
    ablations = [a for a in args.ablations.split(",") if a]
    for spec in ablations:  # unknown or conflicting flags fail before any work
        try:
            ablation_pieces(spec)
        except ValueError as e:
            ap.error(f"--ablations: {e}")
    if args.dry_run and ablations:
        ap.error("--ablations run the kernel itself (a Hopper GPU); not with --dry-run")
    if not args.dry_run and jax.default_backend() != "gpu":
        print("bench_kernel needs a Hopper GPU (the kernel is Mosaic GPU / sm_90); "
              "--dry-run checks the script on any device", file=sys.stderr)
        return 2
    shapes = (args.shapes or ("tiny" if args.dry_run else "75600x40,32760x12")).split(",")
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        ap.error(f"unknown shape(s) {unknown}; known: {list(SHAPES)}")
    key_orders = args.key_orders.split(",")
    if set(key_orders) - set(KEY_ORDERS):
        ap.error(f"--key-orders {args.key_orders!r}: known orders are {list(KEY_ORDERS)}")
    query_tiles = args.query_tiles.split(",")
    if not query_tiles or set(query_tiles) - set(wl.QUERY_TILES):
        ap.error(f"--query-tiles {args.query_tiles!r}: known tilings are {list(wl.QUERY_TILES)}")
    tunings = parse_tunings(args.tunings)
    targets = ([("density", x) for x in _floats(args.densities)]
               + [("top_p", x) for x in _floats(args.top_ps)])
    meta = dict(device=jax.devices()[0].device_kind, jax=jax.__version__,
                date=time.strftime("%Y-%m-%d", time.gmtime()), argv=sys.argv[1:] if argv is None
                else list(argv), dry_run=args.dry_run)
    rows = []
    for name in shapes:
        for floor in args.min_clusters.split(","):
            rows += bench_shape(name, *SHAPES[name], targets, tunings, args.reps,
                                args.kmeans_iters, int(floor), ablations,
                                key_orders, dry_run=args.dry_run,
                                query_tiles=tuple(query_tiles))
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
    print(table_markdown(rows))
    if args.png:
        try:
            plot(rows, args.png)
        except ImportError as e:
            print(f"no plot ({e}); redraw later with --plot-from", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
