"""The Hopper sparse flash-attention kernel's work list (CPU), its pure-JAX twin (CPU,
against an independent numpy attention), the whole `pallas` path of svg2_attention
through the twin (CPU), and the kernel itself against the twin (`gpu`)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.sparse_flash_mgpu import (PRODUCTION_PIECES, build_kernel, gather_rows,
                                              sparse_flash_attention,
                                              sparse_flash_attention_reference)
from pallas_kernels.sparse_worklist import (ALIGN, SparseTuningConfig, build_work_list,
                                            co_selection_order, expand_tiles, k_layout_len,
                                            key_layout_index, mask_words, padded_index,
                                            padded_starts, q_layout_index, q_layout_len,
                                            q_padded_len, tile_rows, used_keys, walk_tile)
from svg2_jax import SVG2Config, svg2_attention
from svg2_jax.permute import cluster_order, permute
from npref import masked_attention_lse

gpu = pytest.mark.gpu


# ------------------------------------------------------------------ problem makers


def ragged_sizes(rng, total, k, empty_frac=0.25, huge=False):
    """k cluster sizes summing to total: skewed, some empty, some of size 1, and
    (huge=True) one cluster holding about half the tokens."""
    w = rng.random(k) ** 3
    w[rng.random(k) < empty_frac] = 0
    if huge:
        w[rng.integers(k)] = w.sum() + 1e-3
    if w.sum() == 0:
        w[0] = 1.0
    sizes = np.floor(w / w.sum() * total).astype(np.int64)
    ones = np.flatnonzero(sizes == 0)[:2]
    sizes[ones] = 1                                      # size-1 clusters
    sizes[np.argmax(sizes)] += total - sizes.sum()
    assert sizes.min() >= 0 and sizes.sum() == total
    return sizes


def problem(seed, n=2, sq=300, sk=260, qc=6, kc=11, density=0.5, huge=False):
    rng = np.random.default_rng(seed)
    qs = np.stack([ragged_sizes(rng, sq, qc, huge=huge) for _ in range(n)])
    ks = np.stack([ragged_sizes(rng, sk, kc, huge=huge) for _ in range(n)])
    sel = rng.random((n, qc, kc)) < density
    return qs, ks, sel


def np_coverage(work, cfg, qs, ks):
    """[N, Sq, Sk] count of how often the work list computes each (permuted query row,
    permuted key row) pair, over the real rows of each CTA and the unmasked key rows of
    each of its tiles. Padded query rows are mapped back to permuted rows here; the key
    layout is the permuted keys themselves (for spanning tiles, so is the query layout)."""
    n, sq, sk = qs.shape[0], int(qs[0].sum()), int(ks[0].sum())
    qpad = np.asarray(padded_starts(jnp.array(qs)))
    qst = np.concatenate([np.zeros((n, 1), int), np.cumsum(qs, 1)], 1)

    def unpad(row, pad, st, sizes, p):
        if cfg.query_tiles == "spanning":
            assert row < sq, f"query row {row} past the sequence is a real row"
            return row
        c = np.flatnonzero((pad[p] <= row) & (row < pad[p] + sizes[p]))
        assert len(c) == 1, f"padded row {row} is not a real row"
        return st[p][c[0]] + row - pad[p][c[0]]

    cta = np.asarray(work.cta)
    ntiles, starts, bits = (np.asarray(x) for x in expand_tiles(work, cfg, sk))
    starts, bits = starts * ALIGN, bits.view(np.uint32)
    cov = np.zeros((n, sq, sk), np.int32)
    for p, g, q8, rows in cta:
        if rows == 0:
            continue
        keys = []
        for t in range(ntiles[g]):
            for col in range(cfg.block_kv):
                if (bits[g, t, col // 32] >> (col % 32)) & 1:
                    b, r = divmod(col, cfg.box_rows)
                    assert starts[g, t, b] + r < sk, "a masked-in key row past the keys"
                    keys.append(starts[g, t, b] + r)
        assert len(keys) == len(set(keys)), "a key row twice in one CTA's tiles"
        for r in range(rows):
            cov[p, unpad(q8 * ALIGN + r, qpad, qst, qs, p), keys] += 1
    return cov


def np_want(qs, ks, sel):
    n, sq, sk = qs.shape[0], int(qs[0].sum()), int(ks[0].sum())
    qst = np.concatenate([np.zeros((n, 1), int), np.cumsum(qs, 1)], 1)
    kst = np.concatenate([np.zeros((n, 1), int), np.cumsum(ks, 1)], 1)
    want = np.zeros((n, sq, sk), np.int32)
    for p in range(n):
        for a, b in zip(*np.nonzero(sel[p])):
            want[p, qst[p, a]:qst[p, a + 1], kst[p, b]:kst[p, b + 1]] = 1
    return want


def np_spanning_groups(qs, sel, rpc):
    """Spanning tiles, per problem p and CTA j: (rows [lo, hi) of the permuted queries,
    the non-empty query clusters with rows there, the union of their selections)."""
    out = []
    for p in range(qs.shape[0]):
        label = np.repeat(np.arange(qs.shape[1]), qs[p])          # cluster of each row
        groups = []
        for lo in range(0, len(label), rpc):
            hi = min(lo + rpc, len(label))
            clusters = sorted(set(label[lo:hi].tolist()))
            groups.append((lo, hi, clusters, sel[p, clusters].any(axis=0)))
        out.append(groups)
    return out


def np_spanning_want(qs, ks, sel, rpc=128):
    """[N, Sq, Sk] 1 where spanning tiles use the pair: every row of a CTA with every
    key of the union of the CTA's clusters' selections."""
    n, sq, sk = qs.shape[0], int(qs[0].sum()), int(ks[0].sum())
    kst = np.concatenate([np.zeros((n, 1), int), np.cumsum(ks, 1)], 1)
    want = np.zeros((n, sq, sk), np.int32)
    for p, groups in enumerate(np_spanning_groups(qs, sel, rpc)):
        for lo, hi, _, union in groups:
            for b in np.flatnonzero(union):
                want[p, lo:hi, kst[p, b]:kst[p, b + 1]] = 1
    return want


def np_used(qs, ks, sel, cfg):
    if cfg.query_tiles == "spanning":
        return np_spanning_want(qs, ks, sel, cfg.rows_per_cta)
    return np_want(qs, ks, sel)


CONFIGS = [SparseTuningConfig(), SparseTuningConfig(block_kv=64, box_rows=8),
           SparseTuningConfig(block_kv=64, box_rows=32),
           SparseTuningConfig(block_kv=64, max_concurrent_steps=4),
           SparseTuningConfig(split_tails=False), SparseTuningConfig(box_rows=16),
           SparseTuningConfig(block_kv=128, max_concurrent_steps=3, box_rows=16),
           SparseTuningConfig(block_kv=128)]


# ------------------------------------------------------------------ work list (CPU)


def cfg_id(c):
    return (f"kv{c.block_kv}box{c.box_rows}st{c.max_concurrent_steps}"
            + ("" if c.split_tails else "nosplit"))


@pytest.mark.parametrize("cfg", CONFIGS, ids=cfg_id)
@pytest.mark.parametrize("seed,density,huge", [(0, 0.5, False), (1, 0.15, False), (2, 1.0, True),
                                               (3, 0.0, False)])
def test_work_list_covers_each_selected_pair_exactly_once(cfg, seed, density, huge):
    qs, ks, sel = problem(seed, density=density, huge=huge)
    work = jax.jit(build_work_list, static_argnums=(3, 4, 5))(
        jnp.array(qs), jnp.array(ks), jnp.array(sel), int(qs[0].sum()), int(ks[0].sum()), cfg)
    np.testing.assert_array_equal(np_coverage(work, cfg, qs, ks), np_want(qs, ks, sel))


def test_adjacent_selected_clusters_merge_into_runs():
    # Layout order: sizes 5, 0, 7, 9, 4, 0, 6; query cluster 0 selects 0, 2, 3 (two runs:
    # the empty cluster 1 splits them, the rows are adjacent anyway) and 6; query
    # cluster 1 selects 1 (empty) and 4; query cluster 2 nothing; query cluster 3
    # everything (one run per stretch of non-empty clusters).
    ks = np.array([[5, 0, 7, 9, 4, 0, 6]])
    sel = np.zeros((1, 4, 7), bool)
    sel[0, 0, [0, 2, 3, 6]] = True
    sel[0, 1, [1, 4]] = True
    sel[0, 3] = True
    qs = np.array([[3, 4, 2, 1]])
    cfg = SparseTuningConfig(box_rows=8, block_kv=64)
    work = build_work_list(jnp.array(qs), jnp.array(ks), jnp.array(sel), 10, 31, cfg)
    start, size = np.asarray(work.entry_start), np.asarray(work.entry_size)
    np.testing.assert_array_equal(start[:, :4], [[0, 5, 25, 0], [21, 0, 0, 0], [0, 0, 0, 0],
                                                 [0, 5, 25, 0]])
    np.testing.assert_array_equal(size[:, :4], [[5, 16, 6, 0], [4, 0, 0, 0], [0, 0, 0, 0],
                                                [5, 20, 6, 0]])
    # Boxes are laid from the 8-aligned row below each run's start: run [25, 31) is one
    # box from row 24, run [21, 25) two (rows 16-23 and 24-31), run [5, 21) three.
    np.testing.assert_array_equal(np.asarray(work.total_boxes), [1 + 3 + 1, 2, 0, 1 + 4 + 1])
    np.testing.assert_array_equal(np_coverage(work, cfg, qs, ks), np_want(qs, ks, sel))


def test_co_selection_order():
    rng = np.random.default_rng(3)
    mass = jax.nn.softmax(jnp.array(rng.standard_normal((2, 5, 40)) * 3), axis=-1)
    sizes = jnp.array(rng.integers(0, 4, (2, 40)))
    order = np.asarray(co_selection_order(mass, sizes))
    best = np.asarray(jnp.argmax(mass, axis=1))
    weight = np.asarray(jnp.max(mass, axis=1))
    for n in range(2):
        assert sorted(order[n]) == list(range(40))
        nonempty = [c for c in order[n] if sizes[n, c] > 0]
        assert list(order[n, :len(nonempty)]) == nonempty      # empty clusters last
        keys = [(best[n, c], -weight[n, c]) for c in nonempty]
        assert keys == sorted(keys)                            # grouped by favourite query


def test_both_key_orders_give_the_same_attention():
    from svg2_jax.clustering import Clustering
    from svg2_jax.kmeans import KMeansResult
    from svg2_jax.layout import pallas_layout
    from svg2_jax.selection import select_clusters
    rng = np.random.default_rng(8)
    n, s, d, qc, kc = 2, 300, 64, 5, 23
    qn, kn, vn = (jnp.array(rng.standard_normal((n, s, d)), jnp.float32) for _ in range(3))
    res = []
    for x, c in ((qn, qc), (kn, kc)):
        lab = jnp.array(rng.integers(0, c, (n, s)), jnp.int32)
        sizes = jax.vmap(lambda l: jnp.bincount(l, length=c))(lab).astype(jnp.int32)
        res.append(KMeansResult(lab, jnp.array(rng.standard_normal((n, c, d)), jnp.float32),
                                sizes, jnp.int32(0), jnp.float32(0)))
    clustering = Clustering(*res)
    sel = select_clusters(res[0].centroids, res[1].centroids, res[1].sizes, 0.7, 2)
    cfg = SparseTuningConfig(block_kv=64, box_rows=8)
    outs = []
    for key_order in ("co_selection", "label"):
        work, qp, kp, vp, q_order = pallas_layout(qn, kn, vn, clustering, sel, cfg, key_order)
        outs.append(gather_rows(*sparse_flash_attention_reference(qp, kp, vp, work, scale=0.2,
                                                                  config=cfg), work, q_order))
    want = np.zeros((n, s, s), bool)
    for p in range(n):
        want[p] = np.asarray(sel.selected)[p][np.asarray(res[0].labels)[p]][
            :, np.asarray(res[1].labels)[p]]
    want_o, want_lse = masked_attention_lse(qn, kn, vn, want, 0.2)
    for out, lse in outs:
        np.testing.assert_allclose(np.asarray(out), want_o, atol=2e-5, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(lse), want_lse, atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="key_order"):
        pallas_layout(qn, kn, vn, clustering, sel, cfg, "random")


def test_slots_and_padded_layout():
    cfg = SparseTuningConfig()
    qs, ks, sel = problem(4, sq=517, sk=300, qc=9, huge=True)
    sq = int(qs[0].sum())
    work = build_work_list(jnp.array(qs), jnp.array(ks), jnp.array(sel), sq, 300, cfg)
    slot = np.asarray(work.q_slot)
    assert len(np.unique(slot)) == slot.size                       # no two rows share a slot
    cta = np.asarray(work.cta)
    qpad = np.asarray(padded_starts(jnp.array(qs)))
    qst = np.concatenate([np.zeros((2, 1), int), np.cumsum(qs, 1)], 1)
    for p in range(2):
        for row in range(sq):
            c = np.searchsorted(qst[p], row, side="right") - 1
            ci, off = divmod(slot[p, row], cfg.rows_per_cta)
            assert cta[ci, 0] == p and off < cta[ci, 3]
            assert cta[ci, 2] * ALIGN + off == qpad[p, c] + row - qst[p, c]
    # The padded gather puts each permuted row at its cluster's padded start + offset.
    labels = jnp.array(np.stack([np.repeat(np.arange(9), qs[p]) for p in range(2)]))
    order = cluster_order(jax.random.permutation(jax.random.PRNGKey(0), labels, axis=1,
                                                 independent=True))
    idx = np.asarray(padded_index(order, jnp.array(qs), q_padded_len(sq, 9, cfg)))
    assert idx.shape[1] % ALIGN == 0
    for p in range(2):
        for c in range(9):
            np.testing.assert_array_equal(idx[p, qpad[p, c]:qpad[p, c] + qs[p, c]],
                                          np.asarray(order)[p, qst[p, c]:qst[p, c + 1]])
    computed, real = tile_rows(work, cfg)
    want_real = np_want(qs, ks, sel).sum(axis=(1, 2))
    np.testing.assert_array_equal(np.asarray(real), want_real)
    assert np.all(np.asarray(computed) >= want_real)


@pytest.mark.parametrize("cfg", [SparseTuningConfig(), SparseTuningConfig(block_kv=64, box_rows=8),
                                 SparseTuningConfig(block_kv=128, box_rows=16)], ids=cfg_id)
def test_producer_walk_equals_expand_tiles(cfg):
    # The kernel's producer steps through each query cluster's entries with walk_tile
    # (scalar); expand_tiles builds the same tiles vectorised. They must agree, on
    # tiles inside one entry and on tiles across several.
    qs, ks, sel = problem(12, n=2, sq=400, sk=2500, qc=5, kc=9, density=0.5, huge=True)
    work = build_work_list(jnp.array(qs), jnp.array(ks), jnp.array(sel), 400, 2500, cfg)
    num_tiles, kv_start, kv_mask = (np.asarray(x) for x in expand_tiles(work, cfg, 2500))
    total = np.asarray(work.total_boxes)
    sizes, starts = np.asarray(work.entry_size), np.asarray(work.entry_start)
    bpt, last = cfg.boxes_per_tile, sizes.shape[1] - 1
    step = jax.jit(walk_tile, static_argnames=("boxes", "box"))
    inside_one_entry = [0, 0]
    for g in range(total.shape[0]):
        entry, j = 0, 0
        for t in range(num_tiles[g]):
            ents = [min(entry + e, last) for e in range(bpt)]
            entry_boxes = -(-(starts[g, entry] % ALIGN + sizes[g, entry]) // cfg.box_rows)
            inside_one_entry[int(j + bpt <= entry_boxes)] += 1
            row8s, (los, his), rel, j = step(
                [jnp.int32(sizes[g, x]) for x in ents], [jnp.int32(starts[g, x]) for x in ents],
                jnp.int32(j), jnp.int32(t * bpt), jnp.int32(total[g]), boxes=bpt,
                box=cfg.box_rows)
            np.testing.assert_array_equal(np.array(row8s), kv_start[g, t])
            np.testing.assert_array_equal(np.array(mask_words(los, his, cfg.box_rows,
                                                              cfg.mask_words)),
                                          kv_mask[g, t])
            entry += int(rel)
    assert min(inside_one_entry) > 0                               # both kinds of tile


def test_heavy_first_orders_each_problems_ctas_by_work():
    qs, ks, sel = problem(8, n=3, sq=900, sk=700, qc=11, kc=30, density=0.35, huge=True)
    args = (jnp.array(qs), jnp.array(ks), jnp.array(sel), 900, 700)
    cfg = SparseTuningConfig()
    fifo = build_work_list(*args, dataclasses.replace(cfg, heavy_first=False))
    work = build_work_list(*args, cfg)
    cta, per_n = np.asarray(work.cta), np.asarray(work.cta).shape[0] // 3
    tiles = -(-np.asarray(work.total_boxes)[cta[:, 1]] // cfg.boxes_per_tile)
    cost = np.where(cta[:, 3] > 0, tiles * np.where(cta[:, 3] <= cfg.block_q, 1, 2), 0)
    for p in range(3):
        part = slice(p * per_n, (p + 1) * per_n)
        assert np.all(cta[part, 0] == p)                           # problems stay contiguous
        assert np.all(np.diff(cost[part]) <= 0)                    # heaviest first
        assert cost[part][0] > cost[part][-1]
        # the same CTAs as in cluster order, each still paired with its rows' slots
        fifo_cta = np.asarray(fifo.cta)[part]
        assert sorted(map(tuple, cta[part])) == sorted(map(tuple, fifo_cta))
    old_of = {tuple(r): i for i, r in enumerate(np.asarray(fifo.cta)) if r[3] > 0}
    for p in range(3):
        for row in range(900):
            new_c, off = divmod(int(work.q_slot[p, row]), cfg.rows_per_cta)
            old_c, old_off = divmod(int(fifo.q_slot[p, row]), cfg.rows_per_cta)
            assert off == old_off and old_of[tuple(cta[new_c])] == old_c


def test_tuning_config_errors():
    for bad in (dict(block_q=128), dict(box_rows=4), dict(block_kv=96), dict(block_kv=512),
                dict(max_concurrent_steps=1), dict(query_tiles="span")):
        with pytest.raises(ValueError, match="SparseTuningConfig"):
            SparseTuningConfig(**bad)
    with pytest.raises(ValueError, match="kernel must be a SparseTuningConfig"):
        SVG2Config(kernel=dict(box_rows=32))


# ------------------------------------------------------------------ spanning tiles (CPU)

SPANNING = [SparseTuningConfig(query_tiles="spanning"),
            SparseTuningConfig(query_tiles="spanning", block_kv=64, box_rows=8,
                               heavy_first=False),
            SparseTuningConfig(query_tiles="spanning", block_kv=128, box_rows=16,
                               split_tails=False)]


def np_runs(ks, union):
    """Runs of adjacent selected non-empty key clusters: [(first key row, rows)]."""
    st = np.concatenate([[0], np.cumsum(ks)])
    runs = []
    for b in np.flatnonzero(union & (ks > 0)):
        if runs and runs[-1][0] + runs[-1][1] == st[b] and union[b - 1] and ks[b - 1] > 0:
            runs[-1] = (runs[-1][0], runs[-1][1] + ks[b])
        else:
            runs.append((st[b], ks[b]))
    return runs


@pytest.mark.parametrize("seed,sq,huge", [(0, 300, False), (1, 517, True), (2, 128, False),
                                          (3, 61, False)])
def test_spanning_work_list_equals_numpy(seed, sq, huge):
    cfg = SparseTuningConfig(query_tiles="spanning", box_rows=16, heavy_first=False)
    qs, ks, sel = problem(seed, n=3, sq=sq, sk=400, qc=9, kc=23, density=0.3, huge=huge)
    for p in range(3):              # empty query clusters' selections must not count
        sel[p, qs[p] == 0] = True
    assert (qs == 0).any()
    work = jax.jit(build_work_list, static_argnums=(3, 4, 5))(
        jnp.array(qs), jnp.array(ks), jnp.array(sel), sq, 400, cfg)
    cta, total = np.asarray(work.cta), np.asarray(work.total_boxes)
    start, size = np.asarray(work.entry_start), np.asarray(work.entry_size)
    rpc = cfg.rows_per_cta
    per_n = -(-sq // rpc)
    assert cta.shape == (3 * per_n, 4) and start.shape == (3 * per_n, 23)
    for p, groups in enumerate(np_spanning_groups(qs, sel, rpc)):
        for j, (lo, hi, clusters, union) in enumerate(groups):
            c = p * per_n + j
            assert list(cta[c]) == [p, c, lo // ALIGN, hi - lo]
            runs = np_runs(ks[p], union)
            np.testing.assert_array_equal(start[c, :len(runs)], [r[0] for r in runs])
            np.testing.assert_array_equal(size[c, :len(runs)], [r[1] for r in runs])
            assert not size[c, len(runs):].any()
            assert total[c] == sum(-(-(a % ALIGN + b) // cfg.box_rows) for a, b in runs)
        np.testing.assert_array_equal(np.asarray(work.q_slot)[p], p * per_n * rpc
                                      + np.arange(sq))
    # A 300-row problem with 9 clusters has CTAs over several clusters.
    assert max(len(g[2]) for gs in np_spanning_groups(qs, sel, rpc) for g in gs) > 1


@pytest.mark.parametrize("cfg", SPANNING, ids=cfg_id)
@pytest.mark.parametrize("seed,density,huge", [(0, 0.5, False), (1, 0.15, False),
                                               (2, 1.0, True), (3, 0.0, False)])
def test_spanning_work_list_covers_each_used_pair_exactly_once(cfg, seed, density, huge):
    qs, ks, sel = problem(seed, density=density, huge=huge)
    sq, sk = int(qs[0].sum()), int(ks[0].sum())
    work = build_work_list(jnp.array(qs), jnp.array(ks), jnp.array(sel), sq, sk, cfg)
    want = np_spanning_want(qs, ks, sel, cfg.rows_per_cta)
    np.testing.assert_array_equal(np_coverage(work, cfg, qs, ks), want)
    assert np.all(want >= np_want(qs, ks, sel))                    # a superset
    # Pairs used, per row and per problem, against the brute-force count.
    np.testing.assert_array_equal(np.asarray(used_keys(work, cfg)), want.sum(-1))
    computed, real = tile_rows(work, cfg)
    np.testing.assert_array_equal(np.asarray(real), want.sum(axis=(1, 2)))
    assert np.all(np.asarray(computed) >= np.asarray(real))


def test_used_keys_of_cluster_tiles_are_the_selection():
    cfg = SparseTuningConfig()
    qs, ks, sel = problem(4, sq=517, sk=300, qc=9, huge=True)
    work = build_work_list(jnp.array(qs), jnp.array(ks), jnp.array(sel), 517, 300, cfg)
    np.testing.assert_array_equal(np.asarray(used_keys(work, cfg)),
                                  np_want(qs, ks, sel).sum(-1))


@pytest.mark.parametrize("cfg", SPANNING[:2], ids=cfg_id)
def test_reference_twin_spanning_equals_numpy(cfg):
    qs, ks, sel = problem(5, density=0.3)
    sel[0, :2] = False
    sel[1] = False                      # a problem with nothing selected: zeros, -inf
    (q, k, v), (qp, kp, vp), ident = padded_inputs(6, qs, ks, cfg=cfg)
    assert qp.shape[1] == 384                                      # 300 rows -> 3 CTAs
    sq, sk = q.shape[1], k.shape[1]
    work = build_work_list(jnp.array(qs), jnp.array(ks), jnp.array(sel), sq, sk, cfg)
    out, lse = gather_rows(*sparse_flash_attention_reference(qp, kp, vp, work, scale=0.3,
                                                             config=cfg), work, ident)
    mask = np_spanning_want(qs, ks, sel, cfg.rows_per_cta) > 0
    want_o, want_lse = masked_attention_lse(q, k, v, mask, 0.3)
    err = np.linalg.norm(np.asarray(out) - want_o) / np.linalg.norm(want_o)
    assert err <= 1e-4, err
    np.testing.assert_allclose(np.asarray(lse), want_lse, atol=2e-5, rtol=1e-5)
    assert np.all(np.asarray(out)[1] == 0) and np.all(np.isneginf(np.asarray(lse)[1]))


def test_svg2_spanning_tiles_error_at_most_the_clusters_tiles():
    # Structured q, k (shared centres): spanning tiles attend to a superset of each
    # row's selection, which on such inputs can only bring the output closer to dense.
    from scripts.bench_kernel import structured_qkv
    from svg2_jax.clustering import cluster_qk
    from svg2_jax.layout import used_blocks
    from svg2_jax.selection import select_blocks
    q, k, v = (x.astype(jnp.float32) for x in structured_qkv(jax.random.PRNGKey(1), 700, 2,
                                                              64, centres=60))
    dense = np.asarray(jax.nn.dot_product_attention(q, k, v))
    errs = {}
    for mode in ("clusters", "spanning"):
        cfg = SVG2Config.reference(num_q_clusters=12, num_k_clusters=30, top_p=0.5,
                                   min_kc_ratio=0.0, kmeans_iters_cold=5,
                                   backend="pallas_reference",
                                   kernel=SparseTuningConfig(block_kv=64, box_rows=8,
                                                             query_tiles=mode))
        out = np.asarray(svg2_attention(q, k, v, None, cfg)[0])
        errs[mode] = np.linalg.norm(out - dense) / np.linalg.norm(dense)
        # the "jax" backend on the same pairs, as used_blocks states them
        qn, kn, vn = (jnp.moveaxis(x, 2, 1).reshape(-1, 700, 64) for x in (q, k, v))
        clustering = cluster_qk(qn, kn, None, cfg, None)
        groups, union = used_blocks(clustering, select_blocks(clustering, cfg), cfg.kernel)
        mask = np.stack([np.asarray(union)[p][np.asarray(groups)[p]][
            :, np.asarray(clustering.k.labels)[p]] for p in range(qn.shape[0])])
        want, _ = masked_attention_lse(qn, kn, vn, mask, 64 ** -0.5)
        got = np.moveaxis(out, 2, 1).reshape(-1, 700, 64)
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
    assert errs["spanning"] <= errs["clusters"] and errs["clusters"] > 1e-3, errs


# ------------------------------------------------------------------ the twin (CPU)


def padded_inputs(seed, qs, ks, d=128, dtype=jnp.float32, cfg=SparseTuningConfig()):
    rng = np.random.default_rng(seed)
    n, sq, sk = qs.shape[0], int(qs[0].sum()), int(ks[0].sum())
    q = jnp.array(rng.standard_normal((n, sq, d)), dtype)
    k = jnp.array(rng.standard_normal((n, sk, d)), dtype)
    v = jnp.array(rng.standard_normal((n, sk, d)), dtype)
    ident = lambda s: jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (n, s))
    qi = q_layout_index(ident(sq), jnp.array(qs), q_layout_len(sq, qs.shape[1], cfg), cfg)
    ki = key_layout_index(ident(sk), k_layout_len(sk, cfg))
    return (q, k, v), (permute(q, qi), permute(k, ki), permute(v, ki)), ident(sq)


@pytest.mark.parametrize("cfg", CONFIGS[:2], ids=cfg_id)
def test_reference_twin_equals_numpy(cfg):
    qs, ks, sel = problem(5, density=0.4)
    qs[0, np.argmax(qs[0] > 0)] += 0  # keep sizes as drawn
    sel[0, :2] = False                 # query clusters with nothing selected -> zeros
    (q, k, v), (qp, kp, vp), ident = padded_inputs(6, qs, ks, cfg=cfg)
    sq, sk = q.shape[1], k.shape[1]
    work = build_work_list(jnp.array(qs), jnp.array(ks), jnp.array(sel), sq, sk, cfg)
    o_slots, lse_slots = sparse_flash_attention_reference(qp, kp, vp, work, scale=0.3, config=cfg)
    out, lse = gather_rows(o_slots, lse_slots, work, ident)
    want_o, want_lse = masked_attention_lse(q, k, v, np_want(qs, ks, sel) > 0, 0.3)
    np.testing.assert_allclose(np.asarray(out), want_o, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(lse), want_lse, atol=2e-5, rtol=1e-5)
    empty_rows = np_want(qs, ks, sel).sum(-1) == 0
    assert empty_rows.any() and np.all(np.asarray(out)[empty_rows] == 0)
    assert np.all(np.isneginf(np.asarray(lse)[empty_rows]))


def backend_outputs(seed, shape, dtype, backends, **config):
    """svg2_attention on the same random q, k, v with each backend: (outputs, last stats)."""
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.array(rng.standard_normal(shape), dtype) for _ in range(3))
    outs = {}
    for backend in backends:
        outs[backend], _, stats = svg2_attention(q, k, v, None,
                                                 SVG2Config(backend=backend, **config))
    return {b: np.asarray(o, np.float32) for b, o in outs.items()}, stats


def test_svg2_pallas_path_through_twin_equals_masked_dense():
    outs, stats = backend_outputs(7, (2, 333, 2, 64), jnp.float32,
                                  ("pallas_reference", "masked_dense"), num_q_clusters=7,
                                  num_k_clusters=19, selection="svg2", top_p=0.6,
                                  kmeans_iters_cold=4,
                                  kernel=SparseTuningConfig(block_kv=64, box_rows=8))
    assert float(stats.density.mean()) < 0.95
    np.testing.assert_allclose(outs["pallas_reference"], outs["masked_dense"], atol=2e-5,
                               rtol=1e-5)


def test_pallas_backend_refuses_non_hopper():
    if jax.default_backend() == "gpu":
        pytest.skip("this machine has a GPU")
    x = jnp.ones((1, 64, 1, 64), jnp.bfloat16)
    with pytest.raises(ValueError, match="Hopper"):
        svg2_attention(x, x, x, None, SVG2Config(num_q_clusters=2, num_k_clusters=2,
                                                 backend="pallas"))


def test_wrapper_errors():
    qs, ks, sel = problem(8)
    cfg = SparseTuningConfig()
    work = build_work_list(jnp.array(qs), jnp.array(ks), jnp.array(sel), 300, 260, cfg)
    good = jnp.ones((2, q_padded_len(300, 6, cfg), 128), jnp.bfloat16)
    kv = jnp.ones((2, k_layout_len(260, cfg), 128), jnp.bfloat16)
    cases = [((good.astype(jnp.float32), kv, kv), "float16 or bfloat16"),
             ((good[:, :, :96], kv[:, :, :96], kv[:, :, :96]), "head dim"),
             ((good[:1], kv[:1], kv[:1]), "problems"),
             ((good[:, :-3], kv, kv), "multiple of 8"),
             ((good, kv, kv[:, :, :64]), "do not agree")]
    for args, msg in cases:
        with pytest.raises(ValueError, match=msg):
            sparse_flash_attention(*args, work, scale=0.1, config=cfg)
    big = SparseTuningConfig(block_kv=256)
    work = build_work_list(jnp.array(qs), jnp.array(ks), jnp.array(sel), 300, 260, big)
    with pytest.raises(ValueError, match="shared memory"):
        sparse_flash_attention(good, kv, kv, work, scale=0.1, config=big)


@pytest.mark.parametrize("cfg", [SparseTuningConfig(),
                                 SparseTuningConfig(block_kv=128, box_rows=16,
                                                    max_concurrent_steps=3)],
                         ids=cfg_id)
def test_kernel_lowers_for_hopper_within_shared_memory(cfg):
    # Mosaic GPU lowers for sm_90 on the CPU (only running needs the GPU): this catches
    # lowering errors here, and checks that what the wrapper's shared-memory estimate
    # accepts at the limit (192-row tiles x 2 stages, 128 x 3: the same bytes) fits what
    # Mosaic allocates.
    from pallas_kernels.sparse_flash_mgpu import _check
    q, k, work = lowering_inputs(cfg)
    _check(q, k, k, work, cfg)
    lower_for_hopper(q, k, work, cfg, PRODUCTION_PIECES)


def lowering_inputs(cfg):
    qs, ks, sel = problem(11, sq=500, sk=400, qc=5, kc=12, density=0.4)
    work = build_work_list(jnp.array(qs), jnp.array(ks), jnp.array(sel), 500, 400, cfg)
    q = jnp.zeros((2, q_padded_len(500, 5, cfg), 128), jnp.bfloat16)
    k = jnp.zeros((2, k_layout_len(400, cfg), 128), jnp.bfloat16)
    return q, k, work


def lower_for_hopper(q, k, work, cfg, pieces):
    from pallas_kernels.sparse_flash_mgpu import _sparse_flash
    return _sparse_flash.trace(q, k, k, work, 0.1, cfg, pieces).lower(
        lowering_platforms=("cuda",)).as_text()


def test_benchmark_ablations_lower_and_differ_from_the_shipped_kernel():
    # scripts/bench_kernel.py builds its kernel variants from the kernel's pieces; each
    # must lower for sm_90, and each must change the kernel (a variant that lowers to
    # the shipped kernel would time nothing). Conflicting or unknown flags are refused.
    import inspect

    from scripts.bench_kernel import ABLATIONS, ablation_pieces
    assert list(inspect.signature(sparse_flash_attention).parameters) == [
        "q", "k", "v", "work", "scale", "config"]                  # nothing else to reach
    cfg = SparseTuningConfig()
    q, k, work = lowering_inputs(cfg)
    shipped = lower_for_hopper(q, k, work, cfg, PRODUCTION_PIECES)
    for name in list(ABLATIONS) + ["no_walk+one_copy+no_mask_add"]:
        pieces = ablation_pieces(name)
        assert pieces != PRODUCTION_PIECES
        assert lower_for_hopper(q, k, work, cfg, pieces) != shipped, name
    for bad, msg in (("one_copy+box_copies", "both replace"), ("no_mask", "unknown")):
        with pytest.raises(ValueError, match=msg):
            ablation_pieces(bad)


@pytest.mark.parametrize("block_kv,one_copy,no_mask", [(128, 1.0, 7 / 8), (192, 5 / 6, 5 / 6)])
def test_tile_kinds_of_one_long_run(block_kv, one_copy, no_mask):
    # One query cluster selecting one 1000-row key cluster: 32 boxes of 32 rows, the
    # last holding 8 keys. 128-row tiles: 8, all contiguous, the last one masked.
    # 192-row tiles: 6, the last with 2 live boxes (its empty slots repeat box 0).
    from scripts.waste_model import tile_kinds
    cfg = SparseTuningConfig(block_kv=block_kv)
    qs, ks = np.array([[100]]), np.array([[1000, 1000]])
    sel = np.array([[[True, False]]])
    work = build_work_list(jnp.array(qs), jnp.array(ks), jnp.array(sel), 100, 2000, cfg)
    assert tile_kinds(work, cfg, 2000) == pytest.approx((one_copy, no_mask))


def test_tail_packing_estimate():
    # Two 30-row query clusters selecting the same 100-row key cluster: split tails of
    # 64 rows each (waste 1 - 60 / 128); packed, one 64-row tile (1 - 60 / 64). A third
    # cluster of 50 rows cannot join (30 + 50 > 64) and selects another key cluster.
    from scripts.waste_model import tail_packing
    qs, ks = np.array([[30, 30, 50]]), np.array([[100, 80]])
    sel = np.array([[[True, False], [True, False], [False, True]]])
    (now, packed), = tail_packing(qs, ks, sel, SparseTuningConfig())
    real, computed = 60 * 100 + 50 * 80, 128 * 100 + 64 * 80
    assert now == pytest.approx(1 - real / computed)
    assert packed == pytest.approx(1 - real / (computed - 64 * 100))


# ------------------------------------------------------------------ the kernel (GPU)


def _kernel_case(seed, n, sq, sk, qc, kc, density, dtype, cfg, huge=False, d=128,
                 variant=None):
    qs, ks, sel = problem(seed, n=n, sq=sq, sk=sk, qc=qc, kc=kc, density=density, huge=huge)
    (q, k, v), (qp, kp, vp), ident = padded_inputs(seed + 100, qs, ks, d=d, dtype=dtype, cfg=cfg)
    work = build_work_list(jnp.array(qs), jnp.array(ks), jnp.array(sel), sq, sk, cfg)
    if variant is None:
        got = sparse_flash_attention(qp, kp, vp, work, scale=d ** -0.5, config=cfg)
    else:
        from scripts.bench_kernel import ablation_pieces
        got = build_kernel(ablation_pieces(variant))(qp, kp, vp, work, scale=d ** -0.5,
                                                     config=cfg)
    want = sparse_flash_attention_reference(qp.astype(jnp.float32), kp.astype(jnp.float32),
                                            vp.astype(jnp.float32), work, scale=d ** -0.5,
                                            config=cfg)
    out, lse = gather_rows(*got, work, ident)
    ref_o, ref_lse = gather_rows(*want, work, ident)
    out, lse, ref_o, ref_lse = (np.asarray(x, np.float32) for x in (out, lse, ref_o, ref_lse))
    assert not np.isnan(out).any() and not np.isnan(lse).any()
    err = np.linalg.norm(out - ref_o) / max(np.linalg.norm(ref_o), 1e-30)
    assert err < 2e-2, err
    finite = np.isfinite(ref_lse)
    np.testing.assert_array_equal(np.isfinite(lse), finite)
    np.testing.assert_allclose(lse[finite], ref_lse[finite], atol=2e-2, rtol=2e-3)
    empty = np_used(qs, ks, sel, cfg).sum(-1) == 0
    assert np.all(out[empty] == 0)


@gpu
@pytest.mark.parametrize("cfg", CONFIGS, ids=cfg_id)
def test_kernel_matches_twin_ragged(cfg):
    _kernel_case(0, 2, 1000, 900, 13, 40, 0.3, jnp.bfloat16, cfg)


@gpu
@pytest.mark.parametrize("cfg", SPANNING, ids=cfg_id)
def test_kernel_spanning_tiles_match_twin(cfg):
    # Spanning tiles need no kernel change (the kernel only indexes the entry tables by
    # cta[c, 1]); this checks it, ragged and with a short last CTA (1000 = 7 * 128 + 104,
    # 301 = 2 * 128 + 45: split mode).
    _kernel_case(0, 2, 1000, 900, 13, 40, 0.3, jnp.bfloat16, cfg)
    _kernel_case(3, 4, 301, 77, 9, 12, 0.5, jnp.bfloat16, cfg)


@gpu
def test_svg2_attention_pallas_spanning_matches_twin():
    outs = {}
    for backend in ("pallas", "pallas_reference"):
        outs[backend] = backend_outputs(
            9, (2, 1500, 3, 128), jnp.bfloat16, (backend,), num_q_clusters=12,
            num_k_clusters=40, selection="svg2", top_p=0.8, kmeans_iters_cold=5,
            kernel=SparseTuningConfig(query_tiles="spanning"))[0][backend]
    a, b = outs["pallas"], outs["pallas_reference"]
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 2e-2


@gpu
@pytest.mark.parametrize("variant", ["box_copies", "always_mask"])
def test_kernel_timing_variants_that_keep_results(variant):
    from scripts.bench_kernel import ablation_is_right
    assert ablation_is_right(variant)
    # bench_kernel's variants that undo or swap one optimisation must still be right;
    # long runs (few, large key clusters) give contiguous, mask-free tiles too.
    _kernel_case(1, 2, 1000, 900, 13, 40, 0.3, jnp.bfloat16, SparseTuningConfig(),
                 variant=variant)
    _kernel_case(2, 1, 700, 2000, 4, 6, 0.6, jnp.bfloat16, SparseTuningConfig(),
                 variant=variant)


@gpu
@pytest.mark.parametrize("case", [
    dict(seed=1, n=3, sq=517, sk=389, qc=5, kc=17, density=1.0, dtype=jnp.float16),
    dict(seed=2, n=2, sq=2000, sk=2000, qc=4, kc=30, density=0.2, dtype=jnp.bfloat16, huge=True),
    dict(seed=3, n=4, sq=301, sk=77, qc=9, kc=12, density=0.5, dtype=jnp.bfloat16),
    dict(seed=4, n=2, sq=640, sk=640, qc=8, kc=20, density=0.0, dtype=jnp.bfloat16),
    dict(seed=5, n=2, sq=700, sk=500, qc=10, kc=25, density=0.4, dtype=jnp.bfloat16, d=64),
], ids=["fp16-dense", "huge-clusters", "short-keys", "nothing-selected", "d64"])
def test_kernel_matches_twin_edge_cases(case):
    _kernel_case(cfg=SparseTuningConfig(), **case)


@gpu
def test_svg2_attention_pallas_backend_matches_jax_backend():
    outs, _ = backend_outputs(9, (2, 1500, 3, 128), jnp.bfloat16, ("pallas", "jax"),
                              num_q_clusters=12, num_k_clusters=40, selection="svg2",
                              top_p=0.8, kmeans_iters_cold=5)
    a, b = outs["pallas"], outs["jax"]
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 2e-2


def test_bench_kernel_dry_run_writes_every_figure(tmp_path, capsys):
    # The benchmark's CPU path: SVG2's clustering, both selections (top-p with both CTA
    # orders), layouts, the kernel's twin, gather, timing and the JSON.
    import json

    from scripts import bench_kernel
    out = tmp_path / "kernel.json"
    assert bench_kernel.main(["--dry-run", "--densities", "0.2", "--top-ps", "0.9", "--reps",
                              "1", "--kmeans-iters", "3", "--query-tiles", "clusters,spanning",
                              "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["meta"]["dry_run"]
    rows = [r for r in data["rows"] if "kernel_ms" in r]
    s, h, _, _ = bench_kernel.SHAPES["tiny"]
    assert sorted((r["selection"], r["heavy_first"], r["query_tiles"]) for r in rows) == [
        (sel, hf, tiles) for sel, hf in (("density", True), ("top_p", False), ("top_p", True))
        for tiles in ("clusters", "spanning")]
    for r in rows:
        # cluster tiles use the selected pairs; spanning tiles a superset; both compute more
        used = r["used_density"]
        assert used == pytest.approx(r["density"]) if r["query_tiles"] == "clusters" else (
            used >= r["density"])
        assert r["computed_density"] >= used
        assert r["efficiency_per_used_pair"] == pytest.approx(
            used * r["dense_ms"] / r["kernel_ms"])
        assert format(r["used_density"], ".3f") in printed
    dense, = [r for r in data["rows"] if r.get("dense")]
    assert f"dense {dense['dense_ms']:.3f} ms" in printed
    for r in rows:
        assert r["kernel"] == "pallas_reference" and r["nonfinite"] == 0
        # the correctness signal covers the real query rows, not the CTA slots
        assert r["timings"]["kernel"]["outputs"]["elements"] == h * s * 128
        assert 0 < r["density"] <= 1 and 0 <= r["wasted_pair_fraction"] < 1
        for key, fmt in (("kernel_ms", ".3f"), ("layout_ms", ".3f"), ("efficiency", ".3f"),
                         ("wasted_pair_fraction", ".3f"), ("density", ".3f")):
            assert format(r[key], fmt) in printed, key
    json_arg = ["--json", str(out)]
    for argv, msg in ((["--ablations", "no_walk"] + json_arg, "not with --dry-run"),
                      (["--key-orders", "random"] + json_arg, "known orders"),
                      (["--query-tiles", "rows"] + json_arg, "known tilings"),
                      (["--ablations", "no_walk+fast"] + json_arg, "unknown ablation"),
                      ([], "--json is required")):
        with pytest.raises(SystemExit):
            bench_kernel.main(["--dry-run"] + argv)
        assert msg in capsys.readouterr().err


def test_layout_orders_key_clusters_by_the_selections_mass():
    # pallas_layout takes the co-selection order from selection.mass (no recomputation):
    # with a mass that favours the reverse of label order, the key layout holds the key
    # clusters in co_selection_order of that mass, each cluster's tokens in token order.
    from svg2_jax.clustering import Clustering
    from svg2_jax.kmeans import KMeansResult
    from svg2_jax.layout import pallas_layout
    from svg2_jax.selection import Selection
    rng = np.random.default_rng(9)
    n, s, d, qc, kc = 2, 200, 64, 3, 10
    res = []
    for c in (qc, kc):
        lab = jnp.array(rng.integers(0, c, (n, s)), jnp.int32)
        sizes = jax.vmap(lambda l: jnp.bincount(l, length=c))(lab).astype(jnp.int32)
        res.append(KMeansResult(lab, jnp.zeros((n, c, d)), sizes, jnp.int32(0), jnp.float32(0)))
    mass = jax.nn.softmax(jnp.array(rng.standard_normal((n, qc, kc)) * 4), axis=-1)
    selection = Selection(jnp.ones((n, qc, kc), bool), mass)
    tokens = jnp.broadcast_to(jnp.arange(s, dtype=jnp.float32)[None, :, None], (n, s, d))
    layout = pallas_layout(tokens, tokens, tokens, Clustering(*res), selection,
                           SparseTuningConfig(block_kv=64, box_rows=8))
    order = np.asarray(co_selection_order(mass, res[1].sizes))
    labels = np.asarray(res[1].labels)
    for p in range(n):
        want = [t for c in order[p] for t in np.flatnonzero(labels[p] == c)]
        np.testing.assert_array_equal(np.asarray(layout.k)[p, :s, 0], want)
