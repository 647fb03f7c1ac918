"""Tokenizers without transformers or torch: `load_tokenizer(dir)` reads the files a Hugging
Face tokenizer directory ships and gives a `Tokenizer` whose ids and masks are those of
the transformers 5 tokenizer the pipelines load from the same directory.

What is read (transformers 5.24 `TokenizersBackend` and `PreTrainedTokenizerBase`):
  - `tokenizer.json`: the whole `tokenizers` pipeline (normaliser, pre-tokeniser, model,
    post-processor with its special tokens, added tokens), used as it is. A directory
    without it but with `vocab.json` + `merges.txt` and `"tokenizer_class": "CLIPTokenizer"`
    (what a transformers 4 slow CLIP tokenizer saves) gets the pipeline transformers 5's
    CLIPTokenizer builds from those two files. Other forms (a sentencepiece `spiece.model`
    alone) are refused: transformers converts those with sentencepiece.
  - `tokenizer_config.json`: `pad_token`, `padding_side`, `truncation_side`; when it has
    no `added_tokens_decoder`, `special_tokens_map.json` fills `pad_token` (transformers'
    legacy path); then the padding / truncation settings saved in tokenizer.json, then the
    tokenizer class's own default pad token (T5: `<pad>`, CLIP: `<|endoftext|>`).

Each call sets padding and truncation on the backend exactly as transformers'
`set_truncation_and_padding` does (max length, "longest_first", the tokenizer's sides,
the pad token and id) and encodes the batch with `encode_batch`, so special tokens,
truncation (which keeps room for the post-processor's tokens: T5 ends with `</s>`, CLIP
with `<|endoftext|>`), padding and masks are the library's own.

Where transformers 5's model-specific classes rebuild the pipeline from the vocabulary
instead of using tokenizer.json, this follows tokenizer.json (as `AutoTokenizer` /
`PreTrainedTokenizerFast` and transformers 4 do): `LlamaTokenizerFast` on a byte-level
(Llama 3) tokenizer.json installs a sentencepiece pre-tokeniser and drops spaces
(transformers issue #45488), and `T5Tokenizer` splits on whitespace before its Metaspace
(the same ids on single-spaced text, which is all the Wan pipeline feeds it).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
from tokenizers import Regex, decoders, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
# the pad token a tokenizer class's __init__ defaults to (transformers 5.24), when no file
# names one
CLASS_PAD_TOKENS = {"T5Tokenizer": "<pad>", "CLIPTokenizer": "<|endoftext|>"}
PADDINGS = ("max_length", "longest", "do_not_pad")


@dataclasses.dataclass(frozen=True)
class Tokens:
    """input_ids, attention_mask: [B, L] int32 (mask 1 = a real token)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray


def check_vocab(tokens: Tokens, vocab_size: int, tokenizer: "Tokenizer") -> Tokens:
    """`tokens`, after checking that every id has a row in the encoder's embedding table
    [vocab_size, D] (an id past it would be clamped silently by the lookup): a ValueError
    names the tokenizer when it does not belong to the encoder."""
    top = int(tokens.input_ids.max(initial=0))
    if top >= vocab_size:
        raise ValueError(f"{tokenizer.name} gives token id {top}, past the text encoder's "
                         f"vocabulary (vocab_size {vocab_size}): it is not this encoder's "
                         "tokenizer")
    return tokens


class Tokenizer:
    """A `tokenizers.Tokenizer` with the pad token and sides of the transformers tokenizer of
    the same files. Call it like a transformers tokenizer; not safe to call from two threads
    at once (each call sets the backend's padding and truncation, as transformers does)."""

    def __init__(self, backend: Backend, *, pad_token: str | None, padding_side: str = "right",
                 truncation_side: str = "right", name: str = "tokenizer"):
        for side, value in (("padding_side", padding_side), ("truncation_side", truncation_side)):
            if value not in ("left", "right"):
                raise ValueError(f"{name}: {side} must be 'left' or 'right', got {value!r}")
        self.backend, self.name = backend, name
        self.pad_token, self.padding_side, self.truncation_side = (pad_token, padding_side,
                                                                  truncation_side)
        self.pad_token_id = None if pad_token is None else backend.token_to_id(pad_token)
        if pad_token is not None and self.pad_token_id is None:
            raise ValueError(f"{name}: the pad token {pad_token!r} is not in the vocabulary "
                             "(transformers would append it as a new token the model has no "
                             "embedding for)")

    def token_id(self, token: str) -> int:
        """The id of one token of the vocabulary (a KeyError naming it otherwise)."""
        i = self.backend.token_to_id(token)
        if i is None:
            raise KeyError(f"{self.name}: {token!r} is not in the vocabulary")
        return i

    def __call__(self, texts: str | list[str], *, max_length: int | None = None,
                 padding: str = "max_length", truncation: bool = True,
                 add_special_tokens: bool = True) -> Tokens:
        """transformers' `tokenizer(texts, padding=..., max_length=..., truncation=...,
        add_special_tokens=..., return_attention_mask=True)` -> `Tokens` [B, L].

        padding: "max_length" (to max_length), "longest" (to the batch's longest) or
          "do_not_pad" (then every text must give the same length, to stack them).
        truncation: cut each text to max_length tokens, special tokens included.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"{self.name}: texts must be a str or a non-empty list of str")
        if padding not in PADDINGS:
            raise ValueError(f"{self.name}: padding must be one of {PADDINGS}, got {padding!r}")
        if (padding == "max_length" or truncation) and not (
                isinstance(max_length, int) and max_length > 0):
            raise ValueError(f"{self.name}: padding='max_length' and truncation need a positive "
                             f"int max_length, got {max_length!r}")
        if padding != "do_not_pad" and self.pad_token_id is None:
            raise ValueError(f"{self.name}: asked to pad, but the tokenizer has no pad token "
                             f"(none in {CONFIG_FILE}, {SPECIAL_TOKENS_FILE} or {TOKENIZER_FILE})")
        backend = self.backend
        if truncation:
            backend.enable_truncation(max_length, stride=0, strategy="longest_first",
                                      direction=self.truncation_side)
        else:
            backend.no_truncation()
        if padding == "do_not_pad":
            backend.no_padding()
        else:
            backend.enable_padding(direction=self.padding_side, pad_id=self.pad_token_id,
                                   pad_type_id=0, pad_token=self.pad_token,
                                   length=max_length if padding == "max_length" else None)
        encodings = backend.encode_batch(texts, add_special_tokens=add_special_tokens)
        lengths = {len(e.ids) for e in encodings}
        if len(lengths) > 1:
            raise ValueError(f"{self.name}: texts give {sorted(lengths)} tokens; without padding "
                             "they cannot be stacked")
        return Tokens(np.array([e.ids for e in encodings], np.int32),
                      np.array([e.attention_mask for e in encodings], np.int32))


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer of a Hugging Face tokenizer directory (e.g. `<repo>/tokenizer`), read
    from local files only (see the module docstring for what is read, and how)."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"tokenizer directory {str(path)!r} does not exist")
    config = _read_json(path / CONFIG_FILE)
    backend = _backend(path, config)
    padding, truncation = backend.padding, backend.truncation
    backend.no_padding()
    backend.no_truncation()
    backend.encode_special_tokens = False  # transformers' split_special_tokens=False
    pad_token = _token(config.get("pad_token"))
    if pad_token is None and "added_tokens_decoder" not in config:
        pad_token = _token(_read_json(path / SPECIAL_TOKENS_FILE).get("pad_token"))
    if pad_token is None and padding is not None:
        pad_token = padding["pad_token"]
    if pad_token is None:
        pad_token = CLASS_PAD_TOKENS.get(_class_name(config))
    return Tokenizer(
        backend, pad_token=pad_token,
        padding_side=config.get("padding_side") or (padding or {}).get("direction") or "right",
        truncation_side=(config.get("truncation_side") or (truncation or {}).get("direction")
                         or "right"),
        name=f"tokenizer {str(path)!r}")


def _backend(path: Path, config: dict) -> Backend:
    if (path / TOKENIZER_FILE).is_file():
        return Backend.from_file(str(path / TOKENIZER_FILE))
    if _class_name(config) == "CLIPTokenizer" and (path / "vocab.json").is_file() \
            and (path / "merges.txt").is_file():
        return clip_backend(path / "vocab.json", path / "merges.txt",
                            bos=_token(config.get("bos_token")) or "<|startoftext|>",
                            eos=_token(config.get("eos_token")) or "<|endoftext|>",
                            unk=_token(config.get("unk_token")) or "<|endoftext|>")
    present = sorted(p.name for p in path.iterdir())
    raise ValueError(f"tokenizer directory {str(path)!r} has no {TOKENIZER_FILE} (present: "
                     f"{present}); without transformers this reads tokenizer.json, or a CLIP "
                     "tokenizer's vocab.json + merges.txt. Write one with transformers: "
                     "AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)")


def clip_backend(vocab_file: Path, merges_file: Path, *, bos: str, eos: str,
                 unk: str) -> Backend:
    """The pipeline transformers 5's `CLIPTokenizer.__init__` builds from vocab.json and
    merges.txt: NFC, whitespace runs -> one space, lowercase; CLIP's split regex then
    byte-level; BPE with `</w>` word ends; `<|startoftext|>` ... `<|endoftext|>` around."""
    with open(vocab_file, encoding="utf-8") as f:
        vocab = json.load(f)
    with open(merges_file, encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines
              if line.strip() and not line.startswith("#version")]
    backend = Backend(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                          end_of_word_suffix="</w>", fuse_unk=False, unk_token=unk))
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"
                                   r"|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(dict.fromkeys((bos, eos, unk))))
    for token in (bos, eos):
        if backend.token_to_id(token) is None:
            raise ValueError(f"{str(vocab_file)!r} lacks the special token {token!r}")
    backend.post_processor = processors.RobertaProcessing(
        (eos, backend.token_to_id(eos)), (bos, backend.token_to_id(bos)),
        trim_offsets=False, add_prefix_space=False)
    return backend


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _token(value) -> str | None:
    """A special token as tokenizer_config / special_tokens_map store it: a string or a
    serialised AddedToken ({"content": ...})."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _class_name(config: dict) -> str:
    return (config.get("tokenizer_class") or "").removesuffix("Fast")
