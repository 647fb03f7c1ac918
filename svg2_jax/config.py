"""SVG2 hyperparameters as one frozen (hashable, jit-static) dataclass."""

from __future__ import annotations

import dataclasses
from typing import Literal

from pallas_kernels.sparse_worklist import SparseTuningConfig
from svg2_jax.backends import SPARSE_BACKENDS
from svg2_jax.kmeans import IMPLS

Backend = Literal["auto", "pallas", "pallas_reference", "jax", "masked_dense"]
KMeansImpl = Literal["auto", "xla", "pallas"]

BACKENDS = ("auto",) + tuple(SPARSE_BACKENDS)
KMEANS_IMPLS = ("auto",) + IMPLS


@dataclasses.dataclass(frozen=True)
class SVG2Config:
    """Settings of one SVG2 attention call.

    Defaults are the reference's (svg-project/Sparse-VideoGen) Wan 720p settings:
    QC=300 query clusters, KC=1000 key clusters, top_p 0.9, at least 10% of the
    key clusters kept, 50 k-means iterations on a cold start and 2 when warm
    started from the previous call's centroids.

    Attributes:
      num_q_clusters: QC, k-means clusters over the queries of each (batch, head).
      num_k_clusters: KC, k-means clusters over the keys of each (batch, head).
      top_p: per query cluster, key clusters are kept by descending attention
        mass until the cumulative mass reaches top_p (the crossing cluster is
        kept). In (0, 1]; 1 keeps every non-empty key cluster.
      min_kc_ratio: at least int(min_kc_ratio * KC) non-empty key clusters are
        kept per query cluster, whatever their mass.
      kmeans_iters_cold: iterations when there is no cache (random init).
      kmeans_iters_warm: iterations when warm-started from the cache.
      kmeans_tol: early stop when the largest centroid shift (L2) is below it.
      backend: sparse attention implementation, a name of `backends.SPARSE_BACKENDS`
        ("pallas": the Hopper kernel; "pallas_reference": its pure-JAX twin; "jax":
        exact and portable, O(S^2) work; "masked_dense": small tests only) or "auto":
        "pallas" on a Hopper GPU with bf16/fp16 inputs and a supported head dim, "jax"
        otherwise (`backends.resolve_backend`).
      kmeans_impl: "xla" (chunked matmul + argmin, then segment_sum), "pallas" (the
        fused Triton assignment kernel, which never writes the [S, K] distances, then
        segment_sum; GPU only), "auto" (pallas on GPU, the fastest measured there, see
        docs/performance.md; xla elsewhere: `clustering.resolve_kmeans_impl`).
      q_tile: query rows per step of the "jax" backend (bounds its memory to
        B * H * q_tile * S floats).
      kmeans_chunk: tokens per chunk in the XLA k-means assignment (bounds the
        distance matrix to N * kmeans_chunk * K floats).
      target_density: None (SVG2's top-p rule) or a fixed budget: per query cluster,
        key clusters by descending mass until this fraction of the keys is kept
        (`selection.select_by_density`; a control for benchmarks on random weights).
      kernel: the "pallas" and "pallas_reference" backends' tuning (KV tile rows,
        rows per TMA box, pipeline stages, tail splitting, CTA order).
    """

    num_q_clusters: int = 300
    num_k_clusters: int = 1000
    top_p: float = 0.9
    min_kc_ratio: float = 0.10
    kmeans_iters_cold: int = 50
    kmeans_iters_warm: int = 2
    kmeans_tol: float = 1e-4
    backend: Backend = "auto"
    kmeans_impl: KMeansImpl = "auto"
    q_tile: int = 256
    kmeans_chunk: int = 8192
    target_density: float | None = None
    kernel: SparseTuningConfig = SparseTuningConfig()

    def __post_init__(self):
        problems = []
        for name in ("num_q_clusters", "num_k_clusters", "kmeans_iters_cold",
                     "kmeans_iters_warm", "q_tile", "kmeans_chunk"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                problems.append(f"{name} must be a positive int, got {value!r}")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not 0.0 <= self.min_kc_ratio <= 1.0:
            problems.append(f"min_kc_ratio must be in [0, 1], got {self.min_kc_ratio!r}")
        if not self.kmeans_tol >= 0.0:
            problems.append(f"kmeans_tol must be >= 0, got {self.kmeans_tol!r}")
        if self.backend not in BACKENDS:
            problems.append(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.kmeans_impl not in KMEANS_IMPLS:
            problems.append(f"kmeans_impl must be one of {KMEANS_IMPLS}, got "
                            f"{self.kmeans_impl!r}")
        if self.target_density is not None and not 0.0 < self.target_density <= 1.0:
            problems.append(f"target_density must be None or in (0, 1], got "
                            f"{self.target_density!r}")
        if not isinstance(self.kernel, SparseTuningConfig):
            problems.append(f"kernel must be a SparseTuningConfig, got "
                            f"{type(self.kernel).__name__}")
        if problems:
            raise ValueError("SVG2Config: " + "; ".join(problems))

    @property
    def min_k_clusters(self) -> int:
        """The floor on kept key clusters per query cluster, as the reference computes it."""
        return int(self.min_kc_ratio * self.num_k_clusters)
