"""Shared fixtures for the text-encoder tests: tiny tokenizers trained here with the
`tokenizers` library in the shapes the released ones have (umT5's Unigram + `</s>`,
Llama 3's byte-level BPE + `<|begin_of_text|>`, CLIP's lowercased BPE with `</w>` word
ends, as tokenizer.json or as a slow tokenizer's vocab.json + merges.txt), tiny random
transformers encoders saved as safetensors, and our models loaded from them.

No tests here; the name only keeps it inside the test files' pattern.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import trainers

from svg2_jax.text.hunyuan import HUNYUAN_VIDEO_TEMPLATE

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CORPUS = [
    "a red fox jumps over the lazy dog in the snow",
    "the quick brown cat sleeps in the warm afternoon sun",
    "a cinematic shot of a city at night, neon lights reflect on wet streets",
    "two astronauts walk slowly on the surface of the moon",
    "ocean waves crash against black rocks; seagulls circle above",
    HUNYUAN_VIDEO_TEMPLATE.template.replace("{}", ""),
] * 20

# prompts: short, long (truncated at the tiny max lengths), doubled spaces and an entity
PROMPTS = ["a red fox jumps over the lazy dog",
           "A cinematic shot of a city at night, neon lights reflect on wet streets while two "
           "astronauts walk slowly on the moon and ocean waves crash against black rocks",
           "the  quick brown   cat &amp; the dog"]


def _save(tok: Tokenizer, directory, config: dict, special_tokens_map: dict | None = None):
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    if special_tokens_map is not None:
        (directory / "special_tokens_map.json").write_text(json.dumps(special_tokens_map))
    return directory


def umt5_tokenizer(directory):
    """A Unigram tokenizer shaped like umT5's: <pad>=0, </s>=1, <unk>=2, Metaspace, `$A </s>`."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator(CORPUS, trainers.UnigramTrainer(
        vocab_size=150, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    return _save(tok, directory, {"tokenizer_class": "T5Tokenizer", "pad_token": "<pad>",
                                  "eos_token": "</s>", "unk_token": "<unk>", "extra_ids": 0})


LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>"]


def llama_tokenizer(directory):
    """A byte-level BPE shaped like Llama 3's (`<|begin_of_text|> $A`), its pad token given
    only in special_tokens_map.json (transformers' legacy path)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=LLAMA_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])
    return _save(tok, directory, {"tokenizer_class": "PreTrainedTokenizerFast",
                                  "bos_token": "<|begin_of_text|>",
                                  "eos_token": "<|end_of_text|>"},
                 {"pad_token": "<|end_of_text|>"})


def _clip_bpe() -> tuple[dict, list]:
    """(vocab, merges) of a tiny CLIP BPE: <|startoftext|>, <|endoftext|> the highest ids."""
    tok = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>"))
    vocab = tok.get_vocab()
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split())
              for m in json.loads(tok.to_str())["model"]["merges"]]
    return vocab, merges


CLIP_CONFIG = {"tokenizer_class": "CLIPTokenizer", "bos_token": "<|startoftext|>",
               "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}


def clip_tokenizer(directory, files: str = "tokenizer.json"):
    """A tiny CLIP tokenizer saved by transformers' CLIPTokenizer (tokenizer.json), or, with
    files="vocab+merges", only vocab.json + merges.txt as a transformers 4 slow CLIP
    tokenizer saves them."""
    vocab, merges = _clip_bpe()
    directory.mkdir(parents=True, exist_ok=True)
    if files == "tokenizer.json":
        transformers.CLIPTokenizer(vocab=vocab, merges=merges).save_pretrained(directory)
    else:
        (directory / "vocab.json").write_text(json.dumps(vocab))
        (directory / "merges.txt").write_text(
            "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
        (directory / "tokenizer_config.json").write_text(json.dumps(CLIP_CONFIG))
    return directory


def randomize(model, seed: int):
    """Every parameter of a torch model perturbed (norm scales and biases included), eval."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


# tiny transformers configs: vocabularies cover the tiny tokenizers above
TORCH_ENCODERS = {
    "umt5": ("UMT5EncoderModel", "UMT5Config", dict(
        vocab_size=160, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=20)),
    "llama": ("LlamaModel", "LlamaConfig", dict(
        vocab_size=400, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, rope_theta=500000.0)),
    "clip": ("CLIPTextModel", "CLIPTextConfig", dict(
        vocab_size=304, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=20, eos_token_id=2, bos_token_id=0,
        pad_token_id=1)),
    "clip_vision": ("CLIPVisionModel", "CLIPVisionConfig", dict(
        hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
        image_size=28, patch_size=7, hidden_act="gelu", projection_dim=16)),
}


def torch_encoder(kind: str, seed: int = 0, **overrides):
    """A tiny random transformers encoder of `TORCH_ENCODERS[kind]`, fp32, eval."""
    model_cls, config_cls, config = TORCH_ENCODERS[kind]
    config = getattr(transformers, config_cls)(**{**config, **overrides})
    return randomize(getattr(transformers, model_cls)(config), seed)


def saved(model, directory):
    """`model.save_pretrained(directory)` (safetensors) -> directory."""
    model.save_pretrained(directory)
    return directory


def rel_error(ours, reference) -> float:
    """max |ours - reference| / max |reference|."""
    reference = np.asarray(reference, np.float64)
    return float(np.abs(np.asarray(ours, np.float64) - reference).max()
                 / np.abs(reference).max())
