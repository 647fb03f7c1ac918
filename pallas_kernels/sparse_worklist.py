"""Work lists of the Hopper sparse flash-attention kernel, built on device by jitted JAX.

The kernel (`pallas_kernels/sparse_flash_mgpu.py`) works on permuted layouts, per
problem n (one batch x head):

- **Queries: padded.** Query cluster c owns rows [qstart[c], qstart[c] + q_sizes[c])
  with every cluster starting at a multiple of ALIGN = 8 rows (the rows in between are
  padding: any finite value). TMA copies into the (8, 64)-tiled shared memory that
  wgmma reads need row offsets that are provably multiples of 8, so starts are stored
  divided by 8 and multiplied back in the kernel. `padded_index` gives the gather.
- **Keys: contiguous.** Key clusters follow each other without padding (in the order
  the caller chose: `co_selection_order` puts clusters that the same query clusters
  select next to each other), plus `box_rows` rows of slack at the end
  (`key_layout_index`).

- **CTAs** (`query_tiles="clusters"`, the default). A CTA computes `2 * block_q`
  query rows of one query cluster (one
  `block_q` tile per consumer warpgroup; both share one stream of keys). A cluster of
  r rows takes cdiv(r, 2 * block_q) CTAs. Rows past the cluster's end are computed
  but belong to nobody: every CTA writes its own slot of the output, rows
  [cta * 2 * block_q, (cta + 1) * 2 * block_q), and the inverse permutation reads each
  token's row from its slot (`q_slot`), so partial tiles never race. With
  `heavy_first`, each problem's CTAs are listed by descending work (`_heavy_first`).
- **KV tiles.** The selected key clusters of query cluster g that are adjacent in the
  key layout merge into *runs*; the runs in layout order are the "entries" of g (first
  key row and rows of each). A run from row r is cut into boxes of `box_rows` rows
  starting at the 8-aligned row 8 * (r // 8) (the r % 8 rows before it are masked),
  and `block_kv // box_rows` consecutive boxes make one KV tile, which the kernel's
  producer assembles in shared memory with one TMA copy per box (one per tile when
  its boxes are contiguous), walking the entries itself (so no per-tile array is
  built). Rows of a box outside its run, and box slots past the end of the list,
  are masked out through a bitmask per tile (bit j of the tile = key row j of the
  tile is real), which the producer writes to shared memory beside the tile. Unused
  box slots copy the tile's first box again, so the shared memory they occupy holds
  finite values (0 * NaN would poison the output). `expand_tiles` computes the same
  tiles in JAX (reference and tests).

- **Spanning tiles** (`query_tiles="spanning"`). The queries are contiguous in the
  permuted layout (no per-cluster padding; `q_layout_index`) and CTA j of a problem
  computes rows [j * 2 * block_q, (j + 1) * 2 * block_q), whatever clusters they
  belong to. Its key list (its "group": one entry list per CTA instead of one per
  query cluster) is the union of the selections of every non-empty query cluster
  with rows in it (`spanning_union`), merged into runs like a cluster's. Every row
  of the CTA attends to the whole union: the extra pairs are *used*, not masked
  (exact attention over a superset of each row's selection), so no row is computed
  for nobody except past the end of the sequence. The kernel is the same: it only
  reads `cta[c, 1]` as an index into the entry tables.

All shapes are static upper bounds (no host sync): N * (cdiv(Sq, 2 * block_q) + QC)
CTAs for clusters (those with `rows == 0` do nothing), N * cdiv(Sq, 2 * block_q) for
spanning tiles, and KC entries per group (those past the group's count are never read).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

MASK_WORD_BITS = 32
ALIGN = 8  # rows; every cluster of the padded layout starts at a multiple of this
# How query rows are cut into CTAs (SparseTuningConfig.query_tiles): "clusters", each
# CTA inside one query cluster (padded query layout); "spanning", CTAs of consecutive
# rows of the contiguous query layout, each over the union of its clusters' selections.
QUERY_TILES = ("clusters", "spanning")


@dataclasses.dataclass(frozen=True)
class SparseTuningConfig:
    """Tile sizes of the sparse kernel.

    block_q: query rows per consumer warpgroup (wgmma's M: 64). A CTA holds two.
    block_kv: key rows per pipeline step (a multiple of 64, wgmma's K group for the
      P @ V product, and of box_rows; <= 256).
    box_rows: rows per TMA box, the granularity at which key clusters are fetched:
      a cluster of r rows costs cdiv(r, box_rows) * box_rows rows of work (8, 16 or 32).
    max_concurrent_steps: KV pipeline depth (shared-memory stages, >= 2).
    split_tails: a CTA whose query rows fit one 64-row tile (a cluster's tail) lets
      both warpgroups share those rows and alternate KV tiles, instead of computing a
      second, empty 64-row tile.
    heavy_first: launch each problem's CTAs by descending work (KV tiles, halved in
      split mode) instead of in cluster order, so the grid ends on short CTAs instead
      of idling SMs behind a long one.
    query_tiles: one of QUERY_TILES: "clusters" (a CTA's rows are in one query cluster,
      rows past a cluster's end are computed for nobody) or "spanning" (a CTA's rows
      may span clusters and attend to the union of their selections: more pairs used,
      none computed for nobody but the sequence's last tile). "clusters" stays the
      default until spanning tiles are timed on a GPU.
    """

    block_q: int = 64
    block_kv: int = 192
    box_rows: int = 32
    max_concurrent_steps: int = 2
    split_tails: bool = True
    heavy_first: bool = True
    query_tiles: str = "clusters"

    def __post_init__(self):
        if self.block_q != 64:
            raise ValueError(f"SparseTuningConfig.block_q must be 64 (wgmma M per warpgroup), "
                             f"got {self.block_q!r}")
        if self.box_rows not in (8, 16, 32):
            raise ValueError(f"SparseTuningConfig.box_rows must be 8, 16 or 32, got {self.box_rows!r}")
        if (not isinstance(self.block_kv, int) or self.block_kv % 64
                or self.block_kv % self.box_rows or not 64 <= self.block_kv <= 256):
            raise ValueError(f"SparseTuningConfig.block_kv must be a multiple of 64 and of "
                             f"box_rows in [64, 256], got {self.block_kv!r}")
        if not isinstance(self.max_concurrent_steps, int) or self.max_concurrent_steps < 2:
            raise ValueError(f"SparseTuningConfig.max_concurrent_steps must be an int >= 2, "
                             f"got {self.max_concurrent_steps!r}")
        if self.query_tiles not in QUERY_TILES:
            raise ValueError(f"SparseTuningConfig.query_tiles must be one of {QUERY_TILES}, "
                             f"got {self.query_tiles!r}")

    @property
    def rows_per_cta(self) -> int:
        return 2 * self.block_q

    @property
    def boxes_per_tile(self) -> int:
        return self.block_kv // self.box_rows

    @property
    def mask_words(self) -> int:
        return self.block_kv // MASK_WORD_BITS


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SparseWorkList:
    """What the kernel walks; int32 arrays on device.

    cta: [C, 4] (problem n, group g, first query row // 8 in the query layout, real rows
      in this CTA: 0 = unused CTA). The group is the CTA's key list: query cluster
      g = n * QC + c for clusters tiles, the CTA itself (g = n * cdiv(Sq, 2 * block_q)
      + j) for spanning tiles; G groups in all.
    total_boxes: [G] boxes in g's list, sum of cdiv(start % 8 + size, box_rows)
      over its entries (its KV tiles: cdiv(total, boxes_per_tile)).
    entry_start: [G, KC] first key row of g's i-th run of selected key clusters.
    entry_size: [G, KC] its rows (> 0 for i < count; 0 after).
    q_slot: [N, Sq] output row (in [C * 2 * block_q]) of each permuted (unpadded)
      query row.
    """

    cta: jax.Array
    total_boxes: jax.Array
    entry_start: jax.Array
    entry_size: jax.Array
    q_slot: jax.Array


def _cdiv(a, b):
    return -(-a // b)


def _round_up(a, b):
    return _cdiv(a, b) * b


def padded_len(seq: int, num_clusters: int, slack: int) -> int:
    """Static length of the padded layout: every cluster rounded up to ALIGN rows,
    plus `slack` rows so that the last tile's reads stay in bounds."""
    return _round_up(seq + (ALIGN - 1) * num_clusters, ALIGN) + _round_up(slack, ALIGN)


def q_padded_len(seq_q: int, num_q_clusters: int, config: "SparseTuningConfig") -> int:
    return padded_len(seq_q, num_q_clusters, config.rows_per_cta)


def q_layout_len(seq_q: int, num_q_clusters: int, config: "SparseTuningConfig") -> int:
    """Static length of the query layout of config.query_tiles: the padded layout for
    clusters tiles; for spanning tiles the rows rounded up to whole CTAs (the last
    CTA's reads stay in bounds, and a multiple of 2 * block_q is one of ALIGN)."""
    if config.query_tiles == "spanning":
        return _round_up(seq_q, config.rows_per_cta)
    return q_padded_len(seq_q, num_q_clusters, config)


def q_layout_index(order: jax.Array, sizes: jax.Array, length: int,
                   config: "SparseTuningConfig") -> jax.Array:
    """The gather that builds the query layout of config.query_tiles: order [N, Sq]
    (permuted row p holds token order[n, p], clusters in ascending id), sizes [N, QC]
    -> [N, length] int32 token of each row (`padded_index` for clusters tiles; the
    permuted rows then slack rows repeating token order[n, 0] for spanning tiles)."""
    if config.query_tiles == "spanning":
        return key_layout_index(order, length)
    return padded_index(order, sizes, length)


def k_layout_len(seq_k: int, config: "SparseTuningConfig") -> int:
    """Static length of the key layout: the keys, then slack for the last box's reads."""
    return _round_up(seq_k + config.box_rows, ALIGN)


def key_layout_index(order: jax.Array, length: int) -> jax.Array:
    """The gather that builds the key layout: order [N, S] (permuted row p holds token
    order[n, p]) -> [N, length] int32; the slack rows repeat token order[n, 0] (finite,
    always masked)."""
    n, s = order.shape
    filler = jnp.broadcast_to(order[:, :1], (n, length - s))
    return jnp.concatenate([order, filler], axis=1).astype(jnp.int32)


def co_selection_order(mass: jax.Array, k_sizes: jax.Array) -> jax.Array:
    """An order of the key clusters that puts clusters selected by the same query
    clusters next to each other, so that they merge into runs (fewer partial boxes):
    by the query cluster that weighs each key cluster most, heaviest first within
    one query cluster; empty clusters last. mass: [N, QC, KC] (each query cluster's
    distribution over key clusters, `selection.cluster_mass`); k_sizes: [N, KC] ->
    [N, KC] int32, position i of the layout holds key cluster order[n, i]."""
    best = jnp.argmax(mass, axis=1).astype(jnp.float32)         # [N, KC]
    weight = jnp.max(mass, axis=1)                              # in [0, 1]
    key = jnp.where(k_sizes > 0, 2.0 * best + (1.0 - weight), jnp.inf)
    return jnp.argsort(key, axis=-1, stable=True).astype(jnp.int32)


def padded_starts(sizes: jax.Array) -> jax.Array:
    """sizes: [N, K] -> [N, K] int32 first row of each cluster in the padded layout."""
    return _exclusive_cumsum(_round_up(sizes.astype(jnp.int32), ALIGN))


def _exclusive_cumsum(x):
    return jnp.cumsum(x, axis=-1) - x


def _owner(first: jax.Array, counts: jax.Array, length: int) -> jax.Array:
    """Which segment each position belongs to when segment i occupies `counts[..., i]`
    positions from `first[..., i]` (segments in order, no gaps): [..., length] int32.

    One scatter of each non-empty segment's index at its first position, then a
    running max: no sort, no search."""
    idx = jnp.broadcast_to(jnp.arange(first.shape[-1], dtype=jnp.int32), first.shape)
    where = jnp.where(counts > 0, first, length)  # empty segments land out of range
    flat_first = where.reshape(-1, first.shape[-1])
    flat_idx = idx.reshape(-1, first.shape[-1])
    marks = jax.vmap(lambda w, i: jnp.zeros((length,), jnp.int32).at[w].max(i, mode="drop"))(
        flat_first, flat_idx)
    return jax.lax.cummax(marks, axis=1).reshape(first.shape[:-1] + (length,))


def _gather(table: jax.Array, idx: jax.Array) -> jax.Array:
    """table: [N, K]; idx: [N, ...] -> table[n, idx[n, ...]]."""
    flat = idx.reshape(idx.shape[0], -1)
    return jnp.take_along_axis(table, flat, axis=1).reshape(idx.shape)


def _cta_list(q_sizes, seq_q: int, config: SparseTuningConfig):
    n, qc = q_sizes.shape
    rpc = config.rows_per_cta
    per_n = _cdiv(seq_q, rpc) + qc
    ctas = _cdiv(q_sizes, rpc)
    first = _exclusive_cumsum(ctas)
    qstart = _exclusive_cumsum(q_sizes)
    qstart_pad = padded_starts(q_sizes)
    c = _owner(first, ctas, per_n)                             # [N, per_n]
    j = jnp.arange(per_n, dtype=jnp.int32)
    live = j < jnp.sum(ctas, axis=-1, keepdims=True)
    k_in = j - _gather(first, c)
    q0 = (_gather(qstart_pad, c) + k_in * rpc) // ALIGN
    rows = jnp.where(live, jnp.clip(_gather(q_sizes, c) - k_in * rpc, 0, rpc), 0)
    problem = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[:, None], (n, per_n))
    g = problem * qc + c
    cta = jnp.stack([problem, jnp.where(live, g, 0), jnp.where(live, q0, 0), rows], axis=-1)

    # Output slot of each permuted query row.
    p = jnp.arange(seq_q, dtype=jnp.int32)
    cl = _owner(qstart, q_sizes, seq_q)                        # [N, Sq] cluster of row p
    o = p - _gather(qstart, cl)
    cta_idx = problem[:, :1] * per_n + _gather(first, cl) + o // rpc
    q_slot = cta_idx * rpc + o % rpc
    return cta.reshape(n * per_n, 4), q_slot


def _spanning_cta_list(n: int, seq_q: int, config: SparseTuningConfig):
    """CTA j of problem n computes rows [j * R, (j + 1) * R) of the contiguous layout
    (R = 2 * block_q) with key list g = n * cdiv(Sq, R) + j; a row's slot is its own
    row of its problem's block of slots."""
    rpc = config.rows_per_cta
    per_n = _cdiv(seq_q, rpc)
    j = jnp.arange(per_n, dtype=jnp.int32)
    problem = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[:, None], (n, per_n))
    rows = jnp.broadcast_to(jnp.clip(seq_q - j * rpc, 0, rpc), (n, per_n))
    q0 = jnp.broadcast_to(j * (rpc // ALIGN), (n, per_n))
    cta = jnp.stack([problem, problem * per_n + j, q0, rows], axis=-1)
    q_slot = problem[:, :1] * (per_n * rpc) + jnp.arange(seq_q, dtype=jnp.int32)
    return cta.reshape(n * per_n, 4), q_slot


def spanning_clusters(q_sizes: jax.Array, seq_q: int, config: SparseTuningConfig):
    """The query clusters each spanning CTA holds rows of: q_sizes [N, QC] (clusters in
    ascending id, as `permute.cluster_order` lays them; sum = seq_q) -> (first, last)
    [N, cdiv(Sq, 2 * block_q)] int32, the clusters of the CTA's first and last rows
    (it holds rows of first..last, and of no other; empty clusters in between have none)."""
    rpc = config.rows_per_cta
    q_sizes = q_sizes.astype(jnp.int32)
    cl = _owner(_exclusive_cumsum(q_sizes), q_sizes, seq_q)        # [N, Sq] cluster of row
    j = jnp.arange(_cdiv(seq_q, rpc), dtype=jnp.int32)
    return cl[:, j * rpc], cl[:, jnp.minimum((j + 1) * rpc, seq_q) - 1]


def spanning_union(q_sizes: jax.Array, selected: jax.Array, seq_q: int,
                   config: SparseTuningConfig) -> jax.Array:
    """Each spanning CTA's key clusters: the union of `selected` [N, QC, KC] over the
    non-empty query clusters with rows in it -> [N, cdiv(Sq, 2 * block_q), KC] bool.

    A segment OR through prefix counts along the query-cluster axis (the CTA's clusters
    are a contiguous range first..last): count[last + 1] - count[first] > 0."""
    n, qc, kc = selected.shape
    first, last = spanning_clusters(q_sizes, seq_q, config)
    sel = (selected.astype(bool) & (q_sizes > 0)[..., None]).astype(jnp.int32)
    count = jnp.concatenate([jnp.zeros((n, 1, kc), jnp.int32), jnp.cumsum(sel, axis=1)],
                            axis=1)                                   # [N, QC + 1, KC]
    at = lambda i: jnp.take_along_axis(count, i[..., None], axis=1)
    return (at(last + 1) - at(first)) > 0


def query_groups(q_sizes: jax.Array, selected: jax.Array, seq_q: int,
                 config: SparseTuningConfig):
    """Which keys each query row is computed against under config.query_tiles, as a block
    mask: (group [N, Sq] int32 of each permuted query row, group_selected [N, G', KC]
    bool) -> row p attends to the key clusters group_selected[n, group[n, p]]. Clusters
    tiles: a row's group is its query cluster and group_selected is `selected`;
    spanning tiles: its CTA in the problem and the CTA's union (`spanning_union`)."""
    q_sizes = q_sizes.astype(jnp.int32)
    if config.query_tiles == "spanning":
        group = jnp.arange(seq_q, dtype=jnp.int32) // config.rows_per_cta
        union = spanning_union(q_sizes, selected, seq_q, config)
        return jnp.broadcast_to(group, (q_sizes.shape[0], seq_q)), union
    return _owner(_exclusive_cumsum(q_sizes), q_sizes, seq_q), selected.astype(bool)


def cta_load(cta, total_boxes, config: SparseTuningConfig):
    """What each CTA costs the kernel: cta [..., 4], total_boxes [N * QC] -> (KV tiles
    it walks, 0 for an unused CTA; query rows it computes per tile: block_q in split
    mode, 2 * block_q otherwise), both [...] int32."""
    group, rows = cta[..., 1], cta[..., 3]
    tiles = jnp.where(rows > 0, _cdiv(total_boxes[group], config.boxes_per_tile), 0)
    q_rows = jnp.where((rows <= config.block_q) & config.split_tails, config.block_q,
                       config.rows_per_cta)
    return tiles, q_rows


def _heavy_first(cta, q_slot, total_boxes, config: SparseTuningConfig):
    """Each problem's CTAs reordered by descending work (stable; unused CTAs last), and
    q_slot moved with them (a CTA's output slot is its position in the list). Problems
    stay contiguous: their CTAs share the problem's keys in L2."""
    n = q_slot.shape[0]
    per_n = cta.shape[0] // n
    rpc = config.rows_per_cta
    c = cta.reshape(n, per_n, 4)
    tiles, q_rows = cta_load(c, total_boxes, config)
    work = tiles * q_rows
    perm = jnp.argsort(-work, axis=-1, stable=True).astype(jnp.int32)  # new -> old
    inv = jax.vmap(lambda p: jnp.zeros_like(p).at[p].set(
        jnp.arange(per_n, dtype=jnp.int32), unique_indices=True))(perm)
    base = jnp.arange(n, dtype=jnp.int32)[:, None] * per_n
    local = q_slot // rpc - base                                    # old position in problem
    q_slot = (base + jnp.take_along_axis(inv, local, axis=1)) * rpc + q_slot % rpc
    return jnp.take_along_axis(c, perm[..., None], axis=1).reshape(n * per_n, 4), q_slot


def _entries(k_sizes, selected):
    """Each query cluster's runs of adjacent selected non-empty key clusters, compacted
    in layout order without a sort: (entry_start [N * QC, KC] first key row,
    entry_size [N * QC, KC]). An empty cluster between two selected ones splits their
    run (correct, one more partial box); `co_selection_order` puts empty clusters last."""
    n, qc, kc = selected.shape
    size = jnp.broadcast_to(k_sizes[:, None, :], selected.shape)
    sel = selected & (size > 0)                                # empty clusters: no rows
    off = jnp.zeros((n, qc, 1), bool)
    begin = sel & ~jnp.concatenate([off, sel[..., :-1]], axis=2)
    end = sel & ~jnp.concatenate([sel[..., 1:], off], axis=2)
    start = jnp.broadcast_to(_exclusive_cumsum(k_sizes)[:, None, :], selected.shape)

    def compact(flags, values):
        pos = jnp.where(flags, jnp.cumsum(flags, axis=-1, dtype=jnp.int32) - 1, kc)
        return jax.vmap(lambda p, v: jnp.zeros((kc,), jnp.int32).at[p].set(v, mode="drop"))(
            pos.reshape(-1, kc), values.reshape(-1, kc))

    first = compact(begin, start)
    last = compact(end, start + size)
    return first, last - first


def run_box(start, size, j, box: int):
    """Box j of the run of key rows [start, start + size), boxes of `box` rows laid from
    the 8-aligned row below start: (its first row // 8, its first real row, the end of
    its real rows (rows in [lo, hi) are keys), whether it is the run's last box).
    Scalars (the kernel's producer) or arrays (expand_tiles) alike."""
    lead = jax.lax.bitwise_and(start, jnp.int32(ALIGN - 1))
    span = lead + size
    row8 = jax.lax.shift_right_logical(start, jnp.int32(3)) + j * (box // ALIGN)
    lo = jnp.where(j == 0, lead, 0)
    hi = jnp.clip(span - j * box, 0, box)
    return row8, lo, hi, (j + 1) * box >= span


def walk_tile(sizes, starts, box_in_entry, first_box, total_boxes, boxes: int, box: int):
    """The kernel producer's step (scalars): the `boxes` boxes of the tile that starts
    at box `box_in_entry` of an entry, given that entry's and the next boxes - 1
    entries' sizes and starts (lists; a tile touches at most that many entries) and
    the tile's first box number `first_box` of `total_boxes`. Returns (first rows // 8
    of each box, (lo, hi) lists: real rows [lo, hi) of each box, entries to advance,
    box in entry where the next tile begins). `expand_tiles` is the same walk,
    vectorised; a test checks the two agree. Each box's entry is picked by a chain of
    selects (a short path for tiles inside one entry measured no faster)."""
    rel, j = jnp.int32(0), box_in_entry
    out_start, out_lo, out_hi = [], [], []
    for b in range(boxes):
        size, start = sizes[0], starts[0]
        for e in range(1, b + 1):
            size = jnp.where(rel == e, sizes[e], size)
            start = jnp.where(rel == e, starts[e], start)
        live = first_box + b < total_boxes
        row8, lo, hi, last_box = run_box(start, size, j, box)
        out_start.append(jnp.where(live, row8, out_start[0]) if b else row8)
        out_lo.append(jnp.where(live, lo, 0))
        out_hi.append(jnp.where(live, hi, 0))
        rel = jnp.where(last_box, rel + 1, rel)
        j = jnp.where(last_box, 0, j + 1)
    return out_start, (out_lo, out_hi), rel, j


def run_boxes(size, start, box: int):
    """Boxes of each run: size, start [...] -> [...] int32."""
    return _cdiv(jax.lax.bitwise_and(start, jnp.int32(ALIGN - 1)) + size, box)


def expand_tiles(work: "SparseWorkList", config: SparseTuningConfig, seq_k: int):
    """The KV tiles the kernel's producer assembles, computed in JAX: (num_tiles [G],
    kv_start8 [G, T, boxes_per_tile] first key row // 8 of each box, kv_mask
    [G, T, block_kv // 32] bitmask words), T = the static bound on tiles per query
    cluster. The same walk as the kernel: from each tile's first box, step through
    `boxes_per_tile` boxes of the entry list."""
    g, kc = work.entry_size.shape
    box, bpt = config.box_rows, config.boxes_per_tile
    tiles = _cdiv(_cdiv(seq_k, box) + 2 * kc, bpt)
    nb = jnp.where(work.entry_size > 0, run_boxes(work.entry_size, work.entry_start, box), 0)
    first_box = _exclusive_cumsum(nb)
    total = work.total_boxes
    num_tiles = _cdiv(total, bpt)
    # The entry holding each tile's first box: scatter + running max, then walk.
    first_tile = _cdiv(first_box, bpt)
    starts_tile = _cdiv(first_box + nb, bpt) > first_tile      # a tile starts inside it
    i = _owner(first_tile, starts_tile.astype(jnp.int32), tiles)  # [G, T]
    t = jnp.arange(tiles, dtype=jnp.int32)
    j = t * bpt - jnp.take_along_axis(first_box, i, axis=-1)
    starts, los, his = [], [], []
    for b in range(bpt):
        live = (t * bpt + b) < total[:, None]
        ic = jnp.minimum(i, kc - 1)
        row8, lo, hi, last = run_box(jnp.take_along_axis(work.entry_start, ic, axis=-1),
                                     jnp.take_along_axis(work.entry_size, ic, axis=-1), j, box)
        starts.append(jnp.where(live, row8, starts[0] if starts else 0))
        los.append(jnp.where(live, lo, 0))
        his.append(jnp.where(live, hi, 0))
        i = jnp.where(last, i + 1, i)
        j = jnp.where(last, 0, j + 1)
    in_use = t < num_tiles[:, None]
    kv_start = jnp.where(in_use[..., None], jnp.stack(starts, axis=-1), 0)
    words = [jnp.where(in_use, w, 0) for w in mask_words(los, his, box, config.mask_words)]
    return num_tiles, kv_start, jnp.stack(words, axis=-1)


def mask_words(los, his, box: int, num_words: int):
    """Per-box real rows [lo, hi) (lists of boxes_per_tile int32 arrays) -> num_words
    int32 arrays: bit r of box b is bit (b * box + r) % 32 of word (b * box) // 32.
    Written with the ops the kernel uses on its scalars (no unsigned types)."""
    per_word = MASK_WORD_BITS // box

    def ones(v):  # the low v bits, v in [0, 32]
        return jnp.where(v >= MASK_WORD_BITS, jnp.int32(-1),
                         jax.lax.shift_left(jnp.int32(1), jnp.minimum(v, 31)) - 1)

    words = []
    for w in range(num_words):
        word = jnp.zeros_like(his[0])
        for b in range(w * per_word, (w + 1) * per_word):
            bits = ones(his[b]) & ~ones(los[b])
            word = word | jax.lax.shift_left(bits, jnp.int32(box * (b - w * per_word)))
        words.append(word)
    return words


def build_work_list(q_sizes: jax.Array, k_sizes: jax.Array, selected: jax.Array,
                    seq_q: int, seq_k: int, config: SparseTuningConfig) -> SparseWorkList:
    """q_sizes: [N, QC]; k_sizes: [N, KC] int cluster sizes (clusters in layout order);
    selected: [N, QC, KC] bool (key clusters in the same order) -> SparseWorkList, with
    CTAs and key lists as config.query_tiles says (the query layout must be the one of
    `q_layout_index`).

    Jit-friendly (static shapes, no sort); seq_q / seq_k are the permuted lengths."""
    n, qc = q_sizes.shape
    if selected.shape != (n, qc, k_sizes.shape[1]) or k_sizes.shape[0] != n:
        raise ValueError(f"build_work_list: selected {selected.shape} does not match "
                         f"q_sizes {q_sizes.shape} and k_sizes {k_sizes.shape}")
    q_sizes = q_sizes.astype(jnp.int32)
    k_sizes = k_sizes.astype(jnp.int32)
    if config.query_tiles == "spanning":
        cta, q_slot = _spanning_cta_list(n, seq_q, config)
        lists = spanning_union(q_sizes, selected, seq_q, config)
    else:
        cta, q_slot = _cta_list(q_sizes, seq_q, config)
        lists = selected.astype(bool)
    entry_start, entry_size = _entries(k_sizes, lists)
    total_boxes = jnp.sum(jnp.where(entry_size > 0, run_boxes(entry_size, entry_start,
                                                              config.box_rows), 0),
                          axis=-1, dtype=jnp.int32)
    if config.heavy_first:
        cta, q_slot = _heavy_first(cta, q_slot, total_boxes, config)
    return SparseWorkList(cta=cta, total_boxes=total_boxes, entry_start=entry_start,
                          entry_size=entry_size, q_slot=q_slot)


def tile_rows(work: SparseWorkList, config: SparseTuningConfig):
    """Query-key pairs per problem: (computed [N], real [N]) float32, counted the way
    the kernel spends them: every KV tile costs block_kv key rows for each of the
    CTA's 2 * block_q query rows (block_q in split mode: a tail of <= block_q rows).
    Real pairs are those of real query rows with the keys of their CTA's list: the
    selected pairs for clusters tiles, the *used* pairs (a superset) for spanning
    tiles. For the wasted-pair fraction of a benchmark."""
    n = work.q_slot.shape[0]
    problem, g, _, rows = (work.cta[:, i] for i in range(4))
    used = rows > 0
    tiles, q_rows = cta_load(work.cta, work.total_boxes, config)
    computed = jax.ops.segment_sum(
        tiles.astype(jnp.float32) * q_rows.astype(jnp.float32) * config.block_kv, problem, n)
    real_keys = jnp.sum(work.entry_size, axis=-1)                  # per query cluster
    real = jax.ops.segment_sum(
        jnp.where(used, rows.astype(jnp.float32) * real_keys[g].astype(jnp.float32), 0.0),
        problem, n)
    return computed, real


def used_keys(work: SparseWorkList, config: SparseTuningConfig) -> jax.Array:
    """Key rows each permuted query row attends to, [N, Sq] int32: those of its CTA's
    key list (its cluster's selection, or for spanning tiles the union of its CTA's
    clusters' selections). Summed over rows: `tile_rows`' real pairs."""
    g = work.cta[work.q_slot // config.rows_per_cta, 1]
    return jnp.sum(work.entry_size, axis=-1, dtype=jnp.int32)[g]


def padded_index(order: jax.Array, sizes: jax.Array, length: int) -> jax.Array:
    """The gather that builds the padded permuted layout: order [N, S] (permuted row p
    holds token order[n, p], clusters in ascending id), sizes [N, K] -> [N, length]
    int32 token of each padded row (padding rows repeat token order[n, 0]: finite,
    never read as a key, computed and dropped as a query)."""
    n, s = order.shape
    start = _exclusive_cumsum(sizes.astype(jnp.int32))
    cl = _owner(start, sizes.astype(jnp.int32), s)
    p = jnp.arange(s, dtype=jnp.int32)
    dest = _gather(padded_starts(sizes), cl) + p - _gather(start, cl)
    base = jnp.broadcast_to(order[:, :1], (n, length)).astype(jnp.int32)
    return jax.vmap(lambda b, d, o: b.at[d].set(o, unique_indices=True))(base, dest, order)
