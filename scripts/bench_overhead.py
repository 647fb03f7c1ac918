"""SVG2's overhead beside dense attention (GPU benchmark).

Times, for bf16 q, k, v [1, S, H, 128] on one GPU (random inputs):
  dense attention (cuDNN through jax.nn.dot_product_attention),
  k-means on Q (QC clusters) and K (KC clusters): cold (50 iterations, no early stop)
  and warm (2 iterations), for each k-means implementation (XLA; fused Pallas kernels),
  also one assignment + update step alone,
  and the same cold, warm and one-step rows for the peer, the SVG authors' Triton k-means
  (the `flash-kmeans` package, `scripts/flash_kmeans_peer.py`: same tokens, same initial
  centroids, timed with torch.cuda.synchronize; skipped, with the reason in the JSON
  under "flash_kmeans_skipped", where torch, triton, the package or a CUDA device is
  missing),
  the top-p selection, and the permutation (argsorts, gathers of q, k, v, inverse).
Two rows put the pieces together, each compiled as ONE function that returns every
output it builds (`scripts.timing.time_jax`: XLA cannot drop a gather whose result is
not used, because every result is returned, blocked on and summarised in the JSON):
  "warm overhead, one jit": warm k-means on Q and K, top-p selection, both argsorts,
    the gathers of q, k, v into cluster order, the inverse permutation (applied to the
    permuted q, a stand-in for the attention output of the same shape);
  "around the kernel" (Hopper kernel path, fixed density): warm k-means on Q and K, the
    fixed-density selection, `pallas_layout` (key order, work list, gathers of q into
    the padded layout and of k, v into the key layout) and the output gather
    (`gather_rows`) of a kernel output taken as an input, i.e. everything the
    `pallas` backend runs except the kernel itself.
Each row is the median of --reps calls, each call synchronised (block_until_ready).
Pieces timed alone include a dispatch gap each (~0.05-0.1 ms), so they add up to more.
Every printed figure is in the JSON, every row with its percentage of the dense row of
its shape: by default one file per shape, docs/bench/overhead_vs_dense_<resolution>.json
(`overhead_vs_dense_720p.json`, `overhead_vs_dense_480p.json`, ...), each written when its
shape is done; `--json PATH` puts every shape in PATH instead.
The pure-JAX backend's whole call (exact, O(S^2) work: ~1.5 s per call at 720p) is timed
as a reference row unless `--no-jax-reference`; the random inputs' top-p density is
computed from the timed top-p selection either way.
`--compensation` adds what the error-aware rule (`SVG2Config.error_aware()`: error-aware
selection and compensation of the left-out key clusters, issue #13) does beyond the
reference rule (`SVG2Config()`), from
the same warm clusters (`compensation_rows`): the key cluster statistics, the
error-aware selection at the preset's tolerance and at the fixed density, the
compensation pass merged into a sparse (out, lse) taken as an input, all of them in one
jit, and, on a Hopper GPU, the whole warm call with the pallas backend under the
error-aware rule with compensation at the fixed density (beside the reference rule's
row at the same density).

Usage (GPU machine):
  python -m scripts.bench_overhead
  python -m scripts.bench_overhead --shapes 75600x40 --impls pallas --no-jax-reference
  python -m scripts.bench_overhead --shapes 75600x40 --impls xla,pallas --json out.json
  python -m scripts.bench_overhead --shapes 75600x40 --impls pallas --no-jax-reference \
      --compensation --json docs/bench/overhead_compensation_720p.json
  python -m scripts.bench_overhead --tiny --json /tmp/overhead.json   # CPU smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from pallas_kernels.sparse_flash_mgpu import gather_rows
from scripts import flash_kmeans_peer
from scripts.raw_data import add_run_args, default_path, run_meta, write_json
from scripts.timing import time_jax
from svg2_jax import SVG2Cache, SVG2Config, svg2_attention
from svg2_jax import kmeans as km
from svg2_jax.backends import is_hopper
from svg2_jax.clustering import Clustering
from svg2_jax.compensation import compensate, key_cluster_stats
from svg2_jax.layout import pallas_layout
from svg2_jax.permute import cluster_order, permute, unpermute
from svg2_jax.selection import (block_density, select_by_density, select_by_error,
                                select_clusters)

# (S, H, QC, KC): Wan 14B 720p and Wan 1.3B 480p (the reference uses QC=200 at 480p).
SHAPES = {"75600x40": (75600, 40, 300, 1000), "32760x12": (32760, 12, 200, 1000),
          "32760x12qc300": (32760, 12, 300, 1000)}
TINY_SHAPES = {"tiny": (1024, 2, 8, 32)}  # CPU smoke run of every row but the kernel's
# the default JSON file of each shape: overhead_vs_dense_<resolution>.json
RESOLUTIONS = {"75600x40": "720p", "32760x12": "480p", "32760x12qc300": "480p_qc300",
               "tiny": "tiny"}
TOP_P, MIN_KC_RATIO, WARM_ITERS, COLD_ITERS, TOL = 0.9, 0.1, 2, 50, 1e-4
DENSITY = 0.13  # the fixed-density control of the kernel path (random inputs: top-p ~0.9)


def warm_overhead(qn, kn, vn, q_centroids, k_centroids, *, impl, min_clusters):
    """Everything SVG2 adds around a (permuted-layout) attention kernel, from warm
    centroids: qn, kn, vn [N, S, D] -> every array it builds."""
    rq = km.kmeans(qn, q_centroids, WARM_ITERS, TOL, impl=impl)
    rk = km.kmeans(kn, k_centroids, WARM_ITERS, TOL, impl=impl)
    selected = select_clusters(rq.centroids, rk.centroids, rk.sizes, TOP_P, min_clusters)
    qo, ko = cluster_order(rq.labels), cluster_order(rk.labels)
    qp, kp, vp = permute(qn, qo), permute(kn, ko), permute(vn, ko)
    return dict(q_kmeans=rq, k_kmeans=rk, selected=selected, q_order=qo, k_order=ko,
                q_perm=qp, k_perm=kp, v_perm=vp, out=unpermute(qp, qo))


def around_kernel(q, k, v, cache: SVG2Cache, out_slots, lse_slots, *, impl, tuning,
                  min_clusters, density=DENSITY):
    """The `pallas` backend's warm call without the kernel: q, k, v [1, S, H, D], the
    kernel's output slots [C * rows_per_cta, D] and lse [C * rows_per_cta] as inputs ->
    every array built (k-means results, selection, work list, the three layouts, the
    query order, the output [1, S, H, D] and lse in token order)."""
    qn, kn, vn = (rearrange(x, "b s h d -> (b h) s d") for x in (q, k, v))
    rq = km.kmeans(qn, rearrange(cache.q_centroids, "b h c d -> (b h) c d"), WARM_ITERS,
                   TOL, impl=impl)
    rk = km.kmeans(kn, rearrange(cache.k_centroids, "b h c d -> (b h) c d"), WARM_ITERS,
                   TOL, impl=impl)
    selected = select_by_density(rq.centroids, rk.centroids, rk.sizes, density, min_clusters)
    work, qp, kp, vp, q_order = pallas_layout(qn, kn, vn, Clustering(rq, rk), selected, tuning)
    o, lse = gather_rows(out_slots, lse_slots, work, q_order)
    return dict(q_kmeans=rq, k_kmeans=rk, selected=selected, work=work, q_layout=qp,
                k_layout=kp, v_layout=vp, q_order=q_order,
                out=rearrange(o, "(b h) s d -> b s h d", b=q.shape[0]), lse=lse)


def compensation_extra(qn, kn, vn, rq, rk, out, lse, *, tolerance=None, density=None,
                       q_tile=SVG2Config().q_tile):
    """What the error-aware rule adds beyond the reference's selection, on the warm clusters
    rq, rk of qn, kn, vn [N, S, D]: the key cluster statistics, the error-aware selection
    (at `tolerance`, or the fixed `density`) and the compensation merged into the sparse
    part (out [N, S, D], lse [N, S], inputs here) -> every array it builds."""
    scale = qn.shape[-1] ** -0.5
    stats = key_cluster_stats(kn, vn, rk)
    selection = select_by_error(qn, Clustering(rq, rk), stats, scale, q_tile=q_tile,
                                error_tolerance=tolerance, target_density=density)
    o, l, comp_lse = compensate(qn, kn, vn, rq.labels, rk.labels, selection.selected, stats,
                                scale, out, lse, q_tile=q_tile)
    return dict(stats=stats, selection=selection, out=o, lse=l, comp_lse=comp_lse)


def compensation_rows(timed, name, q, k, v, rq, rk, cache, *, impl, figures):
    """The rows of `--compensation` (module docstring), from the warm clusters rq, rk of
    q, k, v [1, S, H, D] (cache: their centroids); figures get the error-aware rule's
    densities on these inputs."""
    qn, kn, vn = (rearrange(x, "b s h d -> (b h) s d") for x in (q, k, v))
    cfg = SVG2Config.error_aware(num_q_clusters=rq.sizes.shape[-1],
                                 num_k_clusters=rk.sizes.shape[-1])
    scale = qn.shape[-1] ** -0.5
    ko, kl = jax.random.split(jax.random.PRNGKey(4))
    out = jax.random.normal(ko, qn.shape, qn.dtype)       # the sparse part's stand-ins
    lse = jax.random.normal(kl, qn.shape[:2], jnp.float32) + 8.0
    _, stats = timed("key cluster stats (sums of K and V, deviations)", key_cluster_stats,
                     kn, vn, rk)
    clustering = Clustering(rq, rk)
    selected = {}
    for key, label, rule in (
            ("tolerance", f"tolerance {cfg.error_tolerance}",
             dict(error_tolerance=cfg.error_tolerance)),
            ("fixed_density", f"fixed density {DENSITY}", dict(target_density=DENSITY))):
        _, sel = timed(f"error-aware selection ({label})", functools.partial(
            select_by_error, scale=scale, q_tile=cfg.q_tile, **rule), qn, clustering, stats)
        selected[key] = sel.selected
        figures[f"random_input_density_error_aware_{key}"] = float(jnp.mean(block_density(
            sel.selected, rq.sizes, rk.sizes)))

    def compensation_pass(qn, kn, vn, q_labels, k_labels, selected, stats, out, lse):
        return compensate(qn, kn, vn, q_labels, k_labels, selected, stats, scale, out, lse,
                          q_tile=cfg.q_tile)

    timed(f"compensation pass + lse merge (fixed density {DENSITY} selection)",
          compensation_pass, qn, kn, vn, rq.labels, rk.labels, selected["fixed_density"],
          stats, out, lse)
    ms, _ = timed(f"**stats + error-aware selection + compensation, one jit (density "
                  f"{DENSITY})**", functools.partial(compensation_extra, density=DENSITY,
                                                     q_tile=cfg.q_tile),
                  qn, kn, vn, rq, rk, out, lse)
    figures["compensation_extra_ms"] = ms
    print(f"[{name}] stats + error-aware selection + compensation: {ms:.2f} ms; random-input "
          f"density at tolerance {cfg.error_tolerance}: "
          f"{figures['random_input_density_error_aware_tolerance']:.3f}", flush=True)
    if is_hopper():
        cfg_e = dataclasses.replace(cfg, backend="pallas", kmeans_impl=impl,
                                    target_density=DENSITY)
        timed(f"svg2_attention warm call, backend=pallas, error-aware + compensation, "
              f"density {DENSITY} [{impl}]",
              lambda q, k, v, c: svg2_attention(q, k, v, c, cfg_e), q, k, v, cache)


def kernel_slots(q, k, v, cache, *, impl, tuning, min_clusters):
    """Random stand-ins for the kernel's output slots, of the shapes its work list gives."""
    shapes = jax.eval_shape(
        lambda: around_kernel(q, k, v, cache, jnp.zeros((1, q.shape[-1]), q.dtype),
                              jnp.zeros((1,), jnp.float32), impl=impl, tuning=tuning,
                              min_clusters=min_clusters))
    slots = shapes["work"].cta.shape[0] * tuning.rows_per_cta
    ko, kl = jax.random.split(jax.random.PRNGKey(3))
    return (jax.random.normal(ko, (slots, q.shape[-1]), q.dtype),
            jax.random.normal(kl, (slots,), jnp.float32))


def json_name(shape: str) -> str:
    """The default JSON file of one shape, named by its resolution."""
    return f"overhead_vs_dense_{RESOLUTIONS[shape]}.json"


def bench_shape(name, s, h, qc, kc, impls, reps, d=128, jax_reference=True,
                compensation=False):
    """Every row of one shape: {label: Timing JSON}, plus the other printed figures
    (compensation: also `compensation_rows`)."""
    gpu = jax.default_backend() == "gpu"
    kq, kk, kv = jax.random.split(jax.random.PRNGKey(0), 3)
    q, k, v = (jax.random.normal(kx, (1, s, h, d), jnp.bfloat16) for kx in (kq, kk, kv))
    qn, kn, vn = (rearrange(x, "b s h d -> (b h) s d") for x in (q, k, v))
    min_clusters = int(MIN_KC_RATIO * kc)
    rows, figures = {}, {}

    def timed(label, fn, *args, reps=reps, warmup=2, **kw):
        timing, out = time_jax(fn, *args, reps=reps, warmup=warmup, **kw)
        rows[label] = timing.as_json()
        return timing.median_ms, out

    dense_label = "dense attention (cuDNN)" if gpu else "dense attention (XLA)"
    dense_ms, _ = timed(dense_label, functools.partial(
        jax.nn.dot_product_attention, implementation="cudnn" if gpu else None), q, k, v)
    figures["dense_tflops"] = 4 * s * s * d * h / dense_ms / 1e9
    print(f"[{name}] dense {dense_ms:.2f} ms ({figures['dense_tflops']:.3g} TFLOP/s)",
          flush=True)

    q_init = km.random_init(jax.random.PRNGKey(1), qn, qc)
    k_init = km.random_init(jax.random.PRNGKey(2), kn, kc)
    results = {}
    for impl in impls:
        try:
            def both(qn, kn, qi, ki, iters, impl=impl):
                return (km.kmeans(qn, qi, iters, 0.0, impl=impl),
                        km.kmeans(kn, ki, iters, 0.0, impl=impl))

            _, (res_q, res_k) = timed(f"k-means cold, {COLD_ITERS} it, Q+K [{impl}]", both,
                                      qn, kn, q_init, k_init, COLD_ITERS,
                                      static_argnums=(4,), reps=max(2, reps // 4), warmup=1)
            results[impl] = (res_q, res_k)
            # warm start from the cold result's centroids, as in a real warm step
            warm_ms, _ = timed(f"k-means warm, {WARM_ITERS} it, Q+K [{impl}]", both,
                               qn, kn, res_q.centroids, res_k.centroids, WARM_ITERS,
                               static_argnums=(4,))
            step = km.kmeans_step(impl)
            timed(f"  one step (assign+update) K [{impl}]", step, kn, res_k.centroids, kc,
                  static_argnums=(2,))
            timed(f"  one step (assign+update) Q [{impl}]", step, qn, res_q.centroids, qc,
                  static_argnums=(2,))
            print(f"[{name}] {impl}: warm {warm_ms:.2f} ms", flush=True)
        except Exception as e:  # report, keep benchmarking the rest
            print(f"[{name}] k-means impl {impl} failed: {type(e).__name__}: {e}", flush=True)
            figures[f"kmeans_{impl}_error"] = f"{type(e).__name__}: {e}"

    if not results:
        return rows, figures
    figures.update(flash_kmeans_rows(rows, name, qn, kn, q_init, k_init, results, reps,
                                     cpu_fallback=not gpu))
    res_q, res_k = next(iter(results.values()))
    for impl in results:
        if impl != "xla" and "xla" in results:
            agree = float(jnp.mean(results["xla"][1].labels == results[impl][1].labels))
            figures[f"k_label_agreement_xla_vs_{impl}"] = agree
            print(f"[{name}] K label agreement xla vs {impl} after {COLD_ITERS} cold "
                  f"iterations: {agree:.4f}")

    _, top_p_selection = timed(f"selection (top-p {TOP_P})", functools.partial(
        select_clusters, top_p=TOP_P, min_clusters=min_clusters),
        res_q.centroids, res_k.centroids, res_k.sizes)
    # what SVG2's rule keeps on random inputs (nearly everything: nothing to prune)
    figures["random_input_density_top_p"] = float(jnp.mean(block_density(
        top_p_selection.selected, res_q.sizes, res_k.sizes)))
    print(f"[{name}] random-input density at top_p {TOP_P}: "
          f"{figures['random_input_density_top_p']:.3f}", flush=True)

    def perm(qn, kn, vn, ql, kl):
        qo, ko = cluster_order(ql), cluster_order(kl)
        return qo, ko, permute(qn, qo), permute(kn, ko), permute(vn, ko)

    timed("permutation (2 argsorts + gather q, k, v)", perm, qn, kn, vn, res_q.labels,
          res_k.labels)
    timed("inverse permutation of the output", unpermute, qn, cluster_order(res_q.labels))

    for impl, (rq, rk) in results.items():
        ms, _ = timed(f"**warm overhead, one jit [{impl}]**", functools.partial(
            warm_overhead, impl=impl, min_clusters=min_clusters),
            qn, kn, vn, rq.centroids, rk.centroids)
        figures[f"warm_overhead_ms_{impl}"] = ms

    # The Hopper kernel's path at a fixed density budget: the whole warm call (on a
    # Hopper GPU), and everything around the kernel (any device: no kernel in it).
    impl = "pallas" if "pallas" in results else next(iter(results))
    rq, rk = results[impl]
    cache = SVG2Cache(rearrange(rq.centroids, "(b h) c d -> b h c d", b=1),
                      rearrange(rk.centroids, "(b h) c d -> b h c d", b=1))
    # the reference rule (no compensation), as docs/performance.md was measured
    cfg_p = SVG2Config.reference(num_q_clusters=qc, num_k_clusters=kc, backend="pallas",
                                 kmeans_impl=impl, target_density=DENSITY)
    tuning = cfg_p.kernel
    timed(f"selection (fixed density {DENSITY})", functools.partial(
        select_by_density, density=DENSITY, min_clusters=min_clusters),
        rq.centroids, rk.centroids, rk.sizes)
    if is_hopper():
        timed(f"svg2_attention warm call, backend=pallas, density {DENSITY} [{impl}]",
              lambda q, k, v, c: svg2_attention(q, k, v, c, cfg_p), q, k, v, cache)
    kw = dict(impl=impl, tuning=tuning, min_clusters=min_clusters)
    out_slots, lse_slots = kernel_slots(q, k, v, cache, **kw)
    timed(f"  around the kernel: warm k-means, selection, layout, output gather [{impl}]",
          functools.partial(around_kernel, **kw), q, k, v, cache, out_slots, lse_slots)
    if compensation:
        compensation_rows(timed, name, q, k, v, rq, rk, cache, impl=impl, figures=figures)

    # The whole call with the pure-JAX backend: exact but O(S^2) work. It shows the
    # reference path runs at this size within memory; it is not the fast path.
    if jax_reference:
        cfg = SVG2Config.reference(num_q_clusters=qc, num_k_clusters=kc, backend="jax",
                                   kmeans_impl=impls[0])
        _, (_, _, stats) = timed(
            f"svg2_attention warm call, backend=jax [{impls[0]}] (O(S^2) reference)",
            lambda q, k, v, c: svg2_attention(q, k, v, c, cfg), q, k, v, cache, reps=2,
            warmup=1)
        figures["jax_reference_density_top_p"] = float(stats.density.mean())
    return rows, figures


def flash_kmeans_rows(rows, name, qn, kn, q_init, k_init, ours, reps, *, cpu_fallback):
    """The peer's cold, warm and one-step rows, labelled as ours with the tag
    [flash-kmeans], added to `rows`; returns its figures (implementation, version,
    iteration counts, agreement of its K labels with each of ours: after one assignment
    from the same centroids, and after the cold runs from the same start), or the reason
    it was skipped or the error it raised. ours: {impl: (Q result, K result)} of our cold
    runs."""
    peer, why = flash_kmeans_peer.load(cpu_fallback)
    if peer is None:
        print(f"[{name}] flash-kmeans peer skipped: {why}", flush=True)
        return {"flash_kmeans_skipped": why}
    tag = "flash-kmeans" if peer.name == "triton" else f"flash-kmeans {peer.name}"
    # its steps start from our first cold result's centroids, rounded to bf16 as its
    # assignment needs; ours assigns from the same rounded centroids below
    res_q, res_k = next(iter(ours.values()))
    q_step, k_step = (r.centroids.astype(jnp.bfloat16) for r in (res_q, res_k))
    try:
        t = flash_kmeans_peer.time_peer(peer, qn, kn, q_init, k_init, q_step, k_step,
                                        cold_iters=COLD_ITERS, warm_iters=WARM_ITERS,
                                        reps=reps, cold_reps=max(2, reps // 4))
    except Exception as e:  # report, keep benchmarking ours
        print(f"[{name}] {tag} failed: {type(e).__name__}: {e}", flush=True)
        return {"flash_kmeans_error": f"{type(e).__name__}: {e}"}
    rows[f"k-means cold, {COLD_ITERS} it, Q+K [{tag}]"] = t["cold"].as_json()
    rows[f"k-means warm, {WARM_ITERS} it, Q+K [{tag}]"] = t["warm"].as_json()
    rows[f"  one step (assign+update) K [{tag}]"] = t["step_k"].as_json()
    rows[f"  one step (assign+update) Q [{tag}]"] = t["step_q"].as_json()
    print(f"[{name}] {tag} {peer.version}: warm {t['warm'].median_ms:.2f} ms", flush=True)
    figures = dict(flash_kmeans=dict(implementation=peer.name, version=peer.version,
                                     iterations=t["iterations"]))
    kc = k_step.shape[1]
    for impl, (_, res_k) in ours.items():
        labels = jax.jit(km.kmeans_step(impl), static_argnums=2)(
            kn, k_step.astype(jnp.float32), kc)[0]
        one = float(np.mean(np.asarray(labels) == t["step_labels_k"]))
        # same start, same iterations: differences are bf16 near-ties that compound
        cold = float(np.mean(np.asarray(res_k.labels) == t["cold_labels_k"]))
        figures[f"k_label_agreement_{impl}_vs_flash_kmeans_one_step"] = one
        figures[f"k_label_agreement_{impl}_vs_flash_kmeans_after_cold"] = cold
        print(f"[{name}] K label agreement {impl} vs {tag}: {one:.4f} after one assignment "
              f"from the same centroids, {cold:.4f} after {COLD_ITERS} cold iterations from "
              f"the same start", flush=True)
    return figures


def table(name, shape, rows) -> str:
    s, h, qc, kc = shape
    dense = next(r["median_ms"] for label, r in rows.items() if label.startswith("dense"))
    lines = [f"### {name}: S={s}, H={h}, D=128, QC={qc}, KC={kc}, bf16",
             "| step | ms | % of dense |", "|---|---|---|"]
    for label, r in rows.items():
        lines.append(f"| {label} | {r['median_ms']:.3f} | {100 * r['median_ms'] / dense:.1f}% |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shapes", default="75600x40,32760x12",
                   help=f"comma-separated, from {sorted(SHAPES)}")
    p.add_argument("--impls", default="xla,pallas", help="k-means implementations")
    p.add_argument("--no-jax-reference", dest="jax_reference", action="store_false",
                   help="skip the pure-JAX backend's whole call (O(S^2): ~1.5 s per call "
                        "at 720p), a reference, not the fast path")
    p.add_argument("--compensation", action="store_true",
                   help="also time what the error-aware rule adds (error-aware selection, "
                        "compensation; `compensation_rows`)")
    add_run_args(p, None, reps=10,
                 tiny=f"CPU smoke run on {TINY_SHAPES} with XLA k-means")
    args = p.parse_args(argv)
    shapes = TINY_SHAPES if args.tiny else SHAPES
    impls = ["xla"] if args.tiny else args.impls.split(",")
    names = list(TINY_SHAPES) if args.tiny else args.shapes.split(",")
    if jax.default_backend() != "gpu" and not args.tiny:
        sys.exit("bench_overhead needs a GPU (cuDNN attention and the Pallas kernels); "
                 "--tiny runs a CPU smoke test")
    print("device:", jax.devices()[0].device_kind, "jax", jax.__version__)
    meta = run_meta(reps=args.reps, impls=impls, jax_reference=args.jax_reference,
                    compensation=args.compensation,
                    timing="median of reps, each call synchronised")
    out = {}
    for name in names:
        s, h, qc, kc = shapes[name]
        rows, figures = bench_shape(name, s, h, qc, kc, impls, args.reps,
                                    jax_reference=args.jax_reference,
                                    compensation=args.compensation)
        dense = next(r["median_ms"] for label, r in rows.items() if label.startswith("dense"))
        for r in rows.values():
            r["percent_of_dense"] = 100 * r["median_ms"] / dense
        out[name] = dict(S=s, H=h, QC=qc, KC=kc, D=128, dtype="bfloat16", rows=rows, **figures)
        print()
        print(table(name, shapes[name], rows))
        # after each shape: what was done is kept if a later shape is cut short
        if args.json is None:
            write_json(default_path(json_name(name)), dict(meta=meta, shapes={name: out[name]}))
        else:
            write_json(args.json, dict(meta=meta, shapes=out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
