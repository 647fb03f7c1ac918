"""`CLIPVisionConfig`: the CLIP vision tower's architecture (transformers' `CLIPVisionConfig`
keys), and the released preset Wan2.1's image-to-video models use."""

from __future__ import annotations

import dataclasses
import os

from svg2_jax.models.clip_text.config import CLIPEncoderConfig
from svg2_jax.models.common import config as common_config

ARCHITECTURE = "CLIPVisionModel"


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig(CLIPEncoderConfig):
    """CLIP ViT (transformers 5.24 `models/clip`, `CLIPVisionModel`).

    Attributes:
      hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, hidden_act,
        layer_norm_eps: the encoder layers, as `CLIPTextConfig`'s.
      num_channels: pixel channels in.
      image_size: the square input side (224); positions = (image_size / patch_size)^2 + 1.
      patch_size: the square patch (a stride-patch Conv2d without bias).
    """

    MODEL_TYPES = ("clip_vision_model",)
    ARCHITECTURE = ARCHITECTURE
    # the projection head is CLIPVisionModelWithProjection's (Wan takes hidden states)
    INERT = frozenset({"projection_dim"})

    # defaults: transformers' (a config.json without a key means its default)
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        problems = self.encoder_problems((
            "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_channels", "image_size", "patch_size"))
        if not problems and self.image_size % self.patch_size:
            problems.append(f"image_size ({self.image_size}) must be a multiple of patch_size "
                            f"({self.patch_size})")
        if problems:
            raise ValueError("CLIPVisionConfig: " + "; ".join(problems))

    @property
    def num_positions(self) -> int:
        """Patches plus the class token."""
        return (self.image_size // self.patch_size) ** 2 + 1

    # the names the checkpoint code uses for a patch embedding (a Conv on patches)
    @property
    def in_channels(self) -> int:
        return self.num_channels

    @property
    def patch(self) -> tuple[int, int]:
        return self.patch_size, self.patch_size


# clip-vit-h-14-vision: the vision tower of laion/CLIP-ViT-H-14-laion2B-s32B-b79K, the
# `image_encoder` of Wan2.1's I2V / FLF2V diffusers repos (diffusers'
# scripts/convert_wan_to_diffusers.py loads it from that repo; its vision config and the
# released image_encoder/config.json: 32 layers of 1280 (16 heads), MLP 5120, exact GELU,
# 224 px in 14 px patches -> 257 tokens, eps 1e-5).
PRESETS: dict[str, CLIPVisionConfig] = {
    "clip-vit-h-14-vision": CLIPVisionConfig(
        hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
        num_channels=3, image_size=224, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-5),
}


def get_config(preset: "str | CLIPVisionConfig | os.PathLike") -> CLIPVisionConfig:
    """A preset name, a CLIPVisionConfig (returned as is), or a path to a transformers
    config.json."""
    return common_config.get_config(preset, CLIPVisionConfig, PRESETS, "CLIP vision",
                                    json_kind="transformers")
