"""Pallas GPU kernels for SVG2.

kmeans_assign: fused k-means assignment (Pallas on Triton); kmeans_assign_update: the
same pass also accumulates the update's per-cluster sums with atomics. (A one-hot-matmul
update kernel was measured 5x slower than XLA's segment_sum on an H200 at K=1000, 6.1
vs 1.1 ms, and dropped: docs/performance.md.)
"""

from pallas_kernels.kmeans_assign import (AssignTuningConfig, kmeans_assign,
                                          kmeans_assign_reference, kmeans_assign_update)

__all__ = ["AssignTuningConfig", "kmeans_assign", "kmeans_assign_reference",
           "kmeans_assign_update"]
