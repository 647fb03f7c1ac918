"""Wan video DiT (Wan2.1 T2V 1.3B / 14B, I2V / FLF2V 14B; Wan2.2 A14B experts, TI2V-5B) in
Flax NNX with pluggable self-attention.

See `model.py` for the calling and jit pattern, `load.py` for checkpoints.
"""

from svg2_jax.models.wan.config import PRESETS, WanConfig, get_config
from svg2_jax.models.wan.model import WanTransformer3DModel, WanTransformerBlock, wan_forward
from svg2_jax.models.wan.load import load  # noqa: E402  (the function shadows the module)

__all__ = ["PRESETS", "WanConfig", "WanTransformer3DModel", "WanTransformerBlock", "get_config",
           "load", "wan_forward"]
