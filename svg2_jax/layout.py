"""The Hopper kernel's inputs from SVG2's clustering and selection: the work list
(`pallas_kernels.sparse_worklist`), the queries in the query layout of the tuning's
`query_tiles` (padded per cluster, or contiguous for spanning tiles) and the keys and
values in the key layout. The "pallas" and "pallas_reference" backends run the kernel
(or its twin) on it; benchmarks time it alone. `used_blocks` says which pairs a tiling
uses, for the quality benchmark."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from pallas_kernels import sparse_worklist as wl
from svg2_jax.clustering import Clustering
from svg2_jax.permute import cluster_order, inverse_order, permute, unpermute
from svg2_jax.selection import Selection


class PallasLayout(NamedTuple):
    """work: the SparseWorkList; q: [N, Lq, D] permuted queries in the query layout
    (`wl.q_layout_index`); k, v: [N, Lk, D] in the key layout; q_order: [N, Sq] the
    query permutation (for `gather_rows`)."""

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


class PallasWork(NamedTuple):
    """work: the SparseWorkList; q_order [N, Sq], k_order [N, Sk]: the query and key
    permutations (permuted row p holds token order[n, p])."""

    work: wl.SparseWorkList
    q_order: jax.Array
    k_order: jax.Array


def pallas_work(clustering: Clustering, selection: Selection, tuning: wl.SparseTuningConfig,
                key_order: str = "co_selection") -> PallasWork:
    """The work list of a call's clustering and selection and the permutations that lay
    out its queries and keys. key_order: one of KEY_ORDERS."""
    if key_order not in KEY_ORDERS:
        raise ValueError(f"pallas_layout: key_order must be one of {tuple(KEY_ORDERS)}, "
                         f"got {key_order!r}")
    qk, kk = clustering.q, clustering.k
    sq, sk = qk.labels.shape[1], kk.labels.shape[1]
    k_perm = KEY_ORDERS[key_order](clustering, selection)       # layout position -> cluster
    k_rank = inverse_order(k_perm)                              # cluster -> layout position
    q_order = cluster_order(qk.labels)
    k_order = cluster_order(jnp.take_along_axis(k_rank, kk.labels, axis=-1))
    k_sizes = jnp.take_along_axis(kk.sizes, k_perm, axis=-1)
    selected = jnp.take_along_axis(selection.selected, k_perm[:, None, :], axis=-1)
    work = wl.build_work_list(qk.sizes, k_sizes, selected, sq, sk, tuning)
    return PallasWork(work, q_order, k_order)


def pallas_layout(qn: jax.Array, kn: jax.Array, vn: jax.Array, clustering: Clustering,
                  selection: Selection, tuning: wl.SparseTuningConfig,
                  key_order: str = "co_selection") -> PallasLayout:
    """qn [N, Sq, D]; kn, vn [N, Sk, D]; the call's clustering and selection; the
    kernel's tuning -> PallasLayout. key_order: one of KEY_ORDERS."""
    (_, sq, _), sk = qn.shape, kn.shape[1]
    sizes = clustering.q.sizes
    work, q_order, k_order = pallas_work(clustering, selection, tuning, key_order)
    q_idx = wl.q_layout_index(q_order, sizes, wl.q_layout_len(sq, sizes.shape[1], tuning),
                              tuning)
    k_idx = wl.key_layout_index(k_order, wl.k_layout_len(sk, tuning))
    return PallasLayout(work, permute(qn, q_idx), permute(kn, k_idx), permute(vn, k_idx),
                        q_order)


def used_blocks(clustering: Clustering, selection: Selection, tuning: wl.SparseTuningConfig):
    """The pairs the kernel uses under tuning.query_tiles, as a block mask in token order:
    (q_group [N, Sq] int32 each query token's group, group_selected [N, G, KC] bool) ->
    query token t attends to key token u when group_selected[n, q_group[n, t],
    k_label(u)]. Clusters tiles: the selection itself; spanning tiles: each token's
    CTA and the union of its clusters' selections (`wl.query_groups`)."""
    qk = clustering.q
    q_order = cluster_order(qk.labels)
    group, group_selected = wl.query_groups(qk.sizes, selection.selected,
                                            qk.labels.shape[1], tuning)
    return unpermute(group, q_order), group_selected
