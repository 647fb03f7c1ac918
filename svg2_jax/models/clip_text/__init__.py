"""CLIP text transformer (HunyuanVideo's pooled-text encoder; transformers'
`CLIPTextModel`) in Flax NNX.

See `model.py` for the model, `load.py` for checkpoints, `svg2_jax.text.hunyuan` for the
prompt encoding the HunyuanVideo pipeline runs.
"""

from svg2_jax.models.clip_text.config import CLIPTextConfig, PRESETS, get_config
from svg2_jax.models.clip_text.model import CLIPTextModel
from svg2_jax.models.clip_text.load import load  # noqa: E402  (the function shadows the module)

__all__ = ["CLIPTextConfig", "CLIPTextModel", "PRESETS", "get_config", "load"]
