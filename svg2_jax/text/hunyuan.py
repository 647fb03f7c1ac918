"""HunyuanVideo's prompt encoding, as diffusers 0.42.1's `HunyuanVideoPipeline` does it
(`_get_llama_prompt_embeds`, `_get_clip_prompt_embeds`), with our tokenizers, Llama and
CLIP text encoders (no torch):

  - Llama: the prompt inside the video prompt template, tokenized to crop_start +
    max_length tokens (padding, truncation), the hidden state `num_hidden_layers_to_skip`
    before the last (`hidden_states[-(skip + 1)]`) with the padding mask, then the first
    crop_start positions (the template's system part) cut from states and mask;
  - CLIP: the prompt (or prompts_2) alone, 77 tokens, the pooled output.

The result is the `text` the HunyuanVideo DiT sampler takes: (prompt_embeds [B, max_length,
hidden], prompt_attention_mask [B, max_length], pooled_prompt_embeds [B, clip hidden]).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from svg2_jax.models.clip_text import CLIPTextModel
from svg2_jax.models.llama import LlamaModel
from svg2_jax.text.tokenizer import Tokenizer, check_vocab

log = logging.getLogger(__name__)

# HunyuanVideoPipeline.__call__'s defaults
HUNYUAN_MAX_LENGTH = 256
HUNYUAN_SKIP_LAYERS = 2
CLIP_MAX_LENGTH = 77


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """template: the text around the prompt ("{}" marks it); crop_start: how many leading
    tokens of the tokenized template (the system part) are cut from the states."""

    template: str
    crop_start: int

    def __post_init__(self):
        if self.template.count("{}") != 1:
            raise ValueError("PromptTemplate: template must hold exactly one '{}' (the prompt)")
        if not (isinstance(self.crop_start, int) and self.crop_start >= 0):
            raise ValueError(f"PromptTemplate: crop_start must be an int >= 0, got "
                             f"{self.crop_start!r}")


# diffusers' DEFAULT_PROMPT_TEMPLATE (pipeline_hunyuan_video.py), the official release's
# PROMPT_TEMPLATE_ENCODE_VIDEO with crop_start 95
HUNYUAN_VIDEO_TEMPLATE = PromptTemplate(
    template=(
        "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the "
        "following aspects: "
        "1. The main content and theme of the video."
        "2. The color, shape, size, texture, quantity, text, and spatial relationships of the "
        "objects."
        "3. Actions, events, behaviors temporal relationships, physical movement changes of the "
        "objects."
        "4. background environment, light, style and atmosphere."
        "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"),
    crop_start=95)


class HunyuanPromptEmbeds(NamedTuple):
    """What the HunyuanVideo DiT takes as `text` (a tuple, in this order)."""

    prompt_embeds: jax.Array           # [B, max_length, hidden] Llama states, encoder dtype
    prompt_attention_mask: jax.Array   # [B, max_length] int32, 1 = a real token
    pooled_prompt_embeds: jax.Array    # [B, clip hidden] CLIP pooled output


@functools.partial(nnx.jit, static_argnames=("hidden_state",))
def _llama_states(llama: LlamaModel, input_ids, mask, hidden_state: int) -> jax.Array:
    return llama(input_ids, mask, hidden_state=hidden_state)


@nnx.jit
def _clip_pooled(clip: CLIPTextModel, input_ids) -> jax.Array:
    return clip(input_ids)[1]


def encode_llama_prompt(tokenizer: Tokenizer, llama: LlamaModel, prompts: str | list[str], *,
                        template: PromptTemplate = HUNYUAN_VIDEO_TEMPLATE,
                        max_length: int = HUNYUAN_MAX_LENGTH,
                        num_hidden_layers_to_skip: int = HUNYUAN_SKIP_LAYERS
                        ) -> tuple[jax.Array, jax.Array]:
    """diffusers' `_get_llama_prompt_embeds`: -> (states [B, max_length, hidden] in the
    encoder's dtype, mask [B, max_length] int32)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    tokens = check_vocab(tokenizer([template.template.format(p) for p in prompts],
                                   max_length=max_length + template.crop_start,
                                   padding="max_length", truncation=True,
                                   add_special_tokens=True),
                         llama.config.vocab_size, tokenizer)
    states = _llama_states(llama, jnp.asarray(tokens.input_ids),
                           jnp.asarray(tokens.attention_mask),
                           hidden_state=-(num_hidden_layers_to_skip + 1))
    crop = template.crop_start
    return states[:, crop:], jnp.asarray(tokens.attention_mask[:, crop:])


def encode_clip_prompt(tokenizer: Tokenizer, clip: CLIPTextModel, prompts: str | list[str], *,
                       max_length: int = CLIP_MAX_LENGTH) -> jax.Array:
    """diffusers' `_get_clip_prompt_embeds`: -> pooled [B, hidden] in the encoder's dtype
    (tokens past max_length are cut, with a logged warning naming them, as diffusers does)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    tokens = check_vocab(tokenizer(prompts, max_length=max_length, padding="max_length",
                                   truncation=True), clip.config.vocab_size, tokenizer)
    full = tokenizer(prompts, padding="longest", truncation=False)
    if full.input_ids.shape[1] > max_length:
        removed = [tokenizer.backend.decode(row[max_length - 1:-1].tolist())
                   for row, mask in zip(full.input_ids, full.attention_mask)
                   if mask.sum() > max_length]
        log.warning("The following part of your input was truncated because CLIP can only handle "
                    "sequences up to %d tokens: %s", max_length, removed)
    return _clip_pooled(clip, jnp.asarray(tokens.input_ids))


def encode_hunyuan_prompt(llama_tokenizer: Tokenizer, llama: LlamaModel,
                          clip_tokenizer: Tokenizer, clip: CLIPTextModel,
                          prompts: str | list[str], prompts_2: str | list[str] | None = None,
                          *, template: PromptTemplate = HUNYUAN_VIDEO_TEMPLATE,
                          max_length: int = HUNYUAN_MAX_LENGTH,
                          num_hidden_layers_to_skip: int = HUNYUAN_SKIP_LAYERS,
                          clip_max_length: int = CLIP_MAX_LENGTH) -> HunyuanPromptEmbeds:
    """diffusers' `HunyuanVideoPipeline.encode_prompt`: prompts -> `HunyuanPromptEmbeds`.

    llama_tokenizer, llama: `load_tokenizer(<repo>/tokenizer)` and
      `svg2_jax.models.llama.load(...)` (HunyuanVideo's text_encoder).
    clip_tokenizer, clip: `load_tokenizer(<repo>/tokenizer_2)` and
      `svg2_jax.models.clip_text.load(...)` (text_encoder_2).
    prompts_2: the CLIP prompts (default: prompts).
    """
    embeds, mask = encode_llama_prompt(llama_tokenizer, llama, prompts, template=template,
                                       max_length=max_length,
                                       num_hidden_layers_to_skip=num_hidden_layers_to_skip)
    pooled = encode_clip_prompt(clip_tokenizer, clip, prompts if prompts_2 is None else prompts_2,
                                max_length=clip_max_length)
    return HunyuanPromptEmbeds(embeds, mask, pooled)
