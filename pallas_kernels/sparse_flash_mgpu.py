"""Variable-block sparse flash attention on Hopper (Pallas, Mosaic GPU backend).

The FA3 structure of jax's `pallas/ops/gpu/attention_mgpu.py` (two consumer
warpgroups that ping-pong their softmax against each other's wgmma, one TMA producer
warpgroup, a ring of K/V stages) driven by a work list instead of a dense grid
(`pallas_kernels/sparse_worklist.py`): each CTA owns 2 x 64 query rows of one query
cluster and walks that cluster's KV tiles, each tile assembled in shared memory from
`box_rows`-row TMA boxes of the selected key clusters, with the rows that are not
real keys masked through a per-tile bitmask.

Layout: q [N, Lq, D], k and v [N, Lk, D] in the padded permuted layout of the work
list (clusters contiguous, each starting at a multiple of 8 rows; `padded_index`), N =
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

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels.sparse_worklist import (ALIGN, MASK_WORD_BITS, SparseTuningConfig,
                                            SparseWorkList, build_work_list)

_DTYPES = (jnp.float16, jnp.bfloat16)
_HEAD_DIMS = (64, 128)


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
    n = q.shape[0]
    if work.q_slot.shape[0] != n:
        raise ValueError(f"sparse_flash_attention: work list was built for "
                         f"{work.q_slot.shape[0]} problems, q has {n}")
    for name, x in (("q", q), ("k", k)):
        if x.shape[1] % ALIGN:
            raise ValueError(f"sparse_flash_attention: padded {name} length {x.shape[1]} must "
                             f"be a multiple of {ALIGN} (use q_padded_len / k_padded_len)")
    if work.num_kv_tiles.shape[0] % n:
        raise ValueError("sparse_flash_attention: work list does not match N")
    if (work.kv_start.shape[1] != config.boxes_per_tile
            or work.kv_mask.shape[1] != config.mask_words):
        raise ValueError(f"sparse_flash_attention: work list boxes/mask words "
                         f"{work.kv_start.shape[1]}/{work.kv_mask.shape[1]} do not match "
                         f"{config}")
    for name in ("cta", "num_kv_tiles", "kv_start", "kv_mask", "q_slot"):
        if getattr(work, name).dtype != jnp.int32:
            raise ValueError(f"sparse_flash_attention: work.{name} must be int32")


def sparse_flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, work: SparseWorkList, *,
                           scale: float, config: SparseTuningConfig = SparseTuningConfig()):
    """Sparse attention of the work list on Hopper: q [N, Lq, D]; k, v [N, Lk, D]
    (padded permuted layout) -> (out [C * 2 * block_q, D] in q.dtype, lse [C * 2 * block_q] float32).

    A query row with no selected key gets out = 0 and lse = -inf."""
    _check(q, k, v, work, config)
    return _sparse_flash(q, k, v, work, float(scale), config)


@jax.jit(static_argnames=("scale", "config"))
def _sparse_flash(q, k, v, work, scale, config):
    import jax.experimental.pallas as pl
    import jax.experimental.pallas.mosaic_gpu as plgpu

    _, _, head_dim = q.shape
    dtype = q.dtype
    block_q, block_kv, box = config.block_q, config.block_kv, config.box_rows
    boxes, words, stages = config.boxes_per_tile, config.mask_words, config.max_concurrent_steps
    tiles_per_cluster = work.tiles_per_cluster
    num_ctas = work.cta.shape[0]
    rows_per_cta = config.rows_per_cta
    log2e = math.log2(math.e)
    scale_log2 = scale * log2e

    def kernel(q_ref, k_ref, v_ref, cta_ref, ntiles_ref, start_ref, mask_ref, out_ref, lse_ref,
               scoped):
        cta = lax.axis_index("cta")
        smem_buffers, buffer_barriers, consumed_barriers, schedule_barrier = scoped
        wg_idx = lax.axis_index("wg")
        qo_smem2, k_smem, v_smem, lse_smem2 = smem_buffers
        k_barriers, v_barriers, q_barriers = buffer_barriers
        k_consumed, v_consumed = consumed_barriers
        problem = cta_ref[cta, 0]
        group = cta_ref[cta, 1]
        q_first = cta_ref[cta, 2] * ALIGN
        rows = cta_ref[cta, 3]
        kv_steps = jnp.where(rows > 0, ntiles_ref[group], 0)
        tile_base = group * tiles_per_cluster

        def perform_schedule_barrier():
            plgpu.barrier_arrive(schedule_barrier)
            plgpu.barrier_wait(schedule_barrier)

        @pl.when(wg_idx < 2)
        def _compute_wg():
            plgpu.set_max_registers(232, action="increase")
            qo_smem = qo_smem2.at[wg_idx]
            lse_smem = lse_smem2.at[wg_idx]
            plgpu.copy_gmem_to_smem(
                q_ref.at[problem, pl.ds(q_first + wg_idx * block_q, block_q)],
                qo_smem, q_barriers.at[wg_idx])
            plgpu.barrier_wait(q_barriers.at[wg_idx])

            m_i = plgpu.layout_cast(jnp.full((block_q,), -jnp.inf, jnp.float32),
                                    plgpu.Layout.WGMMA.reduce(1))
            l_i = plgpu.layout_cast(jnp.full((block_q,), 0, jnp.float32),
                                    plgpu.Layout.WGMMA.reduce(1))
            acc = plgpu.layout_cast(jnp.full((block_q, head_dim), 0, jnp.float32),
                                    plgpu.Layout.WGMMA)

            @pl.when(kv_steps > 0)
            def _():
                plgpu.barrier_wait(k_barriers.at[0])

            pl.when(wg_idx == 1)(perform_schedule_barrier)

            def kv_loop(kv_step, carry):
                acc, m_i, l_i = carry
                slot = lax.rem(kv_step, jnp.array(stages, kv_step.dtype))
                tile = tile_base + kv_step
                mask_words = [mask_ref[tile, w] for w in range(words)]

                def compute_qk(acc_ref):
                    plgpu.wgmma(acc_ref, qo_smem, k_smem.at[slot].transpose((1, 0)))
                    perform_schedule_barrier()
                    return acc_ref[...]

                qk = pl.run_scoped(compute_qk, plgpu.ACC((block_q, block_kv), jnp.float32))
                plgpu.barrier_arrive(k_consumed.at[slot])

                # Keys that are not real (tails of partial boxes, unused box slots)
                # get -inf: each tile holds at least one real key, so the running max
                # stays finite and exp2 gives them exactly 0.
                col = plgpu.broadcasted_iota(jnp.int32, (block_kv,), 0,
                                             layout=plgpu.Layout.WGMMA.reduce(0))
                word = mask_words[-1]
                for w in range(words - 2, -1, -1):
                    word = jnp.where(col < (w + 1) * MASK_WORD_BITS, mask_words[w], word)
                bit = lax.shift_right_logical(word, col & (MASK_WORD_BITS - 1)) & 1
                bias = jnp.where(bit != 0, jnp.float32(0), jnp.float32(-jnp.inf))
                qk = qk + lax.broadcast_in_dim(bias, qk.shape, [1])

                # m is kept scaled by scale * log2(e) so that p is one FMA + exp2.
                m_ij = jnp.maximum(m_i, qk.max(axis=1) * scale_log2)
                alpha = jnp.exp2(m_i - m_ij)
                m_i = m_ij
                p = jnp.exp2(qk * scale_log2 - lax.broadcast_in_dim(m_ij, qk.shape, [0]))
                acc *= lax.broadcast_in_dim(alpha, acc.shape, [0])
                l_i *= alpha
                p16 = p.astype(dtype)

                def end_softmax_barriers():
                    plgpu.barrier_arrive(schedule_barrier)
                    plgpu.barrier_wait(v_barriers.at[slot])
                    plgpu.barrier_wait(schedule_barrier)

                l_i += p.sum(axis=1)
                acc, l_i, m_i, p16 = lax.optimization_barrier((acc, l_i, m_i, p16))
                end_softmax_barriers()

                def compute_pv(acc_ref):
                    plgpu.wgmma(acc_ref, p16, v_smem.at[slot])
                    wait_step = kv_step + 1
                    wait_slot = lax.rem(wait_step, jnp.array(stages, kv_step.dtype))

                    @pl.when(wait_step < kv_steps)
                    def _wait():
                        plgpu.barrier_wait(k_barriers.at[wait_slot])

                acc = pl.run_state(compute_pv)(plgpu.ACC.init(acc))
                plgpu.barrier_arrive(v_consumed.at[slot])
                return acc, m_i, l_i

            acc, m_i, l_i = lax.fori_loop(0, kv_steps, kv_loop, (acc, m_i, l_i))
            pl.when(wg_idx == 0)(perform_schedule_barrier)

            # No selected key: l = 0, acc = 0 -> out 0, lse -inf (never 0/0).
            l_safe = jnp.where(l_i == 0, jnp.float32(1), l_i)
            acc /= lax.broadcast_in_dim(l_safe, (block_q, head_dim), [0])
            qo_smem[...] = acc.astype(dtype)
            lse_smem[...] = m_i + jnp.log2(l_i)
            plgpu.commit_smem()
            out_row = cta * rows_per_cta + wg_idx * block_q
            plgpu.copy_smem_to_gmem(qo_smem, out_ref.at[pl.ds(out_row, block_q)])
            plgpu.copy_smem_to_gmem(lse_smem, lse_ref.at[pl.ds(out_row, block_q)])
            plgpu.wait_smem_to_gmem(0)

        @pl.when(wg_idx == 2)
        def _memory_wg():
            plgpu.set_max_registers(40, action="decrease")

            def fetch(step, slot, src_ref, dst_smem, barriers):
                tile = tile_base + step
                for b in range(boxes):
                    start = start_ref[tile, b] * ALIGN
                    plgpu.copy_gmem_to_smem(src_ref.at[problem, pl.ds(start, box)],
                                            dst_smem.at[slot, pl.ds(b * box, box)],
                                            barriers.at[slot])

            for i in range(stages):
                @pl.when(i < kv_steps)
                def _():
                    fetch(i, i, k_ref, k_smem, k_barriers)
                    fetch(i, i, v_ref, v_smem, v_barriers)

            @pl.loop(0, kv_steps - stages)
            def _kv_loop(kv_step):
                step = kv_step + stages
                slot = lax.rem(kv_step, jnp.array(stages, kv_step.dtype))
                plgpu.barrier_wait(k_consumed.at[slot])
                fetch(step, slot, k_ref, k_smem, k_barriers)
                plgpu.barrier_wait(v_consumed.at[slot])
                fetch(step, slot, v_ref, v_smem, v_barriers)

    def entry(q_ref, k_ref, v_ref, cta_ref, ntiles_ref, start_ref, mask_ref, out_ref, lse_ref):
        tiling = plgpu.TilingTransform((8, 64))
        swizzle = plgpu.SwizzleTransform(128)
        scratch = [
            plgpu.SMEM((2, block_q, head_dim), dtype, transforms=(tiling, swizzle)),
            plgpu.SMEM((stages, block_kv, head_dim), dtype, transforms=(tiling, swizzle)),
            plgpu.SMEM((stages, block_kv, head_dim), dtype, transforms=(tiling, swizzle)),
            plgpu.SMEM((2, block_q), jnp.float32),
        ]
        pl.run_scoped(
            lambda *args: kernel(q_ref, k_ref, v_ref, cta_ref, ntiles_ref, start_ref, mask_ref,
                                 out_ref, lse_ref, args),
            scratch,
            (plgpu.Barrier(num_arrivals=boxes, num_barriers=stages),
             plgpu.Barrier(num_arrivals=boxes, num_barriers=stages),
             plgpu.Barrier(num_barriers=2)),
            (plgpu.Barrier(num_arrivals=2, num_barriers=stages),) * 2,
            plgpu.Barrier(num_arrivals=2),
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
        compiler_params=plgpu.CompilerParams(approx_math=True),
    )(q, k, v, work.cta, work.num_kv_tiles, work.kv_start, work.kv_mask)
    return out, lse2 * jnp.float32(math.log(2.0))


def sparse_flash_attention_reference(q, k, v, work: SparseWorkList, *, scale: float,
                                     config: SparseTuningConfig = SparseTuningConfig()):
    """Pure JAX, the kernel's function from the same work list (same slots, same
    masks): q [N, Lq, D]; k, v [N, Lk, D] (padded layout) -> (out [C * 2 * block_q, D], lse [...]).

    One CTA at a time (lax.map), each over all its tiles at once: for tests."""
    n, sq, d = q.shape
    rpc, box = config.rows_per_cta, config.box_rows
    tiles = work.tiles_per_cluster
    col = jnp.arange(config.block_kv)
    words = jax.lax.bitcast_convert_type(work.kv_mask, jnp.uint32)[:, col // MASK_WORD_BITS]
    mask_bits = (words >> (col % MASK_WORD_BITS).astype(jnp.uint32)) & 1  # [tiles, block_kv]
    key_rows = (work.kv_start[:, :, None] * ALIGN + jnp.arange(box)).reshape(-1, config.block_kv)

    def one(cta):
        problem, g, q0, rows = cta[0], cta[1], cta[2] * ALIGN, cta[3]
        qi = lax.dynamic_slice_in_dim(jnp.pad(q[problem], ((0, rpc), (0, 0))), q0, rpc)
        t = g * tiles + jnp.arange(tiles)
        live = (jnp.arange(tiles) < jnp.where(rows > 0, work.num_kv_tiles[g], 0))[:, None]
        valid = ((mask_bits[t] != 0) & live).reshape(-1)
        kr = jnp.clip(key_rows[t].reshape(-1), 0, k.shape[1] - 1)
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


__all__ = ["SparseTuningConfig", "SparseWorkList", "build_work_list", "gather_rows",
           "sparse_flash_attention", "sparse_flash_attention_reference"]
