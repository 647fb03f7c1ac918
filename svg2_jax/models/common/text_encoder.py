"""What the text encoders ported from transformers (umT5, Llama, CLIP text) share: a config
read from a transformers `config.json` (`TransformersConfig.from_transformers`, strict
about keys it does not know; presets and config.json paths go through
`svg2_jax.models.common.config.get_config(..., json_kind="transformers")`), whether a
--model names a family (`names_config`), the activations by their transformers `ACT2FN`
names (`ACTIVATIONS`), torch-style linears with or without bias (`linear`), the token-id
input check and the padding mask.

The configs keep transformers' field names, so a config.json maps onto them one to one;
`to_diffusers` / `from_diffusers` (inherited from `ModelConfig`) are the field dict stored
in our orbax checkpoints' metadata, named as for the DiTs because the checkpoint code is
shared.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Self

import jax
import jax.numpy as jnp
from flax import nnx

from svg2_jax.models.common.config import ModelConfig

# config.json keys that never change an encoder's forward pass (inference, fp32 weights):
# file metadata, initialisation, dropout, labels, generation and training switches (the
# `PretrainedConfig` attributes transformers 4 wrote into every config.json among them)
INERT_KEYS = frozenset({
    "_name_or_path", "architectures", "model_type", "torch_dtype", "dtype",
    "transformers_version", "use_cache", "initializer_range", "initializer_factor",
    "bos_token_id", "pad_token_id", "eos_token_id", "sep_token_id", "tie_word_embeddings",
    "return_dict", "output_hidden_states", "output_attentions", "attention_dropout", "dropout",
    "dropout_rate", "classifier_dropout", "tokenizer_class", "pretraining_tp",
    "_attn_implementation_autoset", "chunk_size_feed_forward", "problem_type", "torchscript",
    "use_bfloat16", "tf_legacy_loss", "finetuning_task", "id2label", "label2id", "prefix",
    "task_specific_params", "decoder_start_token_id", "forced_bos_token_id",
    "forced_eos_token_id", "max_length", "min_length", "do_sample", "early_stopping",
    "num_beams", "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p",
    "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
    "return_dict_in_generate", "remove_invalid_values", "exponential_decay_length_penalty",
    "suppress_tokens", "begin_suppress_tokens", "is_encoder_decoder",
})
# structural `PretrainedConfig` switches: harmless while off (False / None / empty), not
# ported when on
INERT_WHEN_OFF = frozenset({"pruned_heads", "add_cross_attention", "cross_attention_hidden_size",
                            "is_decoder", "tie_encoder_decoder"})

# transformers' ACT2FN names -> the same functions
ACTIVATIONS = {
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}


def activation_problems(name, where: str) -> list[str]:
    """One message if `name` is not in ACTIVATIONS (for a config's __post_init__)."""
    return [] if name in ACTIVATIONS else [f"{where} must be one of {sorted(ACTIVATIONS)}, "
                                           f"got {name!r}"]


class TransformersConfig(ModelConfig):
    """Base of the frozen encoder configs whose fields are transformers' config keys.

    Subclasses set MODEL_TYPES (accepted `model_type` values), ARCHITECTURE (the
    transformers class our model ports), INERT (their own config.json keys that do not
    change the forward pass, beyond `INERT_KEYS`), and may override `fields_from_json`
    (transformers key -> field renames and derived values).
    """

    MODEL_TYPES: tuple[str, ...] = ()
    ARCHITECTURE: str = ""
    INERT: frozenset = frozenset()

    @classmethod
    def fields_from_json(cls, raw: dict) -> tuple[dict, set[str]]:
        """(field values, the config.json keys they consume) from a config.json dict."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in raw.items() if k in names}
        return values, set(values)

    @classmethod
    def from_transformers(cls, raw: dict) -> Self:
        """From a transformers config dict (`config.json`): every key must be a field, a key
        `fields_from_json` consumes, or known to leave the forward pass alone."""
        if raw.get("model_type") not in cls.MODEL_TYPES:
            raise ValueError(f"{cls.__name__}.from_transformers: model_type must be one of "
                             f"{cls.MODEL_TYPES} ({cls.ARCHITECTURE}), got "
                             f"{raw.get('model_type')!r}")
        values, consumed = cls.fields_from_json(raw)
        off = {k for k in INERT_WHEN_OFF if not raw.get(k)}
        unknown = sorted(set(raw) - consumed - INERT_KEYS - off - cls.INERT)
        if unknown:
            raise ValueError(f"{cls.__name__}.from_transformers: config keys this port does not "
                             f"know {unknown} (they may change the model; not converted)")
        return cls(**values)

    @classmethod
    def of_json(cls, raw: dict) -> Self | None:
        """The config of a checkpoint directory's config.json, None if it describes another
        model type (`ModelFamily.config_from_json`)."""
        if raw.get("model_type") not in cls.MODEL_TYPES:
            return None
        return cls.from_transformers(raw)


def names_config(preset, cls: type[TransformersConfig], presets: dict) -> bool:
    """Whether `preset` names this family: a `cls`, one of its presets, or a config.json
    whose model_type is one of `cls.MODEL_TYPES` (svg2-convert's family table)."""
    if isinstance(preset, cls) or (isinstance(preset, str) and preset in presets):
        return True
    if isinstance(preset, (str, os.PathLike)) and str(preset).endswith(".json") \
            and os.path.isfile(preset):
        try:
            with open(preset) as f:
                return json.load(f).get("model_type") in cls.MODEL_TYPES
        except (OSError, ValueError, AttributeError):
            return False
    return False


def check_ids(model: str, input_ids, attention_mask):
    """input_ids: [B, S] integers with S >= 1; attention_mask None or the same shape."""
    if getattr(input_ids, "ndim", None) != 2 or input_ids.shape[1] < 1 \
            or not jnp.issubdtype(input_ids.dtype, jnp.integer):
        raise ValueError(f"{model}: input_ids must be [B, S>=1] integers, got "
                         f"{getattr(input_ids, 'shape', None)} "
                         f"{getattr(input_ids, 'dtype', type(input_ids).__name__)}")
    if attention_mask is not None and getattr(attention_mask, "shape", None) != input_ids.shape:
        raise ValueError(f"{model}: attention_mask must have input_ids' shape "
                         f"{input_ids.shape}, got {getattr(attention_mask, 'shape', None)}")


def key_padding_mask(attention_mask: jax.Array | None) -> jax.Array | None:
    """[B, S] 0/1 -> [B, 1, 1, S] bool (True = attend to this key), or None."""
    if attention_mask is None:
        return None
    return (attention_mask != 0)[:, None, None, :]


def linear(in_features: int, out_features: int, *, bias: bool, dtype, param_dtype,
           rngs: nnx.Rngs):
    """A torch `nn.Linear(in_features, out_features, bias=bias)`. kernel: [in, out]."""
    return nnx.Linear(in_features, out_features, use_bias=bias, dtype=dtype,
                      param_dtype=param_dtype, rngs=rngs)
