"""`load_tokenizer` against transformers' tokenizers loaded from the same files: ids and
masks for several prompts with max-length and longest padding, truncation, and without
special tokens."""

import json

import numpy as np
import pytest

from test_text_helpers import (PROMPTS, clip_tokenizer, llama_tokenizer, transformers,
                               umt5_tokenizer)

from svg2_jax.text import load_tokenizer, prompt_clean

CALLS = [dict(padding="max_length", max_length=12, truncation=True),
         dict(padding="max_length", max_length=40, truncation=True),
         dict(padding="longest", truncation=False),
         dict(padding="max_length", max_length=9, truncation=True, add_special_tokens=False)]


def assert_same(ours, reference, prompts, call):
    ref = reference(prompts, return_tensors="np", **call)
    got = ours(prompts, **call)
    np.testing.assert_array_equal(got.input_ids, ref["input_ids"], err_msg=str(call))
    np.testing.assert_array_equal(got.attention_mask, ref["attention_mask"], err_msg=str(call))


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    return dict(umt5=umt5_tokenizer(root / "umt5"), llama=llama_tokenizer(root / "llama"),
                clip=clip_tokenizer(root / "clip"),
                clip_vocab=clip_tokenizer(root / "clip_vocab", files="vocab+merges"))


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("kind,reference_classes", [
    ("umt5", ("PreTrainedTokenizerFast",)),  # AutoTokenizer here is T5Tokenizer: see below
    ("llama", ("PreTrainedTokenizerFast", "AutoTokenizer")),
    ("clip", ("CLIPTokenizer", "PreTrainedTokenizerFast")),
    ("clip_vocab", ("CLIPTokenizer",)),
])
def test_ids_and_masks_match_transformers(dirs, kind, reference_classes, call):
    ours = load_tokenizer(dirs[kind])
    for name in reference_classes:
        reference = getattr(transformers, name).from_pretrained(dirs[kind])
        assert_same(ours, reference, PROMPTS, call)
        assert_same(ours, reference, PROMPTS[0], call)


@pytest.mark.parametrize("call", CALLS)
def test_umt5_matches_t5_tokenizer_on_cleaned_prompts(dirs, call):
    """transformers 5's T5Tokenizer rebuilds the pipeline (whitespace split before its
    Metaspace): the same ids on the single-spaced prompts the Wan pipeline feeds it."""
    reference = transformers.AutoTokenizer.from_pretrained(dirs["umt5"])
    assert type(reference).__name__ == "T5Tokenizer"
    assert_same(load_tokenizer(dirs["umt5"]), reference, [prompt_clean(p) for p in PROMPTS],
                call)


def test_truncation_keeps_the_end_token_and_pads_with_the_pad_id(dirs):
    tok = load_tokenizer(dirs["umt5"])
    out = tok(PROMPTS, max_length=12)
    assert out.input_ids.shape == (3, 12)
    assert out.input_ids[1, -1] == tok.token_id("</s>")  # truncated, still ends with </s>
    n = int(out.attention_mask[0].sum())
    assert out.input_ids[0, n - 1] == tok.token_id("</s>")
    assert (out.input_ids[0, n:] == tok.pad_token_id).all() and tok.pad_token_id == 0
    llama = load_tokenizer(dirs["llama"])  # pad token from special_tokens_map.json
    assert llama.pad_token == "<|end_of_text|>" and llama.padding_side == "right"
    assert llama(PROMPTS, max_length=8).input_ids[0, 0] == llama.token_id("<|begin_of_text|>")


def test_config_padding_side_and_errors(dirs, tmp_path):
    directory = tmp_path / "left"
    directory.mkdir()
    (directory / "tokenizer.json").write_text((dirs["llama"] / "tokenizer.json").read_text())
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"padding_side": "left", "pad_token": {  # a serialised AddedToken
            "__type": "AddedToken", "content": "<|eot_id|>", "lstrip": False, "rstrip": False,
            "normalized": False, "single_word": False, "special": True}}))
    ours = load_tokenizer(directory)
    reference = transformers.PreTrainedTokenizerFast.from_pretrained(directory)
    assert_same(ours, reference, PROMPTS, CALLS[0])
    assert ours(PROMPTS, max_length=40).input_ids[0, 0] == ours.token_id("<|eot_id|>")

    no_pad = tmp_path / "no_pad"
    no_pad.mkdir()
    (no_pad / "tokenizer.json").write_text((dirs["llama"] / "tokenizer.json").read_text())
    with pytest.raises(ValueError, match="asked to pad, but the tokenizer has no pad token"):
        load_tokenizer(no_pad)(PROMPTS, max_length=8)
    assert load_tokenizer(no_pad)(PROMPTS[0], padding="do_not_pad",
                                  truncation=False).input_ids.shape[0] == 1
    with pytest.raises(ValueError, match="cannot be stacked"):
        load_tokenizer(no_pad)(PROMPTS, padding="do_not_pad", truncation=False)
    with pytest.raises(ValueError, match="positive int max_length"):
        load_tokenizer(dirs["llama"])(PROMPTS)

    sentencepiece_only = tmp_path / "spm"
    sentencepiece_only.mkdir()
    (sentencepiece_only / "spiece.model").write_bytes(b"\0")
    with pytest.raises(ValueError, match=r"has no tokenizer.json \(present: \['spiece.model'\]\)"):
        load_tokenizer(sentencepiece_only)
    with pytest.raises(ValueError, match="does not exist"):
        load_tokenizer(tmp_path / "absent")
    bad_pad = tmp_path / "bad_pad"
    bad_pad.mkdir()
    (bad_pad / "tokenizer.json").write_text((dirs["llama"] / "tokenizer.json").read_text())
    (bad_pad / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>"}))
    with pytest.raises(ValueError, match="pad token '<pad>' is not in the vocabulary"):
        load_tokenizer(bad_pad)


@pytest.mark.parametrize("with_ftfy", [True, False])
def test_prompt_clean_is_diffusers(with_ftfy, monkeypatch):
    """As diffusers' Wan prompt_clean with ftfy installed (one of our dependencies) and
    without it: curly quotes and mojibake are what ftfy changes."""
    from diffusers.pipelines.wan import pipeline_wan

    from svg2_jax.text import wan

    if with_ftfy:
        pytest.importorskip("ftfy")
    else:
        monkeypatch.setattr(wan, "_ftfy", lambda: None)
        monkeypatch.setattr(pipeline_wan, "is_ftfy_available", lambda: False)
    fixed = {"it\u2019s a \u201ccat\u201d", "the caf\u00c3\u00a9 at night"}
    for text in PROMPTS + ["  tabs\tand\nnewlines  ", "&amp;lt;b&amp;gt; x", "", *fixed]:
        assert prompt_clean(text) == pipeline_wan.prompt_clean(text)
    assert all((prompt_clean(t) != t) == with_ftfy for t in fixed)
