"""`HunyuanVideoConfig`: the HunyuanVideo transformer's architecture, and the released preset.

Field names and defaults follow the keys of diffusers' `HunyuanVideoTransformer3DModel`
config (diffusers 0.42.1, `models/transformers/transformer_hunyuan_video.py`), so a
diffusers `config.json` maps onto it one to one (`HunyuanVideoConfig.from_diffusers`).
"""

from __future__ import annotations

import dataclasses
import json
import os

from svg2_jax.models.common import config as common_config
from svg2_jax.models.common.config import ModelConfig, pos_int

DIFFUSERS_CLASS = "HunyuanVideoTransformer3DModel"
IMAGE_CONDITION_TYPES = (None, "latent_concat")


@dataclasses.dataclass(frozen=True)
class HunyuanVideoConfig(ModelConfig):
    """HunyuanVideo DiT architecture (diffusers' `HunyuanVideoTransformer3DModel` config keys).

    Attributes:
      in_channels, out_channels: latent channels in / predicted (out_channels None means
        in_channels, as diffusers does).
      num_attention_heads, attention_head_dim: inner dim = heads * head_dim, shared by the
        token refiner, the dual- and the single-stream blocks.
      num_layers: dual-stream blocks (separate video and text weights, joint attention).
      num_single_layers: single-stream blocks (one set of weights over [video | text]).
      num_refiner_layers: blocks of the text token refiner (its MLP ratio is fixed at 4,
        whatever mlp_ratio says: diffusers does not pass mlp_ratio to it).
      mlp_ratio: MLP hidden width / inner dim in the dual and single blocks.
      patch_size, patch_size_t: spatial and temporal patch of the 3-D patch embedding.
      qk_norm: only "rms_norm" (per-head RMSNorm with a learned scale) is built here.
      guidance_embeds: the guidance-distilled model takes the guidance scale as an input
        (embedded like a timestep); False for the undistilled model.
      text_embed_dim: width of the LLM text states (LLaVA-Llama-3-8B: 4096).
      pooled_projection_dim: width of the pooled CLIP-L text embedding (768).
      rope_theta, rope_axes_dim: 3-D rotary embedding over (frame, height, width) of the
        video tokens; the axes' dims are rotated channel counts and sum to the head dim.
      image_condition_type: None (text-to-video) or "latent_concat" (image latents
        concatenated to the input channels: only in_channels changes). diffusers'
        "token_replace" variant uses different blocks and is not implemented here.
    """

    in_channels: int = 16
    out_channels: int | None = 16
    num_attention_heads: int = 24
    attention_head_dim: int = 128
    num_layers: int = 20
    num_single_layers: int = 40
    num_refiner_layers: int = 2
    mlp_ratio: float = 4.0
    patch_size: int = 2
    patch_size_t: int = 1
    qk_norm: str = "rms_norm"
    guidance_embeds: bool = True
    text_embed_dim: int = 4096
    pooled_projection_dim: int = 768
    rope_theta: float = 256.0
    rope_axes_dim: tuple[int, ...] = (16, 56, 56)
    image_condition_type: str | None = None

    def __post_init__(self):
        # lists from JSON become tuples so the config stays hashable (jit-static)
        object.__setattr__(self, "rope_axes_dim", tuple(self.rope_axes_dim))
        if self.out_channels is None:
            object.__setattr__(self, "out_channels", self.in_channels)
        problems = self.positive_int_problems((
            "in_channels", "out_channels", "num_attention_heads", "attention_head_dim",
            "num_layers", "num_single_layers", "num_refiner_layers", "patch_size",
            "patch_size_t", "text_embed_dim", "pooled_projection_dim"))
        if self.qk_norm != "rms_norm":
            problems.append(f"qk_norm must be 'rms_norm' (the only q/k norm built here), got "
                            f"{self.qk_norm!r}")
        if not (isinstance(self.mlp_ratio, (int, float)) and self.mlp_ratio > 0):
            problems.append(f"mlp_ratio must be > 0, got {self.mlp_ratio!r}")
        if not (isinstance(self.rope_theta, (int, float)) and self.rope_theta > 0):
            problems.append(f"rope_theta must be > 0, got {self.rope_theta!r}")
        axes = self.rope_axes_dim
        if len(axes) != 3 or not all(pos_int(a) and a % 2 == 0 for a in axes):
            problems.append(f"rope_axes_dim must be 3 positive even ints (rotated pairs per "
                            f"axis x 2), got {axes!r}")
        elif pos_int(self.attention_head_dim) and sum(axes) != self.attention_head_dim:
            problems.append(f"rope_axes_dim {axes} must sum to attention_head_dim="
                            f"{self.attention_head_dim} (every channel is rotated)")
        if not isinstance(self.guidance_embeds, bool):
            problems.append(f"guidance_embeds must be a bool, got {self.guidance_embeds!r}")
        if self.image_condition_type not in IMAGE_CONDITION_TYPES:
            problems.append(f"image_condition_type must be one of {IMAGE_CONDITION_TYPES} "
                            f"('token_replace' is not implemented), got "
                            f"{self.image_condition_type!r}")
        if problems:
            raise ValueError("HunyuanVideoConfig: " + "; ".join(problems))

    @property
    def mlp_dim(self) -> int:
        """Hidden width of the dual blocks' FFNs and the single blocks' MLP (as diffusers:
        int(inner_dim * mlp_ratio))."""
        return int(self.inner_dim * self.mlp_ratio)

    @property
    def patch(self) -> tuple[int, int, int]:
        """(p_t, p_h, p_w)."""
        return (self.patch_size_t, self.patch_size, self.patch_size)

    @property
    def num_attention_layers(self) -> int:
        """Self-attention layers, numbered dual 0..num_layers-1 then single."""
        return self.num_layers + self.num_single_layers


# Source, checked against diffusers 0.42.1: the defaults of
# `HunyuanVideoTransformer3DModel.__init__` (24 heads x 128 = 3072, 20 dual + 40 single
# blocks, 2 refiner blocks, mlp_ratio 4, patch 1 x 2 x 2, rms q/k norm, guidance embedding,
# text 4096, pooled 768, rope theta 256 over (16, 56, 56)), which diffusers'
# scripts/convert_hunyuan_video_to_diffusers.py instantiates as is for the official
# HunyuanVideo (t2v 720p, guidance-distilled) checkpoint; its single-block split also
# hardcodes hidden_size = 3072. single_file_utils identifies the model by the key
# `txt_in.individual_token_refiner.blocks.0.adaLN_modulation.1.bias`.
PRESETS: dict[str, HunyuanVideoConfig] = {
    "hunyuan-video-t2v-720p": HunyuanVideoConfig(),
}


def get_config(preset: "str | HunyuanVideoConfig | os.PathLike") -> HunyuanVideoConfig:
    """A preset name, a HunyuanVideoConfig (returned as is), or a path to a diffusers
    config.json."""
    return common_config.get_config(preset, HunyuanVideoConfig, PRESETS, "HunyuanVideo")


def is_hunyuan_config(preset) -> bool:
    """Whether `preset` names a HunyuanVideo architecture: a HunyuanVideoConfig, a preset
    name, or a config.json with the HunyuanVideo-only key `num_single_layers` whose
    `_class_name`, if any, is diffusers' HunyuanVideoTransformer3DModel."""
    if isinstance(preset, HunyuanVideoConfig):
        return True
    if isinstance(preset, str) and preset in PRESETS:
        return True
    if isinstance(preset, (str, os.PathLike)) and str(preset).endswith(".json") \
            and os.path.isfile(preset):
        try:
            with open(preset) as f:
                raw = json.load(f)
            return raw.get("_class_name", DIFFUSERS_CLASS) == DIFFUSERS_CLASS \
                and "num_single_layers" in raw
        except (OSError, ValueError, AttributeError):
            return False
    return False
