"""svg2-jax: Sparse VideoGen2 (semantic-aware permutation sparse attention) in JAX."""

from pallas_kernels.sparse_worklist import SparseTuningConfig
from svg2_jax.attention import SVG2Stats, svg2_attention, svg2_kmeans
from svg2_jax.clustering import SVG2Cache
from svg2_jax.config import SVG2Config

__all__ = ["SVG2Cache", "SVG2Config", "SVG2Stats", "SparseTuningConfig", "svg2_attention",
           "svg2_kmeans"]
__version__ = "0.1.0"
