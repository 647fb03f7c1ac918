"""The Hopper kernel's inputs from SVG2's clustering and selection: the work list
(`pallas_kernels.sparse_worklist`), the queries in the padded permuted layout and the
keys and values in the key layout. The "pallas" and "pallas_reference" backends run
the kernel (or its twin) on it; benchmarks time it alone."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from pallas_kernels import sparse_worklist as wl
from svg2_jax.clustering import Clustering
from svg2_jax.permute import cluster_order, inverse_order, permute
from svg2_jax.selection import Selection


class PallasLayout(NamedTuple):
    """work: the SparseWorkList; q: [N, Lq, D] padded permuted queries; k, v: [N, Lk, D]
    in the key layout; q_order: [N, Sq] the query permutation (for `gather_rows`)."""

    work: wl.SparseWorkList
    q: jax.Array
    k: jax.Array
    v: jax.Array
    q_order: jax.Array


def _co_selection(clustering: Clustering, selection: Selection):
    return wl.co_selection_order(selection.mass, clustering.k.sizes)


def _label(clustering: Clustering, selection: Selection):
    sizes = clustering.k.sizes
    return jnp.broadcast_to(jnp.arange(sizes.shape[1], dtype=jnp.int32), sizes.shape)


# Orders of the key clusters in the key layout: order(clustering, selection) ->
# [N, KC] int32, position i of the layout holds key cluster order[n, i].
# "co_selection" (the library's): clusters that the same query clusters select sit
# together and merge into runs (`co_selection_order`, from the selection's mass);
# "label": label order (for benchmarks).
KEY_ORDERS = {"co_selection": _co_selection, "label": _label}


def pallas_layout(qn: jax.Array, kn: jax.Array, vn: jax.Array, clustering: Clustering,
                  selection: Selection, tuning: wl.SparseTuningConfig,
                  key_order: str = "co_selection") -> PallasLayout:
    """qn [N, Sq, D]; kn, vn [N, Sk, D]; the call's clustering and selection; the
    kernel's tuning -> PallasLayout. key_order: one of KEY_ORDERS."""
    if key_order not in KEY_ORDERS:
        raise ValueError(f"pallas_layout: key_order must be one of {tuple(KEY_ORDERS)}, "
                         f"got {key_order!r}")
    (_, sq, _), sk = qn.shape, kn.shape[1]
    qk, kk = clustering.q, clustering.k
    k_perm = KEY_ORDERS[key_order](clustering, selection)       # layout position -> cluster
    k_rank = inverse_order(k_perm)                              # cluster -> layout position
    q_order = cluster_order(qk.labels)
    k_order = cluster_order(jnp.take_along_axis(k_rank, kk.labels, axis=-1))
    k_sizes = jnp.take_along_axis(kk.sizes, k_perm, axis=-1)
    selected = jnp.take_along_axis(selection.selected, k_perm[:, None, :], axis=-1)
    work = wl.build_work_list(qk.sizes, k_sizes, selected, sq, sk, tuning)
    q_idx = wl.padded_index(q_order, qk.sizes, wl.q_padded_len(sq, qk.sizes.shape[1], tuning))
    k_idx = wl.key_layout_index(k_order, wl.k_layout_len(sk, tuning))
    return PallasLayout(work, permute(qn, q_idx), permute(kn, k_idx), permute(vn, k_idx),
                        q_order)
