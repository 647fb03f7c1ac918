"""`UMT5Config`: the umT5 encoder's architecture (transformers' `UMT5Config` keys), and the
released preset Wan2.1 uses."""

from __future__ import annotations

import dataclasses
import os

from svg2_jax.models.common import config as common_config
from svg2_jax.models.common.text_encoder import TransformersConfig, activation_problems

ARCHITECTURE = "UMT5EncoderModel"


@dataclasses.dataclass(frozen=True)
class UMT5Config(TransformersConfig):
    """umT5 encoder (transformers 5.24 `models/umt5`, `UMT5EncoderModel`).

    Attributes:
      vocab_size, d_model: the token embedding table (`shared`) [vocab_size, d_model].
      d_kv, num_heads: per-head width and heads of every attention (inner = heads x d_kv).
      d_ff: hidden width of each block's feed-forward.
      num_layers: encoder blocks.
      relative_attention_num_buckets, relative_attention_max_distance: the bucketing of
        the relative position bias; unlike T5, every umT5 block has its own bias table.
      layer_norm_epsilon: epsilon of the T5 RMS norms.
      feed_forward_proj: "gated-<act>" (wi_0 act * wi_1 -> wo; "gated-gelu" is the tanh
        GELU, transformers' rule) or "<act>" (wi -> act -> wo).
    """

    MODEL_TYPES = ("umt5",)
    ARCHITECTURE = ARCHITECTURE
    # the decoder's settings, values transformers derives from feed_forward_proj (it
    # overwrites dense_act_fn / is_gated_act with them), and `scalable_attention`, which
    # transformers' UMT5 does not read
    INERT = frozenset({"num_decoder_layers", "scale_decoder_outputs", "output_past",
                       "dense_act_fn", "is_gated_act", "scalable_attention"})

    # defaults: transformers' (a config.json without a key means its default)
    vocab_size: int = 250112
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 1024
    num_layers: int = 8
    num_heads: int = 6
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"

    @classmethod
    def fields_from_json(cls, raw: dict):
        if raw.get("is_decoder"):
            raise ValueError("UMT5Config.from_transformers: is_decoder=true describes a decoder "
                             "stack; this port is the encoder (UMT5EncoderModel)")
        return super().fields_from_json(raw)

    def __post_init__(self):
        problems = self.positive_int_problems((
            "vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
            "relative_attention_num_buckets", "relative_attention_max_distance"))
        parts = str(self.feed_forward_proj).split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            problems.append("feed_forward_proj must be '<act>' or 'gated-<act>', got "
                            f"{self.feed_forward_proj!r}")
        else:
            problems += activation_problems(self.activation, "feed_forward_proj's activation")
        if self.relative_attention_num_buckets < 4:
            problems.append("relative_attention_num_buckets must be >= 4 (half per direction, "
                            "half of those exact), got "
                            f"{self.relative_attention_num_buckets!r}")
        if not self.layer_norm_epsilon > 0:
            problems.append(f"layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon!r}")
        if problems:
            raise ValueError("UMT5Config: " + "; ".join(problems))

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self) -> str:
        """The ACT2FN name transformers runs (`UMT5Config.__post_init__`)."""
        if self.feed_forward_proj == "gated-gelu":
            return "gelu_new"
        return self.feed_forward_proj.split("-")[-1]

    @property
    def num_attention_heads(self) -> int:
        return self.num_heads

    @property
    def attention_head_dim(self) -> int:
        return self.d_kv


# umt5-xxl: google/umt5-xxl's config.json, the text_encoder of the Wan2.1 diffusers repos;
# the same sizes as the official Wan2.1 `umt5_xxl` (wan/modules/t5.py: vocab 256384,
# dim 4096, dim_attn 4096 = 64 heads x 64, dim_ffn 10240, 24 encoder layers, 32 buckets,
# per-layer position bias).
PRESETS: dict[str, UMT5Config] = {
    "umt5-xxl": UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                           num_heads=64, relative_attention_num_buckets=32,
                           relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
                           feed_forward_proj="gated-gelu"),
}


def get_config(preset: "str | UMT5Config | os.PathLike") -> UMT5Config:
    """A preset name, a UMT5Config (returned as is), or a path to a transformers config.json."""
    return common_config.get_config(preset, UMT5Config, PRESETS, "umT5",
                                    json_kind="transformers")
