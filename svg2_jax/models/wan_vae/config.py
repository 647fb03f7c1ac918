"""`WanVAEConfig`: the Wan2.1 / Wan2.2 video VAE's architecture, and the released presets.

Field names and defaults follow diffusers' `AutoencoderKLWan` config keys (diffusers
0.42.1, `models/autoencoders/autoencoder_kl_wan.py`), misspelt `temperal_downsample`
included, so a diffusers `config.json` maps onto it one to one (`from_diffusers`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Self

from svg2_jax.models.common import config as common_config
from svg2_jax.models.common.config import ModelConfig, pos_int

DIFFUSERS_CLASS = "AutoencoderKLWan"

# Wan2.1's per-channel latent statistics: the defaults of `AutoencoderKLWan.__init__`
# (diffusers 0.42.1), also in the Wan2.1 diffusers repos' vae/config.json.
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
# Wan2.2's: `vae22_diffusers_config` in diffusers' scripts/convert_wan_to_diffusers.py,
# the config of Wan-AI/Wan2.2-TI2V-5B-Diffusers/vae.
WAN22_LATENTS_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667)
WAN22_LATENTS_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744)

# Keys released config.json files carry that diffusers 0.42.1 no longer reads: Wan2.2's
# `clip_output: false` (a parameter of diffusers' Wan2.2 preview, since removed: decode
# always clamps to [-1, 1], which the uint8 frames do anyway).
OBSOLETE_KEYS = ("clip_output",)


@dataclasses.dataclass(frozen=True)
class WanVAEConfig(ModelConfig):
    """Wan video VAE architecture (diffusers' `AutoencoderKLWan` config keys).

    Attributes:
      base_dim: encoder width of the first level; decoder_base_dim: the decoder's (None:
        base_dim). Level i has width base * dim_mult[i].
      z_dim: latent channels (the encoder outputs 2 z_dim: mean and log-variance).
      num_res_blocks: residual blocks per encoder level (the decoder has one more).
      attn_scales: must be empty (see __post_init__).
      temperal_downsample: per down level but the last, whether it halves time too (the
        decoder upsamples in the reverse order).
      dropout: inference no-op.
      latents_mean, latents_std: z_dim per-channel statistics the pipelines normalise with.
      is_residual: Wan2.2's residual down/up blocks (averaging / duplicating shortcuts).
      in_channels, out_channels: pixel channels after patchify (3 * patch_size**2).
      patch_size: spatial patchify before the encoder / after the decoder (Wan2.2: 2).
      scale_factor_temporal, scale_factor_spatial: the compression the pipelines assume.
    """

    base_dim: int = 96
    decoder_base_dim: int | None = None
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    dropout: float = 0.0
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD
    is_residual: bool = False
    in_channels: int = 3
    out_channels: int = 3
    patch_size: int | None = None
    scale_factor_temporal: int | None = 4
    scale_factor_spatial: int | None = 8

    def __post_init__(self):
        for name in ("dim_mult", "attn_scales", "temperal_downsample", "latents_mean",
                     "latents_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        problems = self.positive_int_problems(("base_dim", "z_dim", "num_res_blocks",
                                               "in_channels", "out_channels"))
        if self.decoder_base_dim is not None and not pos_int(self.decoder_base_dim):
            problems.append(f"decoder_base_dim must be None or a positive int, got "
                            f"{self.decoder_base_dim!r}")
        if not self.dim_mult or not all(pos_int(m) for m in self.dim_mult):
            problems.append(f"dim_mult must be positive ints, got {self.dim_mult!r}")
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            problems.append(f"temperal_downsample needs {len(self.dim_mult) - 1} entries (one "
                            f"per down level but the last), got {self.temperal_downsample!r}")
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            problems.append(f"latents_mean and latents_std need z_dim={self.z_dim} entries, got "
                            f"{len(self.latents_mean)} and {len(self.latents_std)}")
        if self.patch_size is not None and not pos_int(self.patch_size):
            problems.append(f"patch_size must be None or a positive int, got {self.patch_size!r}")
        if self.attn_scales:
            # diffusers builds the blocks but its encoder then calls them with a feature
            # cache they do not take (a TypeError in 0.42.1): nothing to be faithful to
            problems.append(f"attn_scales must be empty (as in every release; diffusers "
                            f"0.42.1 cannot encode with them), got {self.attn_scales!r}")
        if problems:
            raise ValueError("WanVAEConfig: " + "; ".join(problems))

    @classmethod
    def from_diffusers(cls, config: dict) -> Self:
        """From a diffusers config dict; `OBSOLETE_KEYS` are dropped as diffusers drops them,
        other unknown keys are an error."""
        return super().from_diffusers({k: v for k, v in config.items()
                                       if k not in OBSOLETE_KEYS})

    def to_diffusers(self) -> dict:
        """Keyword arguments for `AutoencoderKLWan` (its config.json): sequences as lists,
        which its __init__ concatenates."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in super().to_diffusers().items()}

    @property
    def decoder_dim(self) -> int:
        return self.base_dim if self.decoder_base_dim is None else self.decoder_base_dim

    @property
    def latent_channels(self) -> int:
        """z_dim, under the name the HunyuanVideo VAE config has."""
        return self.z_dim

    @property
    def patch(self) -> int:
        """Spatial patchify factor (1 when patch_size is None)."""
        return self.patch_size or 1

    @property
    def temporal_compression(self) -> int:
        """Frames per latent frame after the first (2 per temporal down level)."""
        return 2 ** sum(self.temperal_downsample)

    @property
    def spatial_compression(self) -> int:
        """Pixels per latent pixel (2 per down level but the last, times the patch)."""
        return 2 ** (len(self.dim_mult) - 1) * self.patch


# Sources (diffusers 0.42.1 and its scripts/convert_wan_to_diffusers.py):
# - wan2.1-vae: `convert_vae()` builds `AutoencoderKLWan()`, the defaults (base_dim 96, z_dim
#   16, dim_mult (1, 2, 4, 4), 2 res blocks, temperal_downsample (F, T, T), Wan2.1 latent
#   statistics); the VAE of every Wan2.1 diffusers repo and of Wan2.2 T2V/I2V-A14B.
# - wan2.2-vae: `vae22_diffusers_config` there (base_dim 160, decoder_base_dim 256, z_dim 48,
#   is_residual, 12 in/out channels, patch_size 2, scale factors 4 / 16, Wan2.2 latent
#   statistics): the VAE of Wan2.2-TI2V-5B.
PRESETS: dict[str, WanVAEConfig] = {
    "wan2.1-vae": WanVAEConfig(),
    "wan2.2-vae": WanVAEConfig(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True,
                               in_channels=12, out_channels=12, patch_size=2,
                               scale_factor_temporal=4, scale_factor_spatial=16,
                               latents_mean=WAN22_LATENTS_MEAN, latents_std=WAN22_LATENTS_STD),
}


def get_config(preset: "str | WanVAEConfig | os.PathLike") -> WanVAEConfig:
    """A preset name, a WanVAEConfig (returned as is), or a path to a diffusers config.json."""
    return common_config.get_config(preset, WanVAEConfig, PRESETS, "Wan VAE")
