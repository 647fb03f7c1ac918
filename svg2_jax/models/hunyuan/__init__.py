"""HunyuanVideo (t2v 720p) video DiT in Flax NNX with pluggable joint self-attention.

See `model.py` for the calling and jit pattern, `load.py` for checkpoints.
"""

from svg2_jax.models.hunyuan.config import (PRESETS, HunyuanVideoConfig, get_config,
                                            is_hunyuan_config)
from svg2_jax.models.hunyuan.model import (HunyuanVideoSingleTransformerBlock,
                                           HunyuanVideoTransformer3DModel,
                                           HunyuanVideoTransformerBlock, hunyuan_forward)
from svg2_jax.models.hunyuan.load import load  # noqa: E402  (the function shadows the module)

__all__ = ["PRESETS", "HunyuanVideoConfig", "HunyuanVideoSingleTransformerBlock",
           "HunyuanVideoTransformer3DModel", "HunyuanVideoTransformerBlock", "get_config",
           "hunyuan_forward", "is_hunyuan_config", "load"]
