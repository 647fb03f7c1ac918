"""Video diffusion transformers with pluggable (dense / SVG2) self-attention."""
