"""The sparse attention step of SVG2 behind one seam: every backend computes attention
restricted to the selected (query cluster, key cluster) blocks, on per-head problems,
with the same signature (`SparseBackend`), and is chosen by name from SPARSE_BACKENDS;
"auto" is resolved in `resolve_backend` only.

| name | what |
|---|---|
| "pallas" | the Hopper (sm_90) variable-block kernel (`pallas_kernels/sparse_flash_mgpu.py`) on `pallas_layout`: work proportional to the selected blocks; bf16/fp16, head dim 64 or 128 |
| "pallas_reference" | the same path through the kernel's pure-JAX twin (tests of that path on any device) |
| "jax" | exact, in query tiles of `config.q_tile` rows, never S x S in memory (O(S^2) work: portable, not fast) |
| "masked_dense" | the full S x S masked attention (small test problems only) |
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import jax

from pallas_kernels import sparse_flash_mgpu as sf
from svg2_jax.clustering import Clustering
from svg2_jax.layout import pallas_layout, used_blocks
from svg2_jax.permute import cluster_order, permute, unpermute
from svg2_jax.selection import Selection
from svg2_jax.sparse_attention import sparse_attention_chunked, sparse_attention_masked_dense

if TYPE_CHECKING:
    from svg2_jax.config import SVG2Config


class SparseBackend(Protocol):
    def __call__(self, qn: jax.Array, kn: jax.Array, vn: jax.Array, clustering: Clustering,
                 selection: Selection, scale: float, config: SVG2Config
                 ) -> tuple[jax.Array, jax.Array]:
        """qn [N, Sq, D]; kn, vn [N, Sk, D] in token order (N = batch x heads); the
        call's clustering and selection (query token t attends to key token u when
        selection.selected[n, q_label(t), k_label(u)]) -> (out [N, Sq, D] in qn.dtype,
        lse [N, Sq] float32: the natural log of the softmax denominator, scale
        included). A query with no selected key gets out 0 and lse -inf, so partial
        attentions over disjoint key sets merge exactly (`merge_attention`)."""


def jax_backend(qn, kn, vn, clustering: Clustering, selection: Selection, scale,
                config: SVG2Config):
    """Exact, on the permuted layout in query tiles (`sparse_attention_chunked`)."""
    q_labels, k_labels = clustering.q.labels, clustering.k.labels
    q_order, k_order = cluster_order(q_labels), cluster_order(k_labels)
    out, lse = sparse_attention_chunked(
        permute(qn, q_order), permute(kn, k_order), permute(vn, k_order),
        permute(q_labels, q_order), permute(k_labels, k_order), selection.selected, scale,
        config.q_tile)
    return unpermute(out, q_order), unpermute(lse, q_order)


def masked_dense_backend(qn, kn, vn, clustering: Clustering, selection: Selection, scale,
                         config: SVG2Config):
    """The whole S x S mask in token order (`sparse_attention_masked_dense`)."""
    return sparse_attention_masked_dense(qn, kn, vn, clustering.q.labels, clustering.k.labels,
                                         selection.selected, scale)


def _through_layout(kernel, qn, kn, vn, clustering, selection, scale, config):
    layout = pallas_layout(qn, kn, vn, clustering, selection, config.kernel)
    out_slots, lse_slots = kernel(layout.q, layout.k, layout.v, layout.work, scale=scale,
                                  config=config.kernel)
    return sf.gather_rows(out_slots, lse_slots, layout.work, layout.q_order)


def pallas_backend(qn, kn, vn, clustering: Clustering, selection: Selection, scale,
                   config: SVG2Config):
    """The Hopper kernel (tuning `config.kernel`) on `pallas_layout`, rows gathered back
    to token order."""
    return _through_layout(sf.sparse_flash_attention, qn, kn, vn, clustering, selection,
                           scale, config)


def pallas_reference_backend(qn, kn, vn, clustering: Clustering, selection: Selection, scale,
                             config: SVG2Config):
    """As "pallas", with the kernel's pure-JAX twin (`sparse_flash_attention_reference`)."""
    return _through_layout(sf.sparse_flash_attention_reference, qn, kn, vn, clustering,
                           selection, scale, config)


SPARSE_BACKENDS: dict[str, SparseBackend] = {
    "pallas": pallas_backend,
    "pallas_reference": pallas_reference_backend,
    "jax": jax_backend,
    "masked_dense": masked_dense_backend,
}


def attended_blocks(backend: str, clustering: Clustering, selection: Selection,
                    config: SVG2Config):
    """The blocks the SPARSE_BACKENDS entry `backend` attends to exactly, as (q_group
    [N, Sq] int32, group_selected [N, G, KC] bool): query token t attends to key token u
    when group_selected[n, q_group[n, t], k_label(u)]. The Pallas backends' tiles may use
    more pairs than were selected (spanning query tiles: `layout.used_blocks`); the others
    attend to the selection itself (groups = query clusters). The compensation stands in
    for the rest, so it must not count a pair twice."""
    if backend in ("pallas", "pallas_reference"):
        return used_blocks(clustering, selection, config.kernel)
    return clustering.q.labels, selection.selected


def is_hopper() -> bool:
    """Whether the default device is an sm_90 GPU (what the Pallas kernel targets)."""
    dev = jax.devices()[0]
    return dev.platform == "gpu" and str(getattr(dev, "compute_capability", "")).startswith("9")


def resolve_backend(config: SVG2Config, dtype=None, head_dim: int | None = None) -> str:
    """The SPARSE_BACKENDS name config.backend means for inputs of this dtype and head
    dim: "auto" is "pallas" on a Hopper GPU when the kernel supports them, "jax"
    otherwise. "pallas" on another device is an error."""
    if config.backend == "auto":
        return "pallas" if is_hopper() and sf.supports(dtype, head_dim) else "jax"
    if config.backend == "pallas" and not is_hopper():
        raise ValueError(
            "SVG2Config.backend='pallas' needs a Hopper (sm_90) GPU; this device is "
            f"{jax.devices()[0].device_kind!r}. Use backend='jax' (exact, portable) instead.")
    return config.backend
