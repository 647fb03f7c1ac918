"""umT5 text encoder (Wan2.1's; transformers' `UMT5EncoderModel`) in Flax NNX.

See `model.py` for the model, `load.py` for checkpoints, `svg2_jax.text.wan` for the
prompt encoding the Wan pipeline runs.
"""

from svg2_jax.models.umt5.config import PRESETS, UMT5Config, get_config
from svg2_jax.models.umt5.model import UMT5EncoderModel
from svg2_jax.models.umt5.load import load  # noqa: E402  (the function shadows the module)

__all__ = ["PRESETS", "UMT5Config", "UMT5EncoderModel", "get_config", "load"]
