"""Pallas GPU kernels for SVG2.

kmeans_assign: fused k-means assignment (Pallas on Triton). A one-hot-matmul update
kernel was also written and measured 5x slower than XLA's segment_sum on an H200 at
K=1000 (6.1 vs 1.1 ms), so the update step stays in XLA (docs/performance.md).
"""

from pallas_kernels.kmeans_assign import AssignTuningConfig, kmeans_assign, kmeans_assign_reference

__all__ = ["AssignTuningConfig", "kmeans_assign", "kmeans_assign_reference"]
