"""Variable-block sparse flash attention on Hopper (Pallas, Mosaic GPU backend).

The FA3 structure of jax's `pallas/ops/gpu/attention_mgpu.py` (two consumer
warpgroups that ping-pong their softmax against each other's wgmma, one TMA producer
warpgroup, a ring of K/V stages) driven by a work list instead of a dense grid
(`pallas_kernels/sparse_worklist.py`): each CTA owns 2 x 64 query rows (of one query
cluster, or consecutive rows spanning clusters: `SparseTuningConfig.query_tiles`; the
kernel does not tell them apart, it walks the key list `cta[c, 1]` names) and walks
that list's KV tiles, each tile assembled in shared memory from
`box_rows`-row TMA boxes of the selected key clusters, with the rows that are not
real keys masked through a per-tile bitmask. The producer's walk and copies and the
consumers' masking are `KernelPieces`; the library runs `PRODUCTION_PIECES` only
(benchmarks build variants of the same kernel with `build_kernel`).

Layout: q [N, Lq, D] in the query layout of the work list (`q_layout_index`: query
clusters contiguous, each starting at a multiple of 8 rows, or for spanning tiles
unpadded with slack to whole CTAs), k and v [N, Lk, D]
in the key layout (key clusters contiguous, unpadded, slack at the end;
`key_layout_index`), N =
batch x heads. Output: one slot of 2 * block_q rows per CTA, out [C * 2 * block_q, D]
and the log-sum-exp lse [C * 2 * block_q] (natural log); `gather_rows` brings them
back to token order.

Mosaic GPU's interpret mode cannot run wgmma pipelines on the CPU, so the kernel is
tested on the GPU machine (pytest marker `gpu`); `sparse_flash_attention_reference`
computes the same function from the same work list in pure JAX and is tested on the
CPU against an independent masked dense attention.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
from jax import lax

from pallas_kernels.sparse_worklist import (ALIGN, MASK_WORD_BITS, SparseTuningConfig,
                                            SparseWorkList, build_work_list, expand_tiles,
                                            mask_words, walk_tile)

_DTYPES = (jnp.float16, jnp.bfloat16)
_HEAD_DIMS = (64, 128)
# Hopper's opt-in shared memory per block; Mosaic GPU adds ~1.6 KB (barriers, alignment;
# no reduction scratch: the kernel's row reductions stay inside warps).
SMEM_LIMIT = 232448
_SMEM_OVERHEAD = 2048


def smem_bytes(head_dim: int, itemsize: int, config: SparseTuningConfig) -> int:
    """Shared memory the kernel asks for: two Q/O tiles, the K and V rings, the
    per-warpgroup lse rows and the per-stage mask words."""
    return (2 * config.block_q * head_dim * itemsize
            + 2 * config.max_concurrent_steps * config.block_kv * head_dim * itemsize
            + 2 * config.block_q * 4 + config.max_concurrent_steps * config.mask_words * 4
            + _SMEM_OVERHEAD)


def supports(dtype, head_dim) -> bool:
    """Whether the kernel handles inputs of this dtype and head dim."""
    return (dtype is not None and jnp.dtype(dtype) in map(jnp.dtype, _DTYPES)
            and head_dim in _HEAD_DIMS)


def _check(q, k, v, work: SparseWorkList, config: SparseTuningConfig):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 3:
            raise ValueError(f"sparse_flash_attention: {name} must be [N, S, D], got {x.shape}")
        if x.dtype not in map(jnp.dtype, _DTYPES):
            raise ValueError(f"sparse_flash_attention: {name} must be float16 or bfloat16, "
                             f"got {x.dtype}")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"sparse_flash_attention: q, k, v dtypes differ: "
                         f"{q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape or (q.shape[0], q.shape[2]) != (k.shape[0], k.shape[2]):
        raise ValueError(f"sparse_flash_attention: shapes q {q.shape}, k {k.shape}, "
                         f"v {v.shape} do not agree on N and D")
    if q.shape[2] not in _HEAD_DIMS:
        raise ValueError(f"sparse_flash_attention: head dim {q.shape[2]} not supported "
                         f"(one of {_HEAD_DIMS})")
    need = smem_bytes(q.shape[2], q.dtype.itemsize, config)
    if need > SMEM_LIMIT:
        raise ValueError(f"sparse_flash_attention: {config} needs ~{need} bytes of shared "
                         f"memory at head dim {q.shape[2]}, more than the {SMEM_LIMIT} a "
                         f"Hopper block has: lower block_kv or max_concurrent_steps")
    n = q.shape[0]
    if work.q_slot.shape[0] != n:
        raise ValueError(f"sparse_flash_attention: work list was built for "
                         f"{work.q_slot.shape[0]} problems, q has {n}")
    for name, x in (("q", q), ("k", k)):
        if x.shape[1] % ALIGN:
            raise ValueError(f"sparse_flash_attention: {name} layout length {x.shape[1]} must "
                             f"be a multiple of {ALIGN} (use q_layout_len / k_layout_len)")
    if work.total_boxes.shape[0] % n or work.entry_size.shape != work.entry_start.shape:
        raise ValueError("sparse_flash_attention: work list does not match N")
    for name in ("cta", "total_boxes", "entry_start", "entry_size", "q_slot"):
        if getattr(work, name).dtype != jnp.int32:
            raise ValueError(f"sparse_flash_attention: work.{name} must be int32")


class KernelPieces(NamedTuple):
    """The interchangeable steps of the kernel (trace-time functions, hashable: the jit
    key). The library runs `PRODUCTION_PIECES` only; benchmarks build variants from other
    pieces (scripts/bench_kernel.py's ablations).

    walk(sizes, starts, j, first_box, total_boxes, config) -> (row8s, valids, rel, j):
      the producer's step through the entry list: first key row // 8 of each box of the
      tile that starts at box `first_box` (box j of the current entry), the (lo, hi)
      real rows of each box (None: no mask words), entries to advance (None: the
      producer loads no entries) and the box of the entry where the next tile begins.
    words(valids, config) -> [mask word]: the mask words the producer stores.
    one_copy(row8s, config) -> bool: whether the tile's K / V arrive in one TMA copy of
      block_kv rows (a traced bool, or Python True: always) instead of one per box.
    mask(scores, mask_vals, add_mask) -> scores: how the consumers apply the tile's
      mask words (`add_mask(scores)` adds -inf to the rows that are not keys).
    """

    walk: Callable
    words: Callable
    one_copy: Callable
    mask: Callable


def walk_entries(sizes, starts, j, first_box, total_boxes, config: SparseTuningConfig):
    """The producer walks the entries (`walk_tile`)."""
    return walk_tile(sizes, starts, j, first_box, total_boxes, config.boxes_per_tile,
                     config.box_rows)


def store_mask_words(valids, config: SparseTuningConfig):
    """Every tile's mask words are stored."""
    return mask_words(*valids, config.box_rows, config.mask_words)


def contiguous_boxes(row8s, config: SparseTuningConfig):
    """A tile whose boxes follow each other (inside one run) arrives in one copy: each
    copy costs the producer issue slots that the consumers miss."""
    contiguous = jnp.bool_(True)
    for b in range(1, config.boxes_per_tile):
        contiguous = contiguous & (row8s[b] == row8s[0] + b * (config.box_rows // ALIGN))
    return contiguous


def mask_unless_full(scores, mask_vals, add_mask):
    """Tiles inside one run (every row a key) skip the mask: decoding the bits per column
    costs the consumers about as much as the add."""
    every = mask_vals[0]
    for word in mask_vals[1:]:
        every = every & word
    return lax.cond(every == -1, lambda x: x, add_mask, scores)


PRODUCTION_PIECES = KernelPieces(walk=walk_entries, words=store_mask_words,
                                 one_copy=contiguous_boxes, mask=mask_unless_full)


def build_kernel(pieces: KernelPieces) -> Callable:
    """The kernel with these pieces, behind the same checks as `sparse_flash_attention`:
    fn(q, k, v, work, *, scale, config) -> (out, lse). Pieces other than
    PRODUCTION_PIECES are for timing experiments and may give wrong results."""

    def run(q, k, v, work: SparseWorkList, *, scale: float,
            config: SparseTuningConfig = SparseTuningConfig()):
        _check(q, k, v, work, config)
        return _sparse_flash(q, k, v, work, float(scale), config, pieces)

    return run


def sparse_flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, work: SparseWorkList, *,
                           scale: float, config: SparseTuningConfig = SparseTuningConfig()):
    """Sparse attention of the work list on Hopper: q [N, Lq, D]; k, v [N, Lk, D]
    (key layout) -> (out [C * 2 * block_q, D] in q.dtype,
    lse [C * 2 * block_q] float32).

    A query row with no selected key gets out = 0 and lse = -inf."""
    return build_kernel(PRODUCTION_PIECES)(q, k, v, work, scale=scale, config=config)


@jax.jit(static_argnames=("scale", "config", "pieces"))
def _sparse_flash(q, k, v, work, scale, config, pieces: KernelPieces):
    """The kernel itself, unchecked (`build_kernel` checks); pieces: see KernelPieces."""
    _, _, head_dim = q.shape
    dtype = q.dtype
    block_q, block_kv, box = config.block_q, config.block_kv, config.box_rows
    boxes, words, stages = config.boxes_per_tile, config.mask_words, config.max_concurrent_steps
    num_entries = work.entry_size.shape[1]
    num_ctas = work.cta.shape[0]
    rows_per_cta = config.rows_per_cta
    scale_log2 = scale * math.log2(math.e)

    def kernel(q_ref, k_ref, v_ref, cta_ref, total_ref, estart_ref, esize_ref, out_ref, lse_ref,
               scoped):
        cta = lax.axis_index("cta")
        (smem_buffers, buffer_barriers, consumed_barriers, schedule_barrier,
         merge_barrier) = scoped
        wg_idx = lax.axis_index("wg")
        qo_smem2, k_smem, v_smem, lse_smem2, mask_smem = smem_buffers
        k_barriers, v_barriers, q_barriers = buffer_barriers
        k_consumed, v_consumed = consumed_barriers
        problem = cta_ref[cta, 0]
        group = cta_ref[cta, 1]
        q_first = cta_ref[cta, 2] * ALIGN
        rows = cta_ref[cta, 3]
        total_boxes = jnp.where(rows > 0, total_ref[group], 0)
        kv_steps = lax.div(total_boxes + (boxes - 1), jnp.int32(boxes))
        # A CTA whose rows fit one warpgroup tile (a cluster's tail) runs in split mode:
        # both warpgroups take the same 64 query rows and alternate KV tiles (tile
        # w, w + 2, ...), and warpgroup 0 merges the two partial softmaxes at the end.
        # Otherwise each warpgroup owns 64 rows and both consume every tile.
        split = (rows <= block_q) if config.split_tails else jnp.bool_(False)

        def perform_schedule_barrier():
            plgpu.barrier_arrive(schedule_barrier)
            plgpu.barrier_wait(schedule_barrier)

        # Unused CTAs (the static bound's spare ones) exit at once: no Q load, no output
        # (nobody reads their slots).
        @pl.when((wg_idx < 2) & (rows > 0))
        def _compute_wg():
            plgpu.set_max_registers(232, action="increase")
            qo_smem = qo_smem2.at[wg_idx]
            lse_smem = lse_smem2.at[wg_idx]
            q_row = q_first + jnp.where(split, 0, wg_idx * block_q)
            plgpu.copy_gmem_to_smem(q_ref.at[problem, pl.ds(q_row, block_q)],
                                    qo_smem, q_barriers.at[wg_idx])
            plgpu.barrier_wait(q_barriers.at[wg_idx])
            stride = jnp.where(split, 2, 1)
            first_tile = jnp.where(split, wg_idx, 0)
            my_steps = jnp.where(split, lax.div(kv_steps + 1 - wg_idx, jnp.int32(2)), kv_steps)

            def release(barriers, slot):
                plgpu.barrier_arrive(barriers.at[slot])

                if stages % 2 == 0:
                    @pl.when(split)
                    def _():  # the other warpgroup never reads this tile
                        plgpu.barrier_arrive(barriers.at[slot])

            m_i = plgpu.layout_cast(jnp.full((block_q,), -jnp.inf, jnp.float32),
                                    plgpu.Layout.WGMMA.reduce(1))
            l_i = plgpu.layout_cast(jnp.full((block_q,), 0, jnp.float32),
                                    plgpu.Layout.WGMMA.reduce(1))
            acc = plgpu.layout_cast(jnp.full((block_q, head_dim), 0, jnp.float32),
                                    plgpu.Layout.WGMMA)

            def wait_tile(barriers, consumed, tile):
                """Wait for `tile` in `barriers`. A barrier's phase is tracked per thread,
                flipping at each wait, so a warpgroup must wait on every phase of every
                slot it reads. In split mode the two warpgroups alternate tiles: with an
                even number of stages their slots are disjoint (the reader releases for
                both); with an odd number they share slots, so each also waits for the
                other's preceding tile (issued earlier: nearly free) and releases it,
                which keeps the producer from refilling a slot whose phase a warpgroup
                has not seen yet."""
                if stages % 2:
                    @pl.when(split & (tile >= 1))
                    def _():
                        prev = lax.rem(tile - 1, jnp.int32(stages))
                        plgpu.barrier_wait(barriers.at[prev])
                        plgpu.barrier_arrive(consumed.at[prev])
                plgpu.barrier_wait(barriers.at[lax.rem(tile, jnp.int32(stages))])

            @pl.when(my_steps > 0)
            def _():
                wait_tile(k_barriers, k_consumed, first_tile)

            pl.when(wg_idx == 1)(perform_schedule_barrier)

            def kv_loop(step, carry):
                acc, m_i, l_i = carry
                tile = first_tile + step * stride
                slot = lax.rem(tile, jnp.int32(stages))
                # Read before releasing the slot: the producer rewrites it next.
                mask_vals = [mask_smem[slot, w] for w in range(words)]

                def compute_qk(acc_ref):
                    plgpu.wgmma(acc_ref, qo_smem, k_smem.at[slot].transpose((1, 0)))
                    perform_schedule_barrier()
                    return acc_ref[...]

                qk = pl.run_scoped(compute_qk, plgpu.ACC((block_q, block_kv), jnp.float32))
                release(k_consumed, slot)

                # Keys that are not real (tails of partial boxes, unused box slots) get
                # -inf: every tile holds a real key, so the running max stays finite
                # and exp2 gives them exactly 0.
                def add_mask(x):
                    col = plgpu.broadcasted_iota(jnp.int32, (block_kv,), 0,
                                                 layout=plgpu.Layout.WGMMA.reduce(0))
                    word = mask_vals[-1]
                    for w in range(words - 2, -1, -1):
                        word = jnp.where(col < (w + 1) * MASK_WORD_BITS, mask_vals[w], word)
                    bit = lax.shift_right_logical(word, col & (MASK_WORD_BITS - 1)) & 1
                    bias = jnp.where(bit != 0, jnp.float32(0), jnp.float32(-jnp.inf))
                    return x + lax.broadcast_in_dim(bias, x.shape, [1])

                qk = pieces.mask(qk, mask_vals, add_mask)

                # m is kept scaled by scale * log2(e) so that p is one FMA + exp2.
                m_ij = jnp.maximum(m_i, qk.max(axis=1) * scale_log2)
                alpha = jnp.exp2(m_i - m_ij)
                m_i = m_ij
                p = jnp.exp2(qk * scale_log2 - lax.broadcast_in_dim(m_ij, qk.shape, [0]))
                acc *= lax.broadcast_in_dim(alpha, acc.shape, [0])
                l_i *= alpha
                p16 = p.astype(dtype)
                l_i += p.sum(axis=1)
                acc, l_i, m_i, p16 = lax.optimization_barrier((acc, l_i, m_i, p16))
                plgpu.barrier_arrive(schedule_barrier)
                wait_tile(v_barriers, v_consumed, tile)
                plgpu.barrier_wait(schedule_barrier)

                def compute_pv(acc_ref):
                    plgpu.wgmma(acc_ref, p16, v_smem.at[slot])

                    @pl.when(step + 1 < my_steps)
                    def _wait():
                        wait_tile(k_barriers, k_consumed, tile + stride)

                acc = pl.run_state(compute_pv)(plgpu.ACC.init(acc))
                release(v_consumed, slot)
                return acc, m_i, l_i

            acc, m_i, l_i = lax.fori_loop(0, my_steps, kv_loop, (acc, m_i, l_i))

            # Keep the schedule barrier's arrivals equal: in split mode with an odd
            # tile count warpgroup 0 ran one step more.
            @pl.when(split & (wg_idx == 1) & (lax.rem(kv_steps, jnp.int32(2)) == 1))
            def _():
                perform_schedule_barrier()
                perform_schedule_barrier()

            pl.when(wg_idx == 0)(perform_schedule_barrier)

            # No selected key: l = 0, acc = 0 -> out 0, lse -inf (never 0/0).
            l_safe = jnp.where(l_i == 0, jnp.float32(1), l_i)
            out = acc / lax.broadcast_in_dim(l_safe, (block_q, head_dim), [0])
            lse = m_i + jnp.log2(l_i)

            @pl.when(split & (wg_idx == 1))
            def _():
                qo_smem[...] = out.astype(dtype)
                lse_smem[...] = lse
                plgpu.commit_smem()
                plgpu.barrier_arrive(merge_barrier)

            @pl.when(split & (wg_idx == 0))
            def _():
                plgpu.barrier_wait(merge_barrier)

            # Every warpgroup computes the merge (pl.when cannot return values); outside
            # split mode warpgroup 1's buffers may be mid-write and the select below
            # discards what was read.
            other_o = plgpu.load(qo_smem2.at[1], layout=plgpu.Layout.WGMMA).astype(
                jnp.float32)
            other_lse = plgpu.load(lse_smem2.at[1], layout=plgpu.Layout.WGMMA.reduce(1))
            big = jnp.maximum(lse, other_lse)
            big = jnp.where(big == -jnp.inf, jnp.float32(0), big)
            w_self, w_other = jnp.exp2(lse - big), jnp.exp2(other_lse - big)
            total = w_self + w_other
            merged = (out * lax.broadcast_in_dim(w_self, out.shape, [0])
                      + other_o * lax.broadcast_in_dim(w_other, out.shape, [0]))
            merged = merged / lax.broadcast_in_dim(
                jnp.where(total == 0, jnp.float32(1), total), out.shape, [0])
            use_merge = split & (wg_idx == 0)
            out = jnp.where(jnp.broadcast_to(use_merge, out.shape), merged, out)
            lse = jnp.where(jnp.broadcast_to(use_merge, lse.shape), big + jnp.log2(total), lse)

            @pl.when(~(split & (wg_idx == 1)))
            def _():
                qo_smem[...] = out.astype(dtype)
                lse_smem[...] = lse
                plgpu.commit_smem()

            out_row = cta * rows_per_cta + wg_idx * block_q
            plgpu.copy_smem_to_gmem(qo_smem, out_ref.at[pl.ds(out_row, block_q)])
            plgpu.copy_smem_to_gmem(lse_smem, lse_ref.at[pl.ds(out_row, block_q)])
            plgpu.wait_smem_to_gmem(0)

        @pl.when(wg_idx == 2)
        def _memory_wg():
            plgpu.set_max_registers(40, action="decrease")
            last = jnp.int32(num_entries - 1)

            def load_entries(entry):
                """Sizes and starts of entries entry .. entry + boxes - 1: all that a
                tile beginning in `entry` can touch."""
                ents = [jnp.minimum(entry + e, last) for e in range(boxes)]
                return ([esize_ref[group, x] for x in ents],
                        [estart_ref[group, x] for x in ents])

            def fetch(row8s, slot, src_ref, dst_smem, barriers):
                def one_copy():
                    plgpu.copy_gmem_to_smem(
                        src_ref.at[problem, pl.ds(row8s[0] * ALIGN, block_kv)],
                        dst_smem.at[slot], barriers.at[slot])
                    for _ in range(boxes - 1):  # the barrier counts one arrival per box
                        plgpu.barrier_arrive(barriers.at[slot])

                contiguous = pieces.one_copy(row8s, config)
                if contiguous is True:
                    one_copy()
                    return
                pl.when(contiguous)(one_copy)

                @pl.when(~contiguous)
                def _():
                    for b in range(boxes):
                        plgpu.copy_gmem_to_smem(
                            src_ref.at[problem, pl.ds(row8s[b] * ALIGN, box)],
                            dst_smem.at[slot, pl.ds(b * box, box)], barriers.at[slot])

            def body(step, carry):
                entry, j, sizes, starts = carry
                slot = lax.rem(step, jnp.int32(stages))
                row8s, valids, rel, j = pieces.walk(sizes, starts, j, step * boxes,
                                                    total_boxes, config)
                if rel is not None:
                    entry = entry + rel
                    # Software pipeline: the next tile's entry loads are in flight while
                    # this one waits for its slot and issues its copies.
                    sizes, starts = load_entries(entry)

                # The words are computed before waiting for the slot: only the stores
                # must wait.
                word_vals = pieces.words(valids, config)

                @pl.when(step >= stages)
                def _():
                    plgpu.barrier_wait(k_consumed.at[slot])

                for w, word in enumerate(word_vals):
                    mask_smem[slot, w] = word
                fetch(row8s, slot, k_ref, k_smem, k_barriers)

                @pl.when(step >= stages)
                def _():
                    plgpu.barrier_wait(v_consumed.at[slot])

                fetch(row8s, slot, v_ref, v_smem, v_barriers)
                return entry, j, sizes, starts

            sizes, starts = load_entries(jnp.int32(0))
            lax.fori_loop(0, kv_steps, body, (jnp.int32(0), jnp.int32(0), sizes, starts))

    def entry(q_ref, k_ref, v_ref, cta_ref, total_ref, estart_ref, esize_ref, out_ref, lse_ref):
        tiling = plgpu.TilingTransform((8, 64))
        swizzle = plgpu.SwizzleTransform(128)
        scratch = [
            plgpu.SMEM((2, block_q, head_dim), dtype, transforms=(tiling, swizzle)),
            plgpu.SMEM((stages, block_kv, head_dim), dtype, transforms=(tiling, swizzle)),
            plgpu.SMEM((stages, block_kv, head_dim), dtype, transforms=(tiling, swizzle)),
            plgpu.SMEM((2, block_q), jnp.float32),
            plgpu.SMEM((stages, words), jnp.int32),
        ]
        pl.run_scoped(
            lambda *args: kernel(q_ref, k_ref, v_ref, cta_ref, total_ref, estart_ref, esize_ref,
                                 out_ref, lse_ref, args),
            scratch,
            (plgpu.Barrier(num_arrivals=boxes, num_barriers=stages),
             plgpu.Barrier(num_arrivals=boxes, num_barriers=stages),
             plgpu.Barrier(num_barriers=2)),
            (plgpu.Barrier(num_arrivals=2, num_barriers=stages),) * 2,
            plgpu.Barrier(num_arrivals=2),
            plgpu.Barrier(num_arrivals=1),
            collective_axes="wg",
        )

    out_rows = num_ctas * rows_per_cta
    out, lse2 = plgpu.kernel(
        entry,
        out_type=(jax.ShapeDtypeStruct((out_rows, head_dim), dtype),
                  jax.ShapeDtypeStruct((out_rows,), jnp.float32)),
        grid=(num_ctas,),
        grid_names=("cta",),
        num_threads=3,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(approx_math=True, reduction_scratch_bytes=0),
    )(q, k, v, work.cta, work.total_boxes, work.entry_start, work.entry_size)
    return out, lse2 * jnp.float32(math.log(2.0))


def sparse_flash_attention_reference(q, k, v, work: SparseWorkList, *, scale: float,
                                     config: SparseTuningConfig = SparseTuningConfig()):
    """Pure JAX, the kernel's function from the same work list (same slots, same tiles
    and masks through `expand_tiles`): q [N, Lq, D]; k, v [N, Lk, D] (the layouts) ->
    (out [C * 2 * block_q, D], lse [C * 2 * block_q]).

    One CTA at a time (lax.map), each over all its query cluster's tiles at once;
    rows of a CTA past its real rows are computed like the kernel's. For tests."""
    n, _, d = q.shape
    rpc, box = config.rows_per_cta, config.box_rows
    num_tiles, kv_start, kv_mask = expand_tiles(work, config, k.shape[1])
    tiles = kv_start.shape[1]
    col = jnp.arange(config.block_kv)
    words = jax.lax.bitcast_convert_type(kv_mask, jnp.uint32)[..., col // MASK_WORD_BITS]
    mask_bits = (words >> (col % MASK_WORD_BITS).astype(jnp.uint32)) & 1  # [G, T, block_kv]
    key_rows = (kv_start[..., None] * ALIGN + jnp.arange(box)).reshape(
        kv_start.shape[0], tiles * config.block_kv)

    def one(cta):
        problem, g, q0, rows = cta[0], cta[1], cta[2] * ALIGN, cta[3]
        qi = lax.dynamic_slice_in_dim(jnp.pad(q[problem], ((0, rpc), (0, 0))), q0, rpc)
        live = (jnp.arange(tiles) < jnp.where(rows > 0, num_tiles[g], 0))[:, None]
        valid = ((mask_bits[g] != 0) & live).reshape(-1)
        kr = jnp.clip(key_rows[g], 0, k.shape[1] - 1)
        ki, vi = k[problem][kr], v[problem][kr]
        s = jnp.einsum("qd,kd->qk", qi, ki, preferred_element_type=jnp.float32) * scale
        s = jnp.where(valid[None, :], s, -jnp.inf)
        m = jnp.max(s, axis=-1, keepdims=True)
        m = jnp.where(jnp.isfinite(m), m, 0.0)
        p = jnp.exp(s - m)
        l = jnp.sum(p, axis=-1, keepdims=True)
        o = jnp.einsum("qk,kd->qd", p.astype(v.dtype), vi, preferred_element_type=jnp.float32)
        o = o / jnp.where(l > 0, l, 1.0)
        lse = jnp.where(l > 0, m + jnp.log(jnp.where(l > 0, l, 1.0)), -jnp.inf)[:, 0]
        return o.astype(q.dtype), lse

    out, lse = lax.map(one, work.cta)
    return out.reshape(-1, d), lse.reshape(-1)


def gather_rows(out_slots: jax.Array, lse_slots: jax.Array, work: SparseWorkList,
                order: jax.Array):
    """Back to token order: out_slots [C * R, D], lse_slots [C * R] and the query
    permutation `order` [N, Sq] (permuted row p holds token order[n, p]) ->
    (out [N, Sq, D], lse [N, Sq]). One scatter of int32 slot indices, one row gather."""
    n, sq = order.shape
    slot_of_token = jax.vmap(lambda o, s: jnp.zeros_like(s).at[o].set(s, unique_indices=True))(
        order, work.q_slot)
    return out_slots[slot_of_token], lse_slots[slot_of_token]


__all__ = ["KernelPieces", "PRODUCTION_PIECES", "SparseTuningConfig", "SparseWorkList",
           "build_kernel", "build_work_list", "gather_rows", "sparse_flash_attention",
           "sparse_flash_attention_reference"]
