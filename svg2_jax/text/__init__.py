"""Prompt -> the text states the DiTs take, without torch: tokenizers read from local files
(`tokenizer.py`, the `tokenizers` library) and the JAX text encoders
(`svg2_jax.models.umt5`, `.llama`, `.clip_text`), in the pipelines' own steps:
`encode_wan_prompt` (Wan2.1, umT5) and `encode_hunyuan_prompt` (HunyuanVideo, Llama +
CLIP)."""

from svg2_jax.text.hunyuan import (HUNYUAN_VIDEO_TEMPLATE, HunyuanPromptEmbeds, PromptTemplate,
                                   encode_clip_prompt, encode_hunyuan_prompt,
                                   encode_llama_prompt)
from svg2_jax.text.tokenizer import Tokenizer, Tokens, load_tokenizer
from svg2_jax.text.wan import encode_wan_prompt, prompt_clean

__all__ = ["HUNYUAN_VIDEO_TEMPLATE", "HunyuanPromptEmbeds", "PromptTemplate", "Tokenizer",
           "Tokens", "encode_clip_prompt", "encode_hunyuan_prompt", "encode_llama_prompt",
           "encode_wan_prompt", "load_tokenizer", "prompt_clean"]
