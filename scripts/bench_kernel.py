"""The Hopper sparse flash-attention kernel against cuDNN dense attention (GPU benchmark).

For each shape (S, H, QC, KC) it builds structured bf16 q, k, v [1, S, H, 128] (tokens
around shared random centres with skewed popularity, so clusters are ragged and some
key clusters are much more relevant than others), clusters them with SVG2's real
k-means (cold, `--kmeans-iters`), and for each target density selects, per query
cluster, the key clusters of largest centroid mass until that fraction of the keys is
kept (a fixed-density control: top-p at trained-model densities needs a trained
model). Then it times:
  kernel    the sparse kernel alone on its layouts (`svg2_jax.attention.pallas_layout`),
  layout    key cluster order + work-list build + gathers of q, k, v into the layouts +
            output back to token order,
  dense     cuDNN (jax.nn.dot_product_attention(implementation="cudnn")),
and reports efficiency = density x dense / kernel (the issue's figure of merit; 1.0 =
the kernel computes the selected pairs as fast as cuDNN computes all pairs) and the
wasted fraction of computed (query row, key row) pairs (Q tails of 64-row tiles, key
rows of partial box_rows-row boxes outside their runs, empty box slots).

Times are medians of `--reps` back-to-back launches (dispatch overlapped), each run
timed as a whole and divided.

Usage (GPU machine):
  python -m scripts.bench_kernel --json out.json --png out.png
  python -m scripts.bench_kernel --shapes 32760x12 --densities 0.1,0.3 --tunings 128:16:2,128:32:3 \
      --key-orders co_selection,label
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from einops import rearrange

SHAPES = {"75600x40": (75600, 40, 300, 1000), "32760x12": (32760, 12, 200, 1000)}
DENSITIES = (0.05, 0.1, 0.13, 0.2, 0.3, 0.5)


def timeit(fn, *args, reps=20, warmup=2, rounds=3):
    """Median over `rounds` of (wall time of `reps` back-to-back calls) / reps, in ms."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    res = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        outs = [fn(*args) for _ in range(reps)]
        jax.block_until_ready(outs)
        res.append((time.perf_counter() - t0) * 1e3 / reps)
    return statistics.median(res)


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


def bench_shape(name, s, h, qc, kc, densities, tunings, reps, kmeans_iters, min_clusters=0,
                ablations=(), key_orders=("co_selection",)):
    from pallas_kernels import sparse_flash_mgpu as sf
    from pallas_kernels import sparse_worklist as wl
    from svg2_jax import SVG2Config, svg2_kmeans
    from svg2_jax.attention import pallas_layout
    from svg2_jax.kmeans import KMeansResult
    from svg2_jax.selection import block_density, select_by_density

    d = 128
    q, k, v = structured_qkv(jax.random.PRNGKey(0), s, h, d)
    scale = d ** -0.5
    dense = jax.jit(functools.partial(jax.nn.dot_product_attention, implementation="cudnn"))
    dense_ms = timeit(dense, q, k, v, reps=max(3, reps // 2))
    print(f"[{name}] cuDNN dense {dense_ms:.3f} ms", flush=True)

    cfg = SVG2Config(num_q_clusters=qc, num_k_clusters=kc, kmeans_iters_cold=kmeans_iters,
                     kmeans_tol=0.0)
    cache = svg2_kmeans(q, k, None, cfg)
    qn, kn, vn = (rearrange(x, "b s h d -> (b h) s d") for x in (q, k, v))

    @jax.jit
    def labels_and_sizes(x, centroids):
        from svg2_jax.kmeans import assign_xla
        lab = assign_xla(x, centroids, chunk=8192)
        sizes = jax.vmap(lambda l: jnp.bincount(l, length=centroids.shape[1]))(lab)
        return lab, sizes.astype(jnp.int32)

    qcen = rearrange(cache.q_centroids, "b h c d -> (b h) c d")
    kcen = rearrange(cache.k_centroids, "b h c d -> (b h) c d")
    q_lab, q_sizes = labels_and_sizes(qn, qcen)
    k_lab, k_sizes = labels_and_sizes(kn, kcen)
    zero = jnp.zeros((), jnp.int32)
    qres = KMeansResult(q_lab, qcen, q_sizes, zero, zero.astype(jnp.float32))
    kres = KMeansResult(k_lab, kcen, k_sizes, zero, zero.astype(jnp.float32))
    rows = []
    for tuning, key_order in itertools.product(tunings, key_orders):
        layout = jax.jit(functools.partial(pallas_layout, tuning=tuning, key_order=key_order))
        kernel = jax.jit(functools.partial(sf.sparse_flash_attention, scale=scale, config=tuning))
        back = jax.jit(sf.gather_rows)
        for target in densities:
            sel = jax.jit(select_by_density, static_argnums=(3, 4))(
                qcen, kcen, k_sizes, target, min_clusters)
            density = float(jnp.mean(block_density(sel, q_sizes, k_sizes)))
            args = (qn, kn, vn, qres, kres, sel)
            work, qp, kp, vp, q_order = layout(*args)
            kernel_ms = timeit(kernel, qp, kp, vp, work, reps=reps)
            o_slots, lse_slots = kernel(qp, kp, vp, work)
            layout_ms = timeit(layout, *args, reps=reps) + timeit(
                back, o_slots, lse_slots, work, q_order, reps=reps)
            for ab in ablations:  # kernel variants for timing (some give wrong results)
                fn = jax.jit(functools.partial(sf._sparse_flash, scale=scale, config=tuning,
                                               ablation=ab))
                try:
                    ab_ms = timeit(fn, qp, kp, vp, work, reps=reps)
                except Exception as e:  # a variant that does not fit this tuning
                    print(f"[{name}] ablation {ab}: failed: {str(e).splitlines()[0][:200]}",
                          flush=True)
                    continue
                print(f"[{name}] ablation {ab}: kernel {ab_ms:.3f} ms (shipped {kernel_ms:.3f})",
                      flush=True)
                rows.append(dict(shape=name, ablation=ab, key_order=key_order, density=density,
                                 kernel_ms=ab_ms, shipped_kernel_ms=kernel_ms))
            computed, real = wl.tile_rows(work, tuning)
            waste = 1.0 - float(jnp.sum(real) / jnp.sum(computed))
            kept = float(jnp.mean(jnp.sum(sel, axis=-1)))
            row = dict(shape=name, S=s, H=h, QC=qc, KC=kc, block_kv=tuning.block_kv,
                       min_clusters=min_clusters, kept_clusters=kept,
                       box_rows=tuning.box_rows, stages=tuning.max_concurrent_steps,
                       key_order=key_order,
                       split_tails=tuning.split_tails, heavy_first=tuning.heavy_first,
                       target_density=target, density=density, kernel_ms=kernel_ms,
                       layout_ms=layout_ms, dense_ms=dense_ms,
                       efficiency=density * dense_ms / kernel_ms,
                       efficiency_with_layout=density * dense_ms / (kernel_ms + layout_ms),
                       wasted_pair_fraction=waste,
                       nonfinite=int(jnp.sum(~jnp.isfinite(o_slots.astype(jnp.float32)))))
            rows.append(row)
            print(f"[{name}] kv{tuning.block_kv} box{tuning.box_rows} st{tuning.max_concurrent_steps}"
                  f"{'' if tuning.split_tails else ' nosplit'}"
                  f"{'' if tuning.heavy_first else ' inorder'} keys by {key_order}"
                  f" density {density:.3f}: kernel {kernel_ms:.3f} ms, layout {layout_ms:.3f} ms,"
                  f" efficiency {row['efficiency']:.3f}, wasted pairs {waste:.3f},"
                  f" key clusters kept {kept:.0f} (floor {min_clusters})", flush=True)
    return rows


def table_markdown(rows) -> str:
    rows = [r for r in rows if "ablation" not in r]  # those are printed as they run
    lines = ["| shape | block_kv / box / stages / split | key order | density | kernel ms | layout ms | cuDNN dense ms "
             "| efficiency | with layout | wasted pairs |", "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['block_kv']} / {r['box_rows']} / {r['stages']} / "
            f"{'yes' if r.get('split_tails', True) else 'no'}"
            f"{'' if r.get('heavy_first', False) else ', CTAs in cluster order'} "
            f"| {r.get('key_order', 'label (padded)')} | {r['density']:.3f} "
            f"| {r['kernel_ms']:.2f} | {r['layout_ms']:.2f} | {r['dense_ms']:.2f} "
            f"| {r['efficiency']:.3f} | {r['efficiency_with_layout']:.3f} "
            f"| {r['wasted_pair_fraction']:.3f} |")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    ident = lambda r: (r["shape"], r["block_kv"], r["box_rows"], r["stages"],
                       r.get("split_tails", True), r.get("key_order", "label (padded)"),
                       r.get("heavy_first", False))
    rows = [r for r in rows if "ablation" not in r]
    for key in sorted(set(map(ident, rows))):
        pts = sorted((r["density"], r["efficiency"]) for r in rows if ident(r) == key)
        ax.plot(*zip(*pts), marker="o", label=f"S,H={key[0]} kv{key[1]} box{key[2]} "
                f"st{key[3]}{'' if key[4] else ' nosplit'}{'' if key[6] else ' inorder'} {key[5]}")
    ax.axhline(0.9, color="gray", ls="--", lw=1, label="target 0.9")
    ax.set_xlabel("density (fraction of query-key pairs computed)")
    ax.set_ylabel("efficiency = density x dense / sparse")
    ax.set_ylim(0, 1.1)
    ax.legend(fontsize=7)
    ax.set_title("SVG2 sparse kernel vs cuDNN dense (H200, bf16, D=128)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--densities", default=",".join(map(str, DENSITIES)))
    ap.add_argument("--tunings", default="192:32:2",
                    help="comma-separated block_kv:box_rows:stages[:nosplit][:inorder] kernel "
                         "configurations (nosplit: split_tails=False; inorder: "
                         "heavy_first=False)")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--kmeans-iters", type=int, default=20)
    ap.add_argument("--min-clusters", default="0",
                    help="comma-separated floors on kept key clusters per query cluster "
                         "(SVG2's default is 10%% of KC)")
    ap.add_argument("--key-orders", default="co_selection",
                    help="comma-separated key cluster layouts: co_selection (the library's), "
                         "label")
    ap.add_argument("--ablations", default="",
                    help="also time kernel variants, comma-separated, each a \"+\"-joined set of "
                         "sparse_flash_mgpu.ABLATIONS (e.g. box_copies+always_mask)")
    ap.add_argument("--json")
    ap.add_argument("--png")
    ap.add_argument("--plot-from", help="only redraw the PNG from a --json file")
    args = ap.parse_args(argv)
    if args.plot_from:
        plot(json.load(open(args.plot_from))["rows"], args.png)
        return 0
    if jax.default_backend() != "gpu":
        print("bench_kernel needs a Hopper GPU (the kernel is Mosaic GPU / sm_90)", file=sys.stderr)
        return 2
    from pallas_kernels.sparse_worklist import SparseTuningConfig
    tunings = []
    for spec in args.tunings.split(","):
        kv, b, st, *flags = spec.split(":")
        tunings.append(SparseTuningConfig(block_kv=int(kv), box_rows=int(b),
                                          max_concurrent_steps=int(st),
                                          split_tails="nosplit" not in flags,
                                          heavy_first="inorder" not in flags))
    densities = [float(x) for x in args.densities.split(",")]
    rows = []
    for name in args.shapes.split(","):
        for floor in args.min_clusters.split(","):
            rows += bench_shape(name, *SHAPES[name], densities, tunings, args.reps,
                                args.kmeans_iters, int(floor),
                                [a for a in args.ablations.split(",") if a],
                                args.key_orders.split(","))
    print(table_markdown(rows))
    meta = dict(device=jax.devices()[0].device_kind, jax=jax.__version__,
                date=time.strftime("%Y-%m-%d", time.gmtime()), argv=sys.argv[1:])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
    if args.png:
        try:
            plot(rows, args.png)
        except ImportError as e:
            print(f"no plot ({e}); redraw later with --plot-from", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
