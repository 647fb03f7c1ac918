"""Where the sparse kernel's wasted pairs come from, on the CPU (no GPU needed).

Builds the same structured q, k as `scripts/bench_kernel.py` for a few heads, clusters
them with SVG2's k-means, selects key clusters at a fixed density, and for each key
order and box size reports, from the kernel's own work list (`svg2_jax.layout.pallas_layout`):
  runs        entries (runs of adjacent selected key clusters) per query cluster,
  total       wasted fraction of computed (query row, key row) pairs (`tile_rows`),
  q side      the part due to 64-row query tiles alone (every key exact),
  k side      the part due to boxes alone (every query row exact),
  one copy    fraction of KV tiles whose boxes are contiguous (the producer fetches
              them with one copy),
  no mask     fraction of KV tiles where every row is a key (the consumers skip the
              mask).
Then an estimate for a kernel that does not exist yet: the query-side waste if the
split-mode tails (<= 64 rows) of two query clusters could share one 64-row tile that
walks the union of their key lists (greedy pairing by pairs saved, tails that fit 64
rows together; key rows exact, as in "q side").

Usage: python -m scripts.waste_model --shape 32760x12 --heads 2 --density 0.13
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp

from scripts.bench_kernel import SHAPES, clustered, structured_qkv


def waste(work, tuning):
    """(runs per query cluster, total, q-side, k-side wasted fractions)."""
    from pallas_kernels.sparse_worklist import cta_load, tile_rows
    computed, real = tile_rows(work, tuning)
    _, g, _, rows = (work.cta[:, i] for i in range(4))
    used = rows > 0
    _, q_rows = cta_load(work.cta, work.total_boxes, tuning)
    keys = jnp.sum(work.entry_size, axis=-1).astype(jnp.float32)
    boxed = work.total_boxes
    q_only = jnp.sum(jnp.where(used, q_rows * keys[g], 0.0))
    k_only = jnp.sum(jnp.where(used, rows * boxed[g] * tuning.box_rows, 0).astype(jnp.float32))
    runs = jnp.mean(jnp.sum(work.entry_size > 0, axis=-1))
    real = jnp.sum(real)
    return (float(runs), float(1 - real / jnp.sum(computed)), float(1 - real / q_only),
            float(1 - real / k_only))


def tile_kinds(work, tuning, seq_k):
    """(fraction of KV tiles in one copy, fraction with no mask), weighted by the CTAs
    that walk them, as the kernel's producer and consumers see them."""
    from pallas_kernels.sparse_worklist import ALIGN, expand_tiles
    num_tiles, kv_start, kv_mask = expand_tiles(work, tuning, seq_k)
    step = tuning.box_rows // ALIGN
    live = jnp.arange(kv_start.shape[1]) < num_tiles[:, None]
    contiguous = jnp.all(kv_start == kv_start[..., :1]
                         + step * jnp.arange(tuning.boxes_per_tile), axis=-1)
    full = jnp.all(kv_mask == -1, axis=-1)
    ctas = jnp.zeros(num_tiles.shape, jnp.float32).at[work.cta[:, 1]].add(
        (work.cta[:, 3] > 0).astype(jnp.float32))
    weight = live * ctas[:, None]
    return (float(jnp.sum(weight * contiguous) / jnp.sum(weight)),
            float(jnp.sum(weight * full) / jnp.sum(weight)))


def tail_packing(q_sizes, k_sizes, selected, tuning):
    """Query-side waste (every key row exact) now and with pairs of split-mode tails
    packed into one tile over the union of their selections: (now, packed) per problem.
    q_sizes [N, QC], k_sizes [N, KC], selected [N, QC, KC]; numpy on the host."""
    import numpy as np
    rpc, bq = tuning.rows_per_cta, tuning.block_q
    out = []
    for qs, ks, sel in zip(np.asarray(q_sizes), np.asarray(k_sizes), np.asarray(selected)):
        keys = sel * ks[None, :]                                  # [QC, KC] selected rows
        total = keys.sum(1)
        tail = qs % rpc
        tail_rows = np.where(tail == 0, 0, np.where(tail <= bq, bq, rpc))
        computed = float(((qs // rpc) * rpc + tail_rows) @ total)
        real = float(qs @ total)
        tails = np.flatnonzero((tail > 0) & (tail <= bq))
        cand = []
        for i, a in enumerate(tails):
            for b in tails[i + 1:]:
                if tail[a] + tail[b] <= bq:
                    union = np.maximum(keys[a], keys[b]).sum()
                    saved = bq * (total[a] + total[b] - union)
                    if saved > 0:
                        cand.append((saved, a, b))
        used, saved = set(), 0.0
        for gain, a, b in sorted(cand, reverse=True):
            if a not in used and b not in used:
                used |= {a, b}
                saved += gain
        out.append((1 - real / computed, 1 - real / (computed - saved)))
    return out


def main(argv=None):
    from pallas_kernels.sparse_worklist import SparseTuningConfig
    from svg2_jax.layout import pallas_layout
    from svg2_jax.selection import select_by_density

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="32760x12", choices=list(SHAPES))
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--density", type=float, default=0.13)
    ap.add_argument("--kmeans-iters", type=int, default=20)
    ap.add_argument("--boxes", default="16,32")
    ap.add_argument("--block-kv", default="128,192", help="comma-separated KV tile rows")
    args = ap.parse_args(argv)
    s, _, qc, kc = SHAPES[args.shape]
    q, k, v = structured_qkv(jax.random.PRNGKey(0), s, args.heads)
    qn, kn, vn, clustering = clustered(q, k, v, qc, kc, args.kmeans_iters)
    qk, kk = clustering.q, clustering.k
    sel = select_by_density(qk.centroids, kk.centroids, kk.sizes, args.density, 0)
    print(f"| {args.shape}, {args.heads} heads, density {args.density} | runs per query cluster "
          f"| wasted pairs | q side | k side | one copy | no mask |\n|---|---|---|---|---|---|---|")
    for block_kv in map(int, args.block_kv.split(",")):
        for box in map(int, args.boxes.split(",")):
            tuning = SparseTuningConfig(block_kv=block_kv, box_rows=box)
            for key_order in ("label", "co_selection"):
                work = pallas_layout(qn, kn, vn, clustering, sel, tuning, key_order).work
                runs, total, qw, kw = waste(work, tuning)
                one, full = tile_kinds(work, tuning, s)
                print(f"| {block_kv}-row tiles of {box}-row boxes, {key_order} order | {runs:.0f} "
                      f"| {total:.3f} | {qw:.3f} | {kw:.3f} | {one:.2f} | {full:.2f} |",
                      flush=True)
    for n, (now, packed) in enumerate(tail_packing(qk.sizes, kk.sizes, sel.selected,
                                                   SparseTuningConfig())):
        print(f"head {n}: q-side waste {now:.3f}, with pairs of tails packed {packed:.3f} "
              f"(estimate)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
