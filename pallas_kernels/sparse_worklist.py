"""Work lists of the Hopper sparse flash-attention kernel, built on device by jitted JAX.

The kernel (`pallas_kernels/sparse_flash_mgpu.py`) works on a *padded* permuted
layout: per problem n (one batch x head), query cluster c owns rows
[qstart[c], qstart[c] + q_sizes[c]) and key cluster c' owns rows
[kstart[c'], kstart[c'] + k_sizes[c']), where every cluster starts at a multiple of
ALIGN = 8 rows (the rows in between are padding: any finite value). TMA copies into
the (8, 64)-tiled shared memory that wgmma reads need row offsets that are provably
multiples of 8, so starts are stored divided by 8 and multiplied back in the kernel.
`padded_index` gives the gather that builds this layout from token order.

- **CTAs.** A CTA computes `2 * block_q` query rows of one query cluster (one
  `block_q` tile per consumer warpgroup; both share one stream of keys). A cluster of
  r rows takes cdiv(r, 2 * block_q) CTAs. Rows past the cluster's end are computed
  but belong to nobody: every CTA writes its own slot of the output, rows
  [cta * 2 * block_q, (cta + 1) * 2 * block_q), and the inverse permutation reads each
  token's row from its slot (`q_slot`), so partial tiles never race.
- **KV tiles.** The selected key clusters of query cluster g, in ascending id order
  (the "entries" of g: padded start // 8 and size of each), are cut into boxes of
  `box_rows` rows (a cluster of r rows gives cdiv(r, box_rows) boxes, the last one
  partial). `block_kv // box_rows` consecutive boxes make one KV tile, which the
  kernel's producer assembles in shared memory with one TMA copy per box, walking the
  entries itself (so no per-tile array is built). Rows of a partial box past its
  cluster, and box slots past the end of the list, are masked out through a bitmask
  per tile (bit j of the tile = key row j of the tile is real), which the producer
  writes to shared memory beside the tile. Unused box slots copy the tile's first box
  again, so the shared memory they occupy holds finite values (0 * NaN would poison
  the output). `expand_tiles` computes the same tiles in JAX (reference and tests).

All shapes are static upper bounds (no host sync): N * (cdiv(Sq, 2 * block_q) + QC)
CTAs (those with `rows == 0` do nothing) and KC entries per query cluster (those past
the cluster's count are never read).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

MASK_WORD_BITS = 32
ALIGN = 8  # rows; every cluster of the padded layout starts at a multiple of this


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
    """

    block_q: int = 64
    block_kv: int = 128
    box_rows: int = 16
    max_concurrent_steps: int = 2
    split_tails: bool = True

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

    cta: [C, 4] (problem n, query cluster g = n * QC + c, first padded query row // 8,
      real rows in this CTA: 0 = unused CTA).
    total_boxes: [N * QC] boxes in g's list (its KV tiles: cdiv(total, boxes_per_tile)).
    entry_start: [N * QC, KC] padded first row // 8 of g's i-th selected key cluster.
    entry_size: [N * QC, KC] its rows (> 0 for i < count; 0 after).
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


def k_padded_len(seq_k: int, num_k_clusters: int, config: "SparseTuningConfig") -> int:
    return padded_len(seq_k, num_k_clusters, config.box_rows)


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


def _entries(k_sizes, selected):
    """Each query cluster's selected non-empty key clusters, compacted in ascending id
    order without a sort: (entry_start // 8 [N * QC, KC], entry_size [N * QC, KC],
    total_boxes is computed by the caller)."""
    n, qc, kc = selected.shape
    sel = selected & (k_sizes[:, None, :] > 0)                 # empty clusters: no boxes
    pos = jnp.cumsum(sel, axis=-1, dtype=jnp.int32) - 1
    ids = jnp.broadcast_to(jnp.arange(kc, dtype=jnp.int32), sel.shape)
    sel_idx = jax.vmap(lambda pp, s, i: jnp.full((kc,), -1, jnp.int32).at[
        jnp.where(s, pp, kc)].set(i, mode="drop"))(
            pos.reshape(-1, kc), sel.reshape(-1, kc), ids.reshape(-1, kc)).reshape(n, qc, kc)
    live = sel_idx >= 0
    c = jnp.maximum(sel_idx, 0)
    start8 = jnp.where(live, _gather(padded_starts(k_sizes) // ALIGN, c), 0)
    size = jnp.where(live, _gather(k_sizes, c), 0)
    return start8.reshape(n * qc, kc), size.reshape(n * qc, kc)


def expand_tiles(work: "SparseWorkList", config: SparseTuningConfig, seq_k: int):
    """The KV tiles the kernel's producer assembles, computed in JAX: (num_tiles [G],
    kv_start8 [G, T, boxes_per_tile] first padded row // 8 of each box, kv_mask
    [G, T, block_kv // 32] bitmask words), T = the static bound on tiles per query
    cluster. The same walk as the kernel: from each tile's first box, step through
    `boxes_per_tile` boxes of the entry list."""
    g, kc = work.entry_size.shape
    box, bpt = config.box_rows, config.boxes_per_tile
    tiles = _cdiv(_cdiv(seq_k, box) + kc, bpt)
    nb = _cdiv(work.entry_size, box)                           # [G, KC], 0 past the count
    first_box = _exclusive_cumsum(nb)
    total = work.total_boxes
    num_tiles = _cdiv(total, bpt)
    # The entry holding each tile's first box: scatter + running max, then walk.
    first_tile = _cdiv(first_box, bpt)
    starts_tile = _cdiv(first_box + nb, bpt) > first_tile      # a tile starts inside it
    i = _owner(first_tile, starts_tile.astype(jnp.int32), tiles)  # [G, T]
    t = jnp.arange(tiles, dtype=jnp.int32)
    j = t * bpt - jnp.take_along_axis(first_box, i, axis=-1)
    starts, valids = [], []
    for b in range(bpt):
        live = (t * bpt + b) < total[:, None]
        ic = jnp.minimum(i, kc - 1)
        size_c = jnp.take_along_axis(work.entry_size, ic, axis=-1)
        start = jnp.take_along_axis(work.entry_start, ic, axis=-1) + (box // ALIGN) * j
        valid = jnp.where(live, jnp.clip(size_c - box * j, 0, box), 0)
        starts.append(jnp.where(live, start, starts[0] if starts else 0))
        valids.append(valid)
        j = j + 1
        advance = box * j >= size_c
        i = jnp.where(advance, i + 1, i)
        j = jnp.where(advance, 0, j)
    in_use = t < num_tiles[:, None]
    kv_start = jnp.where(in_use[..., None], jnp.stack(starts, axis=-1), 0)
    words = [jnp.where(in_use, w, 0) for w in mask_words(valids, box, config.mask_words)]
    return num_tiles, kv_start, jnp.stack(words, axis=-1)


def mask_words(valids, box: int, num_words: int):
    """Per-box valid row counts (a list of boxes_per_tile int32 arrays) -> num_words
    int32 arrays: bit r of box b is bit (b * box + r) % 32 of word (b * box) // 32.
    Written with the ops the kernel uses on its scalars (no unsigned types)."""
    per_word = MASK_WORD_BITS // box
    words = []
    for w in range(num_words):
        word = jnp.zeros_like(valids[0])
        for b in range(w * per_word, (w + 1) * per_word):
            v = valids[b]
            ones = jnp.where(v >= MASK_WORD_BITS, jnp.int32(-1),
                             jax.lax.shift_left(jnp.int32(1), jnp.minimum(v, 31)) - 1)
            word = word | jax.lax.shift_left(ones, jnp.int32(box * (b - w * per_word)))
        words.append(word)
    return words


def build_work_list(q_sizes: jax.Array, k_sizes: jax.Array, selected: jax.Array,
                    seq_q: int, seq_k: int, config: SparseTuningConfig) -> SparseWorkList:
    """q_sizes: [N, QC]; k_sizes: [N, KC] int cluster sizes (permuted layout: clusters
    in ascending id order); selected: [N, QC, KC] bool -> SparseWorkList.

    Jit-friendly (static shapes, no sort); seq_q / seq_k are the permuted lengths."""
    n, qc = q_sizes.shape
    if selected.shape != (n, qc, k_sizes.shape[1]) or k_sizes.shape[0] != n:
        raise ValueError(f"build_work_list: selected {selected.shape} does not match "
                         f"q_sizes {q_sizes.shape} and k_sizes {k_sizes.shape}")
    q_sizes = q_sizes.astype(jnp.int32)
    k_sizes = k_sizes.astype(jnp.int32)
    cta, q_slot = _cta_list(q_sizes, seq_q, config)
    entry_start, entry_size = _entries(k_sizes, selected.astype(bool))
    total_boxes = jnp.sum(_cdiv(entry_size, config.box_rows), axis=-1, dtype=jnp.int32)
    return SparseWorkList(cta=cta, total_boxes=total_boxes, entry_start=entry_start,
                          entry_size=entry_size, q_slot=q_slot)


def tile_rows(work: SparseWorkList, config: SparseTuningConfig):
    """Query-key pairs per problem: (computed [N], real [N]) float32, counted the way
    the kernel spends them: every KV tile costs block_kv key rows for each of the
    CTA's 2 * block_q query rows (block_q in split mode: a tail of <= block_q rows).
    For the wasted-pair fraction of a benchmark."""
    n = work.q_slot.shape[0]
    problem, g, _, rows = (work.cta[:, i] for i in range(4))
    used = rows > 0
    tiles = jnp.where(used, _cdiv(work.total_boxes[g], config.boxes_per_tile), 0)
    q_rows = jnp.where((rows <= config.block_q) & config.split_tails, config.block_q,
                       config.rows_per_cta)
    computed = jax.ops.segment_sum(
        tiles.astype(jnp.float32) * q_rows.astype(jnp.float32) * config.block_kv, problem, n)
    real_keys = jnp.sum(work.entry_size, axis=-1)                  # per query cluster
    real = jax.ops.segment_sum(
        jnp.where(used, rows.astype(jnp.float32) * real_keys[g].astype(jnp.float32), 0.0),
        problem, n)
    return computed, real


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
