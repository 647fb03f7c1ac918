"""SVG2's overhead beside dense attention (GPU benchmark).

Times, for bf16 q, k, v [1, S, H, 128] on one GPU:
  dense attention (cuDNN through jax.nn.dot_product_attention),
  k-means on Q (QC clusters) and K (KC clusters): cold (50 iterations, no early stop)
  and warm (2 iterations), for each k-means implementation (XLA; fused Pallas kernels),
  also split into the assignment and update steps of one iteration,
  the top-p selection, and the permutation (argsorts, gathers of q/k/v, inverse of the output).
The warm overhead (warm k-means + selection + permutation + inverse), timed as one
jitted function, is reported as a fraction of dense attention time: the target is <= 5%.
Pieces timed alone include a dispatch gap each (~0.05-0.1 ms), so they add up to more.

Usage (GPU machine):
  python -m scripts.bench_overhead --json out.json
  python -m scripts.bench_overhead --shapes 75600x40 --impls xla,pallas
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from einops import rearrange

from svg2_jax import SVG2Cache, SVG2Config, svg2_attention
from svg2_jax import kmeans as km
from svg2_jax.permute import cluster_order, permute, unpermute
from svg2_jax.selection import select_clusters

# (S, H, QC, KC): Wan 14B 720p and Wan 1.3B 480p (the reference uses QC=200 at 480p).
SHAPES = {"75600x40": (75600, 40, 300, 1000), "32760x12": (32760, 12, 200, 1000),
          "32760x12qc300": (32760, 12, 300, 1000)}


def timeit(fn, *args, reps=10, warmup=2):
    """Median wall time in ms of a jitted call, synchronised each repetition."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_shape(name, s, h, qc, kc, impls, reps, d=128):
    key = jax.random.PRNGKey(0)
    kq, kk, kv = jax.random.split(key, 3)
    q, k, v = (jax.random.normal(kx, (1, s, h, d), jnp.bfloat16) for kx in (kq, kk, kv))
    qn, kn = (rearrange(x, "b s h d -> (b h) s d") for x in (q, k))
    rows = {}

    dense = jax.jit(functools.partial(jax.nn.dot_product_attention, implementation="cudnn"))
    rows["dense attention (cuDNN)"] = timeit(dense, q, k, v, reps=reps)
    flops = 4 * s * s * d * h
    print(f"[{name}] dense {rows['dense attention (cuDNN)']:.2f} ms "
          f"({flops / rows['dense attention (cuDNN)'] / 1e9:.0f} TFLOP/s)", flush=True)

    q_init = km.random_init(jax.random.PRNGKey(1), qn, qc)
    k_init = km.random_init(jax.random.PRNGKey(2), kn, kc)
    results = {}
    for impl in impls:
        try:
            step = jax.jit(km.kmeans_step(impl), static_argnums=2)
            run = lambda iters, impl=impl: jax.jit(lambda qn, kn, qi, ki: (
                km.kmeans(qn, qi, iters, 0.0, impl=impl),
                km.kmeans(kn, ki, iters, 0.0, impl=impl)))
            cold = run(50)
            rows[f"k-means cold, 50 it, Q+K [{impl}]"] = timeit(cold, qn, kn, q_init, k_init,
                                                                reps=max(2, reps // 4), warmup=1)
            res_q, res_k = cold(qn, kn, q_init, k_init)
            results[impl] = (res_q, res_k)
            # warm start from the cold result's centroids, as in a real warm step
            rows[f"k-means warm, 2 it, Q+K [{impl}]"] = timeit(
                run(2), qn, kn, res_q.centroids, res_k.centroids, reps=reps)
            rows[f"  one step (assign+update) K [{impl}]"] = timeit(step, kn, res_k.centroids,
                                                                    kc, reps=reps)
            rows[f"  one step (assign+update) Q [{impl}]"] = timeit(step, qn, res_q.centroids,
                                                                    qc, reps=reps)
            print(f"[{name}] {impl}: warm {rows[f'k-means warm, 2 it, Q+K [{impl}]']:.2f} ms",
                  flush=True)
        except Exception as e:  # report, keep benchmarking the rest
            print(f"[{name}] k-means impl {impl} failed: {type(e).__name__}: {e}", flush=True)
            rows[f"k-means [{impl}] FAILED"] = float("nan")

    if not results:
        return rows
    res_q, res_k = next(iter(results.values()))
    for impl in results:
        if impl != "xla" and "xla" in results:
            agree = float(jnp.mean((results["xla"][1].labels == results[impl][1].labels)))
            print(f"[{name}] K label agreement xla vs {impl} after 50 cold iterations: {agree:.4f}")

    sel = jax.jit(lambda *a: select_clusters(*a, top_p=0.9, min_clusters=int(0.1 * kc)).selected)
    rows["selection (top-p 0.9)"] = timeit(sel, res_q.centroids, res_k.centroids, res_k.sizes,
                                           reps=reps)
    vn = rearrange(v, "b s h d -> (b h) s d")

    @jax.jit
    def perm(qn, kn, vn, ql, kl):
        qo, ko = cluster_order(ql), cluster_order(kl)
        return qo, permute(qn, qo), permute(kn, ko), permute(vn, ko)

    rows["permutation (2 argsorts + gather q, k, v)"] = timeit(
        perm, qn, kn, vn, res_q.labels, res_k.labels, reps=reps)
    qo = cluster_order(res_q.labels)
    rows["inverse permutation of the output"] = timeit(jax.jit(unpermute), qn, qo, reps=reps)

    # Everything SVG2 adds around the attention kernel, as one jitted function (what a
    # model layer runs): no per-piece dispatch gaps.
    for impl in results:
        @jax.jit
        def overhead(qn, kn, vn, qc0, kc0, impl=impl):
            rq = km.kmeans(qn, qc0, 2, 1e-4, impl=impl)
            rk = km.kmeans(kn, kc0, 2, 1e-4, impl=impl)
            sel_ = select_clusters(rq.centroids, rk.centroids, rk.sizes, 0.9,
                                   int(0.1 * kc)).selected
            qo, ko = cluster_order(rq.labels), cluster_order(rk.labels)
            qp, kp, vp = permute(qn, qo), permute(kn, ko), permute(vn, ko)
            return sel_, kp, vp, unpermute(qp, qo)  # the inverse applied to q: a stand-in output

        rq, rk = results[impl]
        rows[f"**warm overhead, one jit [{impl}]**"] = timeit(
            overhead, qn, kn, vn, rq.centroids, rk.centroids, reps=reps)

    # The Hopper kernel's path at a fixed density budget (random inputs give top-p
    # densities near 0.9): the whole warm call, and the same call with the kernel left
    # out (everything SVG2 adds around the kernel, in one jit).
    if jax.devices()[0].device_kind and "H" in jax.devices()[0].device_kind:
        from pallas_kernels import sparse_flash_mgpu as sf
        from svg2_jax.clustering import Clustering
        from svg2_jax.layout import pallas_layout
        from svg2_jax.selection import select_by_density
        impl = "pallas" if "pallas" in results else next(iter(results))
        rq, rk = results[impl]
        cfg_p = SVG2Config(num_q_clusters=qc, num_k_clusters=kc, backend="pallas",
                           kmeans_impl=impl, target_density=0.13)
        cache = SVG2Cache(rearrange(rq.centroids, "(b h) c d -> b h c d", b=1),
                          rearrange(rk.centroids, "(b h) c d -> b h c d", b=1))
        seld = jax.jit(lambda *a: select_by_density(*a, density=0.13,
                                                    min_clusters=int(0.1 * kc)).selected)
        rows["selection (fixed density 0.13)"] = timeit(seld, rq.centroids, rk.centroids,
                                                        rk.sizes, reps=reps)
        call = jax.jit(lambda q, k, v, c: svg2_attention(q, k, v, c, cfg_p))
        rows[f"svg2_attention warm call, backend=pallas, density 0.13 [{impl}]"] = timeit(
            call, q, k, v, cache, reps=reps)
        tuning = cfg_p.kernel

        @jax.jit
        def around(q, k, v, c):
            qn_, kn_, vn_ = (rearrange(x, "b s h d -> (b h) s d") for x in (q, k, v))
            a = km.kmeans(qn_, rearrange(c.q_centroids, "b h c d -> (b h) c d"), 2, 1e-4,
                          impl=impl)
            b = km.kmeans(kn_, rearrange(c.k_centroids, "b h c d -> (b h) c d"), 2, 1e-4,
                          impl=impl)
            sel_ = select_by_density(a.centroids, b.centroids, b.sizes, 0.13, int(0.1 * kc))
            work, qp, kp, vp, qo = pallas_layout(qn_, kn_, vn_, Clustering(a, b), sel_, tuning)
            slots = work.cta.shape[0] * tuning.rows_per_cta
            fake = (kp[0, :1, :1] + vp[0, :1, :1] + qp[0, :1, :1]).astype(jnp.float32)
            o, lse = sf.gather_rows(jnp.zeros((slots, d), q.dtype) + fake.astype(q.dtype),
                                    jnp.zeros((slots,), jnp.float32), work, qo)
            return rearrange(o, "(b h) s d -> b s h d", b=1), lse

        rows[f"  the same without the kernel (k-means, selection, layout) [{impl}]"] = timeit(
            around, q, k, v, cache, reps=reps)

    # The whole call with the pure-JAX backend: exact but O(S^2) work. It shows the
    # reference path runs at this size within memory; it is not the fast path.
    cfg = SVG2Config(num_q_clusters=qc, num_k_clusters=kc, backend="jax",
                     kmeans_impl=impls[0])
    cache = SVG2Cache(rearrange(res_q.centroids, "(b h) c d -> b h c d", b=1),
                      rearrange(res_k.centroids, "(b h) c d -> b h c d", b=1))
    call = jax.jit(lambda q, k, v, c: svg2_attention(q, k, v, c, cfg))
    rows[f"svg2_attention warm call, backend=jax [{impls[0]}] (O(S^2) reference)"] = timeit(
        call, q, k, v, cache, reps=2, warmup=1)
    _, _, stats = call(q, k, v, cache)
    print(f"[{name}] random-input density at top_p 0.9: {float(stats.density.mean()):.3f}")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shapes", default="75600x40,32760x12",
                   help=f"comma-separated, from {sorted(SHAPES)}")
    p.add_argument("--impls", default="xla,pallas")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if jax.default_backend() != "gpu":
        sys.exit("bench_overhead needs a GPU (cuDNN attention and the Pallas kernels)")
    print("device:", jax.devices()[0].device_kind, "jax", jax.__version__)
    out = {}
    for name in args.shapes.split(","):
        s, h, qc, kc = SHAPES[name]
        rows = bench_shape(name, s, h, qc, kc, args.impls.split(","), args.reps)
        out[name] = dict(S=s, H=h, QC=qc, KC=kc, ms=rows)
        dense = rows["dense attention (cuDNN)"]
        print(f"\n### S={s}, H={h}, D=128, QC={qc}, KC={kc}, bf16")
        print("| step | ms | % of dense |\n|---|---|---|")
        for r, ms in rows.items():
            print(f"| {r} | {ms:.3f} | {100 * ms / dense:.1f}% |")
        for impl in args.impls.split(","):
            one = rows.get(f"**warm overhead, one jit [{impl}]**")
            if one is not None:
                out[name][f"warm_overhead_ms_{impl}"] = one
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
