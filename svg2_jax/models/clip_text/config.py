"""`CLIPTextConfig`: the CLIP text transformer's architecture (transformers'
`CLIPTextConfig` keys), and the released preset HunyuanVideo's second text encoder uses."""

from __future__ import annotations

import dataclasses
import os

from svg2_jax.models.common import config as common_config
from svg2_jax.models.common.text_encoder import TransformersConfig, activation_problems

ARCHITECTURE = "CLIPTextModel"
# transformers' CLIPTextModel pools at the highest token id when eos_token_id is this value
# (configs written before transformers PR #24773 carry it), else at the first eos_token_id
LEGACY_EOS_TOKEN_ID = 2


class CLIPEncoderConfig(TransformersConfig):
    """What the text and the vision tower's configs share: the encoder layers' fields
    (hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, hidden_act,
    layer_norm_eps), their checks and the head dim."""

    def encoder_problems(self, positive_ints: tuple[str, ...]) -> list[str]:
        """One message per bad field: `positive_ints` not positive ints, an unknown
        activation, heads not dividing the width, a non-positive eps."""
        problems = self.positive_int_problems(positive_ints)
        problems += activation_problems(self.hidden_act, "hidden_act")
        if not problems and self.hidden_size % self.num_attention_heads:
            problems.append(f"hidden_size ({self.hidden_size}) must be a multiple of "
                            f"num_attention_heads ({self.num_attention_heads})")
        if not self.layer_norm_eps > 0:
            problems.append(f"layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        return problems

    @property
    def attention_head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig(CLIPEncoderConfig):
    """CLIP text transformer (transformers 5.24 `models/clip`, `CLIPTextModel`).

    Attributes:
      vocab_size, hidden_size: the token embedding table [vocab_size, hidden_size].
      max_position_embeddings: the learned position table (and the longest input).
      intermediate_size: hidden width of each layer's MLP.
      num_hidden_layers, num_attention_heads: encoder layers and heads (head dim =
        hidden / heads).
      hidden_act: the MLP activation ("quick_gelu" for OpenAI's CLIP).
      layer_norm_eps: epsilon of the LayerNorms.
      eos_token_id: where the pooled output is taken: the first position holding this id,
        or, when it is 2 (`LEGACY_EOS_TOKEN_ID`), the position of the highest id.
    """

    MODEL_TYPES = ("clip_text_model",)
    ARCHITECTURE = ARCHITECTURE
    INERT = frozenset({"projection_dim"})  # the projection head is CLIPTextModelWithProjection's

    # defaults: transformers' (a config.json without a key means its default)
    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407

    def __post_init__(self):
        problems = self.encoder_problems((
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "max_position_embeddings"))
        if not isinstance(self.eos_token_id, int) or isinstance(self.eos_token_id, bool):
            problems.append(f"eos_token_id must be an int, got {self.eos_token_id!r}")
        if problems:
            raise ValueError("CLIPTextConfig: " + "; ".join(problems))


# clip-vit-l-text: the text tower of OpenAI's CLIP ViT-L/14 as HunyuanVideo's text_encoder_2
# config.json gives it (hunyuanvideo-community/HunyuanVideo; the same as the text_config of
# openai/clip-vit-large-patch14): 12 layers of 768 (12 heads), MLP 3072, quick_gelu,
# 77 positions, eos_token_id 2 (pooled at the highest id, <|endoftext|>).
PRESETS: dict[str, CLIPTextConfig] = {
    "clip-vit-l-text": CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
        layer_norm_eps=1e-5, eos_token_id=LEGACY_EOS_TOKEN_ID),
}


def get_config(preset: "str | CLIPTextConfig | os.PathLike") -> CLIPTextConfig:
    """A preset name, a CLIPTextConfig (returned as is), or a path to a transformers
    config.json."""
    return common_config.get_config(preset, CLIPTextConfig, PRESETS, "CLIP text",
                                    json_kind="transformers")
