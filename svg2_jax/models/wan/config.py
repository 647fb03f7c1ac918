"""`WanConfig`: the Wan2.1 / Wan2.2 transformer's architecture, and the released presets.

Field names and defaults follow the keys of diffusers' `WanTransformer3DModel` config
(diffusers 0.42.1, `models/transformers/transformer_wan.py`), so a diffusers
`config.json` maps onto it one to one (`WanConfig.from_diffusers`).
"""

from __future__ import annotations

import dataclasses
import os

from svg2_jax.models.common import config as common_config
from svg2_jax.models.common.config import ModelConfig, pos_int

DIFFUSERS_CLASS = "WanTransformer3DModel"


@dataclasses.dataclass(frozen=True)
class WanConfig(ModelConfig):
    """Wan DiT architecture (diffusers' `WanTransformer3DModel` config keys; Wan2.1 and
    Wan2.2 share the module: a Wan2.2 A14B model is two of them, TI2V-5B one).

    Attributes:
      patch_size: (p_t, p_h, p_w) of the 3-D patch embedding.
      num_attention_heads, attention_head_dim: inner dim = heads * head_dim.
      in_channels: latent channels in (16 for T2V; 36 = 16 noise + 4 mask + 16 image
        latents for I2V; 48 for Wan2.2 TI2V-5B, whose image conditioning replaces the
        first latent frame). out_channels: predicted channels (the VAE's z_dim).
      text_dim: width of the text encoder states (UMT5-XXL: 4096).
      freq_dim: width of the sinusoidal timestep embedding.
      ffn_dim: hidden width of each block's GELU-tanh feed-forward.
      num_layers: transformer blocks.
      cross_attn_norm: LayerNorm (with affine) before the cross-attention.
      qk_norm: only "rms_norm_across_heads" exists (diffusers accepts the key but always
        builds RMSNorm over all heads, so any other value would not describe the weights).
      eps: epsilon of the block norms and the q/k RMS norms.
      image_dim: CLIP image-feature width for I2V (1280), None for T2V.
      added_kv_proj_dim: input width of the I2V image key/value projections (equals the
        inner dim, because the image features are first projected to it), None for T2V.
      rope_max_seq_len: positions per axis in the rotary tables (post-patch F, H, W must
        not exceed it).
      pos_embed_seq_len: Wan2.1 FLF2V only: learned position embedding over the
        2 x 257 first/last-frame image tokens; None otherwise.
    """

    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 40
    attention_head_dim: int = 128
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 13824
    num_layers: int = 40
    cross_attn_norm: bool = True
    qk_norm: str = "rms_norm_across_heads"
    eps: float = 1e-6
    image_dim: int | None = None
    added_kv_proj_dim: int | None = None
    rope_max_seq_len: int = 1024
    pos_embed_seq_len: int | None = None

    def __post_init__(self):
        # lists from JSON become tuples so the config stays hashable (jit-static)
        object.__setattr__(self, "patch_size", tuple(self.patch_size))
        problems = self.positive_int_problems((
            "num_attention_heads", "attention_head_dim", "in_channels", "out_channels",
            "text_dim", "freq_dim", "ffn_dim", "num_layers", "rope_max_seq_len"))
        if len(self.patch_size) != 3 or not all(pos_int(p) for p in self.patch_size):
            problems.insert(0, f"patch_size must be 3 positive ints, got {self.patch_size!r}")
        if self.qk_norm != "rms_norm_across_heads":
            problems.append(f"qk_norm must be 'rms_norm_across_heads' (the only q/k norm "
                            f"diffusers builds), got {self.qk_norm!r}")
        if not self.eps > 0:
            problems.append(f"eps must be > 0, got {self.eps!r}")
        d = self.attention_head_dim
        if pos_int(d) and (d % 2 or d < 6):
            # WanRotaryPosEmbed splits D into t = D - 4 (D // 6) and h = w = 2 (D // 6)
            # rotated pairs' worth of channels: all even (and non-empty) iff D is even, >= 6
            problems.append(f"attention_head_dim={d} must be even and >= 6 (rotary split "
                            f"t={d - 4 * (d // 6)}, h=w={2 * (d // 6)})")
        if (self.image_dim is None) != (self.added_kv_proj_dim is None):
            problems.append("image_dim and added_kv_proj_dim must both be set (I2V) or both "
                            f"be None (T2V), got {self.image_dim!r} and {self.added_kv_proj_dim!r}")
        elif self.added_kv_proj_dim is not None and self.added_kv_proj_dim != self.inner_dim:
            problems.append(f"added_kv_proj_dim ({self.added_kv_proj_dim}) must equal the inner "
                            f"dim ({self.inner_dim}): the image features are projected to it "
                            "before the image key/value projections")
        if self.pos_embed_seq_len is not None and (
                self.image_dim is None or not pos_int(self.pos_embed_seq_len)
                or self.pos_embed_seq_len % 2):
            problems.append("pos_embed_seq_len needs an image model and must be a positive even "
                            f"int (2 x image tokens), got {self.pos_embed_seq_len!r}")
        if problems:
            raise ValueError("WanConfig: " + "; ".join(problems))

    @property
    def patch(self) -> tuple[int, int, int]:
        """(p_t, p_h, p_w), the name HunyuanVideoConfig has too."""
        return self.patch_size

    @property
    def num_attention_layers(self) -> int:
        """Self-attention layers (one per block), the name HunyuanVideoConfig has too."""
        return self.num_layers

    @property
    def is_i2v(self) -> bool:
        return self.image_dim is not None


# Sources, checked against diffusers 0.42.1:
# - wan2.1-t2v-14b: the defaults of `WanTransformer3DModel.__init__` (40 heads x 128,
#   40 layers, ffn 13824, text_dim 4096, freq_dim 256, eps 1e-6, cross_attn_norm True,
#   rope_max_seq_len 1024), identical to `get_transformer_config("Wan-T2V-14B")` in
#   diffusers' scripts/convert_wan_to_diffusers.py.
# - wan2.1-t2v-1.3b: scripts/convert_wan_to_diffusers.py `Wan-T2V-1.3B` (12 heads x 128,
#   30 layers, ffn 8960, rest as 14B); single_file_utils `infer_diffusers_model_type`
#   identifies it by patch_embedding out channels 1536 (= 12 x 128).
# - wan2.1-i2v-14b: scripts/convert_wan_to_diffusers.py `Wan-I2V-14B-480p` and `-720p`
#   (same architecture): 14B plus in_channels 36, image_dim 1280, added_kv_proj_dim 5120;
#   single_file_utils identifies it as 5120 out channels with in_channels != 16.
# - wan2.1-flf2v-14b: scripts/convert_wan_to_diffusers.py `Wan-FLF2V-14B-720P`: I2V 14B
#   plus pos_embed_seq_len 2 x 257 (first- and last-frame CLIP tokens).
# The Wan2.2 entries are one expert each (the A14B models have two of that architecture,
# `transformer` and `transformer_2`), from the diffusers repository's
# scripts/convert_wan_to_diffusers.py (main, 2026) and the official Wan2.2 configs
# (wan/configs/wan_{t2v_A14B,i2v_A14B,ti2v_5B}.py: dim, ffn_dim, num_heads, num_layers):
# - wan2.2-t2v-a14b: `Wan2.2-T2V-A14B`: the Wan2.1 T2V 14B architecture.
# - wan2.2-i2v-a14b: `Wan2.2-I2V-14B-720p`: in_channels 36 (16 noise + 4 mask + 16 image
#   latents) and no CLIP image input (image_dim None).
# - wan2.2-ti2v-5b: `Wan2.2-TI2V-5B`: 24 heads x 128 (dim 3072), 30 layers, ffn 14336, 48
#   in/out channels (the Wan2.2 VAE's z_dim).
_14B = dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40)
PRESETS: dict[str, WanConfig] = {
    "wan2.1-t2v-1.3b": WanConfig(num_attention_heads=12, attention_head_dim=128,
                                 ffn_dim=8960, num_layers=30),
    "wan2.1-t2v-14b": WanConfig(**_14B),
    "wan2.1-i2v-14b": WanConfig(**_14B, in_channels=36, image_dim=1280,
                                added_kv_proj_dim=5120),
    "wan2.1-flf2v-14b": WanConfig(**_14B, in_channels=36, image_dim=1280,
                                  added_kv_proj_dim=5120, pos_embed_seq_len=2 * 257),
    "wan2.2-t2v-a14b": WanConfig(**_14B),
    "wan2.2-i2v-a14b": WanConfig(**_14B, in_channels=36),
    "wan2.2-ti2v-5b": WanConfig(num_attention_heads=24, attention_head_dim=128, ffn_dim=14336,
                                num_layers=30, in_channels=48, out_channels=48),
}


def get_config(preset: "str | WanConfig | os.PathLike") -> WanConfig:
    """A preset name, a WanConfig (returned as is), or a path to a diffusers config.json."""
    return common_config.get_config(preset, WanConfig, PRESETS, "Wan")