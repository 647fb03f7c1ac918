"""`LlamaConfig`: the Llama decoder stack's architecture (transformers' `LlamaConfig` keys,
the rotary settings flattened), and the released preset HunyuanVideo's text encoder uses."""

from __future__ import annotations

import dataclasses
import os

from svg2_jax.models.common import config as common_config
from svg2_jax.models.common.config import pos_int
from svg2_jax.models.common.text_encoder import TransformersConfig, activation_problems

ARCHITECTURE = "LlamaModel"
ROPE_TYPES = ("default", "linear", "llama3")
# transformers' rope parameter keys -> our fields (`rope_type` / `type` and `rope_theta` apart)
_ROPE_FIELDS = {"factor": "rope_factor", "low_freq_factor": "rope_low_freq_factor",
                "high_freq_factor": "rope_high_freq_factor",
                "original_max_position_embeddings": "rope_original_max_position_embeddings"}


@dataclasses.dataclass(frozen=True)
class LlamaConfig(TransformersConfig):
    """Llama decoder stack (transformers 5.24 `models/llama`, `LlamaModel`).

    Attributes:
      vocab_size, hidden_size: the token embedding table [vocab_size, hidden_size].
      intermediate_size: hidden width of each block's SwiGLU MLP.
      num_hidden_layers: decoder layers.
      num_attention_heads, num_key_value_heads, head_dim: grouped-query attention (query
        heads a multiple of key/value heads); None: as many key/value heads as query heads,
        head_dim = hidden / heads.
      hidden_act: the MLP gate's activation ("silu" for Llama).
      rms_norm_eps: epsilon of the RMS norms.
      attention_bias, mlp_bias: biases on the q/k/v/o and MLP projections.
      max_position_embeddings: the trained context (llama3 rope's default original context).
      rope_theta: rotary base. rope_type: "default", "linear" (frequencies / rope_factor) or
        "llama3" (Llama 3.1's smoothed scaling: rope_factor, rope_low_freq_factor,
        rope_high_freq_factor, rope_original_max_position_embeddings), transformers'
        `rope_parameters` (or v4's `rope_scaling` + `rope_theta`) flattened.
    """

    MODEL_TYPES = ("llama",)
    ARCHITECTURE = ARCHITECTURE

    # defaults: transformers' (a config.json without a key means its default)
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    attention_bias: bool = False
    mlp_bias: bool = False
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float | None = None
    rope_low_freq_factor: float | None = None
    rope_high_freq_factor: float | None = None
    rope_original_max_position_embeddings: int | None = None

    @classmethod
    def fields_from_json(cls, raw: dict):
        values, consumed = super().fields_from_json(raw)
        rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
        consumed |= {"rope_parameters", "rope_scaling", "rope_theta"}
        if not isinstance(rope, dict) or any(isinstance(v, dict) for v in rope.values()):
            raise ValueError("LlamaConfig.from_transformers: rope parameters must be one dict "
                             f"(per-layer-type rotary settings are not Llama's), got {rope!r}")
        unknown = sorted(set(rope) - set(_ROPE_FIELDS) - {"rope_type", "type", "rope_theta"})
        if unknown:
            raise ValueError(f"LlamaConfig.from_transformers: rope parameters this port does not "
                             f"know {unknown}")
        values["rope_type"] = rope.get("rope_type", rope.get("type", "default"))
        values["rope_theta"] = float(rope.get("rope_theta", raw.get("rope_theta", 10000.0)))
        values.update({_ROPE_FIELDS[k]: v for k, v in rope.items() if k in _ROPE_FIELDS})
        if values["rope_type"] == "llama3":
            values.setdefault("rope_original_max_position_embeddings",
                              values.get("max_position_embeddings",
                                         cls.max_position_embeddings))
        return values, consumed

    def __post_init__(self):
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None and pos_int(self.num_attention_heads):
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        problems = self.positive_int_problems((
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"))
        problems += activation_problems(self.hidden_act, "hidden_act")
        if not problems and self.num_attention_heads % self.num_key_value_heads:
            problems.append(f"num_attention_heads ({self.num_attention_heads}) must be a multiple "
                            f"of num_key_value_heads ({self.num_key_value_heads})")
        if not problems and self.head_dim % 2:
            problems.append(f"head_dim must be even (rotary halves), got {self.head_dim}")
        if not self.rms_norm_eps > 0:
            problems.append(f"rms_norm_eps must be > 0, got {self.rms_norm_eps!r}")
        if not self.rope_theta > 0:
            problems.append(f"rope_theta must be > 0, got {self.rope_theta!r}")
        if self.rope_type not in ROPE_TYPES:
            problems.append(f"rope_type must be one of {ROPE_TYPES} (transformers' dynamic / "
                            f"yarn / longrope are not ported), got {self.rope_type!r}")
        needed = {"default": (), "linear": ("rope_factor",),
                  "llama3": ("rope_factor", "rope_low_freq_factor", "rope_high_freq_factor",
                             "rope_original_max_position_embeddings")}.get(self.rope_type, ())
        missing = [f for f in needed if getattr(self, f) is None]
        if missing:
            problems.append(f"rope_type {self.rope_type!r} needs {missing}")
        if problems:
            raise ValueError("LlamaConfig: " + "; ".join(problems))

    @property
    def attention_head_dim(self) -> int:
        return self.head_dim


# hunyuan-video-llama: the text_encoder of HunyuanVideo (the language model of
# llava-llama-3-8b-v1_1, as the hunyuanvideo-community/HunyuanVideo diffusers repo and the
# official release's text_encoder config.json give it): Llama-3-8B sizes, vocab 128320
# (Llama 3's 128256 plus LLaVA's added tokens, padded), rope_theta 500000, no rope scaling.
PRESETS: dict[str, LlamaConfig] = {
    "hunyuan-video-llama": LlamaConfig(
        vocab_size=128320, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5,
        max_position_embeddings=8192, rope_theta=500000.0),
}


def get_config(preset: "str | LlamaConfig | os.PathLike") -> LlamaConfig:
    """A preset name, a LlamaConfig (returned as is), or a path to a transformers config.json."""
    return common_config.get_config(preset, LlamaConfig, PRESETS, "Llama",
                                    json_kind="transformers")
