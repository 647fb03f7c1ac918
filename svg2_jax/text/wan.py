"""Wan2.1's prompt encoding, as diffusers 0.42.1's `WanPipeline._get_t5_prompt_embeds` does it,
with our tokenizer and umT5 encoder (no torch): clean each prompt, tokenize to
`max_length` (padding, truncation, `</s>`), run the encoder with the padding mask, and keep
each prompt's first `length` states, zeros after (the states the Wan DiT takes as
`encoder_hidden_states`)."""

from __future__ import annotations

import html
import importlib.util
import re

import jax
import jax.numpy as jnp
from flax import nnx

from svg2_jax.models.umt5 import UMT5EncoderModel
from svg2_jax.text.tokenizer import Tokenizer, check_vocab

# WanPipeline.__call__'s default max_sequence_length
WAN_MAX_LENGTH = 512


def prompt_clean(text: str) -> str:
    """diffusers' Wan `prompt_clean`: ftfy's `fix_text` when ftfy is installed (as diffusers
    decides; ftfy is one of our dependencies, and the official Wan code always runs it),
    HTML entities unescaped twice, whitespace runs -> one space, stripped. Without ftfy
    this is diffusers' cleaning without it (curly quotes, mojibake stay as they are)."""
    ftfy = _ftfy()
    if ftfy is not None:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def _ftfy():
    """The ftfy module if installed, else None (diffusers' `is_ftfy_available`)."""
    if importlib.util.find_spec("ftfy") is None:
        return None
    import ftfy

    return ftfy


@nnx.jit
def _encode(encoder: UMT5EncoderModel, input_ids: jax.Array, mask: jax.Array) -> jax.Array:
    states = encoder(input_ids, mask)
    lengths = mask.sum(axis=1)
    keep = jnp.arange(input_ids.shape[1])[None, :] < lengths[:, None]
    return jnp.where(keep[..., None], states, jnp.zeros((), states.dtype))


def encode_wan_prompt(tokenizer: Tokenizer, encoder: UMT5EncoderModel,
                      prompts: str | list[str], max_length: int = WAN_MAX_LENGTH) -> jax.Array:
    """prompts (one or a list) -> [B, max_length, d_model] umT5 states in the encoder's
    dtype: each prompt's tokens' states, zeros at the padded positions (B = len(prompts)).

    tokenizer: `load_tokenizer(<Wan2.1 diffusers repo>/tokenizer)`; encoder: a
    `UMT5EncoderModel` (`svg2_jax.models.umt5.load`). A negative prompt is encoded the
    same way (diffusers' `encode_prompt` does, "" included). A ValueError when the
    tokenizer gives ids past the encoder's vocabulary.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    tokens = check_vocab(tokenizer([prompt_clean(p) for p in prompts], max_length=max_length,
                                   padding="max_length", truncation=True,
                                   add_special_tokens=True),
                         encoder.config.vocab_size, tokenizer)
    return _encode(encoder, jnp.asarray(tokens.input_ids), jnp.asarray(tokens.attention_mask))
