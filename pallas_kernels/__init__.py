"""Pallas GPU kernels for SVG2.

kmeans_assign: fused k-means assignment (Pallas on Triton): the [S, K] distances never
reach HBM. The update step stays XLA's segment_sum: two fused alternatives measured on
an H200 were slower (a one-hot-matmul update kernel, 6.1 vs 1.1 ms at K=1000, and an
assign kernel that also accumulated the sums with atomics, 4.4 vs 2.9 ms per step);
see docs/performance.md.
"""

from pallas_kernels.kmeans_assign import AssignTuningConfig, kmeans_assign, kmeans_assign_reference

__all__ = ["AssignTuningConfig", "kmeans_assign", "kmeans_assign_reference"]
