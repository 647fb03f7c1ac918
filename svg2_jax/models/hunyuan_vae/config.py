"""`HunyuanVideoVAEConfig`: the HunyuanVideo VAE's architecture and its released preset.

Field names and defaults follow diffusers' `AutoencoderKLHunyuanVideo` config keys
(diffusers 0.42.1, `models/autoencoders/autoencoder_kl_hunyuan_video.py`), so a diffusers
`config.json` maps onto it one to one (`from_diffusers`).
"""

from __future__ import annotations

import dataclasses
import math
import os

from svg2_jax.models.common import config as common_config
from svg2_jax.models.common.config import ModelConfig, pos_int

DIFFUSERS_CLASS = "AutoencoderKLHunyuanVideo"
DOWN_BLOCK = "HunyuanVideoDownBlock3D"
UP_BLOCK = "HunyuanVideoUpBlock3D"


@dataclasses.dataclass(frozen=True)
class HunyuanVideoVAEConfig(ModelConfig):
    """HunyuanVideo VAE architecture (diffusers' `AutoencoderKLHunyuanVideo` config keys).

    Attributes:
      in_channels, out_channels: pixel channels; latent_channels: z (the encoder outputs 2z).
      down_block_types, up_block_types: one entry per level, only diffusers' one block type.
      block_out_channels: width per level (the decoder walks them in reverse).
      layers_per_block: resnets per encoder level (the decoder has one more).
      act_fn: "silu" (diffusers' "swish" is the same function).
      norm_num_groups: GroupNorm groups (every width must divide by it).
      scaling_factor: the pipelines' latent scale (`latents.scale` / `unscale`).
      spatial_compression_ratio: levels i < log2(it) halve H and W (encoder and decoder).
      temporal_compression_ratio: 4 (the only ratio diffusers' decoder builds): the two
        levels before the last also halve time.
      mid_block_add_attention: causal (frame-masked) single-head attention in the mid blocks.
    """

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 16
    down_block_types: tuple[str, ...] = (DOWN_BLOCK,) * 4
    up_block_types: tuple[str, ...] = (UP_BLOCK,) * 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    act_fn: str = "silu"
    norm_num_groups: int = 32
    scaling_factor: float = 0.476986
    spatial_compression_ratio: int = 8
    temporal_compression_ratio: int = 4
    mid_block_add_attention: bool = True

    def __post_init__(self):
        for name in ("down_block_types", "up_block_types", "block_out_channels"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        problems = self.positive_int_problems(("in_channels", "out_channels", "latent_channels",
                                               "layers_per_block", "norm_num_groups"))
        n = len(self.block_out_channels)
        if not n or not all(pos_int(c) for c in self.block_out_channels):
            problems.append(f"block_out_channels must be positive ints, got "
                            f"{self.block_out_channels!r}")
        elif pos_int(self.norm_num_groups) and any(c % self.norm_num_groups
                                                   for c in self.block_out_channels):
            problems.append(f"every block_out_channels {self.block_out_channels} must be "
                            f"divisible by norm_num_groups={self.norm_num_groups}")
        for name, kind in (("down_block_types", DOWN_BLOCK), ("up_block_types", UP_BLOCK)):
            types = getattr(self, name)
            if len(types) != n or any(t != kind for t in types):
                problems.append(f"{name} must be {n} x {kind!r} (the only block diffusers "
                                f"builds), got {types!r}")
        if self.act_fn not in ("silu", "swish"):
            problems.append(f"act_fn must be 'silu' (or its alias 'swish'), got {self.act_fn!r}")
        if self.temporal_compression_ratio != 4:
            problems.append("temporal_compression_ratio must be 4 (the only ratio diffusers' "
                            f"decoder builds), got {self.temporal_compression_ratio!r}")
        r = self.spatial_compression_ratio
        if not pos_int(r) or r & (r - 1):
            problems.append(f"spatial_compression_ratio must be a power of 2, got {r!r}")
        if not self.scaling_factor > 0:
            problems.append(f"scaling_factor must be > 0, got {self.scaling_factor!r}")
        if problems:
            raise ValueError("HunyuanVideoVAEConfig: " + "; ".join(problems))

    def spatial_levels(self) -> tuple[bool, ...]:
        """Per level, whether it resamples H and W (diffusers: i < log2(spatial ratio))."""
        k = int(math.log2(self.spatial_compression_ratio))
        return tuple(i < k for i in range(len(self.block_out_channels)))

    def temporal_levels(self) -> tuple[bool, ...]:
        """Per level, whether it resamples time (diffusers, ratio 4: the 2 levels before
        the last)."""
        n, k = len(self.block_out_channels), int(math.log2(self.temporal_compression_ratio))
        return tuple(n - 1 - k <= i < n - 1 for i in range(n))

    @property
    def spatial_compression(self) -> int:
        """The compression the blocks make (the configured ratio if there are levels enough)."""
        return 2 ** sum(self.spatial_levels())

    @property
    def temporal_compression(self) -> int:
        return 2 ** sum(self.temporal_levels())


# Source: diffusers' scripts/convert_hunyuan_video_to_diffusers.py `convert_vae` builds
# `AutoencoderKLHunyuanVideo()`, the defaults above (block_out_channels (128, 256, 512, 512),
# 2 layers per block, 16 latent channels, 32 groups, scaling_factor 0.476986, 8x / 4x,
# mid-block attention), converted from the official T2V release's VAE (its keys are
# diffusers' already: the script renames nothing): hunyuanvideo-community/HunyuanVideo/vae.
PRESETS: dict[str, HunyuanVideoVAEConfig] = {"hunyuan-video-vae": HunyuanVideoVAEConfig()}


def get_config(preset: "str | HunyuanVideoVAEConfig | os.PathLike") -> HunyuanVideoVAEConfig:
    """A preset name, a HunyuanVideoVAEConfig (returned as is), or a diffusers config.json."""
    return common_config.get_config(preset, HunyuanVideoVAEConfig, PRESETS, "HunyuanVideo VAE")
