"""SVG2 hyperparameters as one frozen (hashable, jit-static) dataclass."""

from __future__ import annotations

import dataclasses
from typing import Literal

from pallas_kernels.sparse_worklist import SparseTuningConfig
from svg2_jax.backends import SPARSE_BACKENDS
from svg2_jax.kmeans import IMPLS
from svg2_jax.selection import SELECTION_RULES

Backend = Literal["auto", "pallas", "pallas_reference", "jax", "masked_dense"]
KMeansImpl = Literal["auto", "xla", "pallas"]
SelectionRule = Literal["error", "svg2"]
ErrorPool = Literal["head", "layer"]

BACKENDS = ("auto",) + tuple(SPARSE_BACKENDS)
KMEANS_IMPLS = ("auto",) + IMPLS
SELECTIONS = tuple(SELECTION_RULES)
ERROR_POOLS = ("head", "layer")
# The paper's exact SVG2 (svg-project/Sparse-VideoGen): `SVG2Config.reference()`, and
# SVG2Config's defaults.
REFERENCE_RULE = dict(selection="svg2", compensation=False)
# Issue #13's error-aware selection with compensation: `SVG2Config.error_aware()`.
ERROR_AWARE_RULE = dict(selection="error", error_tolerance=0.02, compensation=True,
                        compensate_own_key=True)


@dataclasses.dataclass(frozen=True)
class SVG2Config:
    """Settings of one SVG2 attention call.

    The clustering defaults are the reference's (svg-project/Sparse-VideoGen) Wan 720p
    settings: QC=300 query clusters, KC=1000 key clusters, 50 k-means iterations on a
    cold start and 2 when warm started from the previous call's centroids. The block
    selection defaults are the paper's rule (`REFERENCE_RULE`, also spelled
    `SVG2Config.reference()`): selection "svg2", top_p 0.9 with at least 10% of the key
    clusters, no compensation. `SVG2Config.error_aware()` is issue #13's method
    (error-aware selection at error_tolerance 0.02, left-out key clusters compensated):
    the better rule at equal density on quality (docs/quality.md), but as implemented
    (plain XLA passes over [heads, S, KC] fp32 arrays) its extra work costs more GPU time
    than it saves in the sparse kernel: on an H200 at 720p it adds ~80 ms to a 208 ms dense
    attention call (docs/performance.md, docs/bench/overhead_compensation_720p.json), so
    the reference rule stays the default until a fused kernel brings that cost near its
    FLOP estimate (~2% of dense).

    Attributes:
      num_q_clusters: QC, k-means clusters over the queries of each (batch, head).
      num_k_clusters: KC, k-means clusters over the keys of each (batch, head).
      selection: the block selection rule, a name of `selection.SELECTION_RULES`:
        "error" (error-aware, per head: `selection.select_by_error`) or "svg2" (the
        reference's centroid top-p per query cluster).
      error_tolerance: "error" rule without target_density: the estimated relative
        output error the compensated blocks may add per head (tau, >= 0; 0 computes
        every block). Measured errors are a few times tau (docs/quality.md).
      error_pool: "error" rule: the blocks compete for the tolerance (or density budget)
        within each head ("head"), or across all heads of a batch element ("layer": one
        total per call, spent where the estimated error is; each head's output then
        depends on the others, so a call that holds only some of a layer's heads,
        head-parallel attention's `head_group`, refuses it).
      compensation: the key clusters a query's cluster did not select still enter its
        softmax through their mean value, weighted by their estimated mass
        (`compensation.compensate`); False gives the plain sparse attention.
      compensate_own_key: with compensation in self-attention (Sq == Sk), each query's
        own key (same position) is taken exactly instead of through its cluster.
      top_p: "svg2" rule: per query cluster, key clusters are kept by descending
        attention mass until the cumulative mass reaches top_p (the crossing cluster
        is kept). In (0, 1]; 1 keeps every non-empty key cluster.
      min_kc_ratio: "svg2" rule: at least int(min_kc_ratio * KC) non-empty key clusters
        are kept per query cluster, whatever their mass.
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
        B * H * q_tile * S floats) and of the error estimate and compensation passes
        (B * H * q_tile * KC floats).
      kmeans_chunk: tokens per chunk in the XLA k-means assignment (bounds the
        distance matrix to N * kmeans_chunk * K floats).
      target_density: None (the rule's adaptive criterion: top_p, error_tolerance) or a
        fixed budget: this fraction of the query-key pairs is computed ("svg2": per
        query cluster, key clusters by descending mass until this fraction of the keys,
        `selection.select_by_density`; "error": per head, blocks by estimated error per
        pair). A control for benchmarks on random weights and for budgeted generation.
      kernel: the "pallas" and "pallas_reference" backends' tuning (KV tile rows,
        rows per TMA box, pipeline stages, tail splitting, CTA order).
    """

    num_q_clusters: int = 300
    num_k_clusters: int = 1000
    selection: SelectionRule = "svg2"
    error_tolerance: float = 0.02
    error_pool: ErrorPool = "head"
    compensation: bool = False
    compensate_own_key: bool = True
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
        if self.selection not in SELECTIONS:
            problems.append(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        if (isinstance(self.error_tolerance, bool)
                or not isinstance(self.error_tolerance, (int, float))
                or not 0.0 <= self.error_tolerance < float("inf")):
            problems.append(f"error_tolerance must be a finite number >= 0, got "
                            f"{self.error_tolerance!r}")
        if self.error_pool not in ERROR_POOLS:
            problems.append(f"error_pool must be one of {ERROR_POOLS}, got {self.error_pool!r}")
        for name in ("compensation", "compensate_own_key"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be a bool, got {getattr(self, name)!r}")
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

    @classmethod
    def reference(cls, **changes) -> SVG2Config:
        """The paper's exact SVG2 (svg-project/Sparse-VideoGen): selection "svg2" (centroid
        top-p per query cluster with the min_kc_ratio floor), no compensation; other
        fields as given (defaults: the reference's Wan 720p settings). Its outputs are
        those of the library before issue #13, bit for bit. Equal to `SVG2Config()` today;
        spelled out so that a caller asking for the paper's rule keeps it whatever the
        defaults become."""
        return cls(**{**REFERENCE_RULE, **changes})

    @classmethod
    def error_aware(cls, **changes) -> SVG2Config:
        """Issue #13's method: error-aware selection (`selection.select_by_error`, per head,
        error_tolerance 0.02) with the left-out key clusters compensated, each query's own
        key taken exactly; other fields as given.

        At equal density it is the better rule on quality: it reaches the reference
        rule's output error at <= 0.4x its density (docs/quality.md, target 1). Its
        extra passes (key cluster statistics, the error estimate, the compensation and
        its lse merge) run as plain XLA over [heads, S, KC] fp32 arrays; measured on one
        H200 (docs/performance.md; docs/bench/overhead_compensation_720p.json, _480p.json)
        they add 79.8 ms (38% of the 208.1 ms dense attention) at 720p and 15.3 ms (129%
        of dense) at 480p, more than the sparse kernel saves at the lower density. It is
        the choice where that work is cheap relative to attention (CPU, the "jax"
        backend's exact path, quality studies), and on GPUs once a fused kernel brings its
        cost near the FLOP estimate (~2% of dense at 720p, issue #18)."""
        return cls(**{**ERROR_AWARE_RULE, **changes})

    @property
    def needs_key_stats(self) -> bool:
        """Whether a call computes the key clusters' statistics (`KeyClusterStats`)."""
        return self.compensation or self.selection == "error"

    @property
    def min_k_clusters(self) -> int:
        """The floor on kept key clusters per query cluster, as the reference computes it."""
        return int(self.min_kc_ratio * self.num_k_clusters)
