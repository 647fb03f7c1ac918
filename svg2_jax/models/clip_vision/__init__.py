"""CLIP vision tower (Wan2.1 image-to-video's image encoder; transformers'
`CLIPVisionModel`) in Flax NNX, and its image preprocessing (`preprocess`).

See `model.py` for the model, `load.py` for checkpoints.
"""

from svg2_jax.models.clip_vision.config import CLIPVisionConfig, PRESETS, get_config
from svg2_jax.models.clip_vision.model import CLIPVisionModel, penultimate_hidden_states
from svg2_jax.models.clip_vision.load import load  # noqa: E402  (the function shadows the module)

__all__ = ["CLIPVisionConfig", "CLIPVisionModel", "PRESETS", "get_config", "load",
           "penultimate_hidden_states"]
