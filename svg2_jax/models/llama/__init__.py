"""Llama decoder stack as a text encoder (HunyuanVideo's; transformers' `LlamaModel`) in
Flax NNX.

See `model.py` for the model, `load.py` for checkpoints, `svg2_jax.text.hunyuan` for the
prompt encoding the HunyuanVideo pipeline runs.
"""

from svg2_jax.models.llama.config import PRESETS, LlamaConfig, get_config
from svg2_jax.models.llama.model import LlamaModel
from svg2_jax.models.llama.load import load  # noqa: E402  (the function shadows the module)

__all__ = ["LlamaConfig", "LlamaModel", "PRESETS", "get_config", "load"]
