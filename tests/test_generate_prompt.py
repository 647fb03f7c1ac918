"""The --prompt path of svg2-generate (umT5 through transformers) on a tiny random umT5
and a word-level tokenizer written by the test (no tokenizer or weights can be
downloaded here): encode_prompt computes what diffusers' WanPipeline does (states of the
real tokens, zeros after), and the CLI runs end to end with it."""

import json

import numpy as np
import pytest

from svg2_jax.cli import generate
from svg2_jax.cli.text import encode_prompt

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = ["a", "cat", "runs", "on", "the", "beach", "blurry", "static"]


@pytest.fixture(scope="module")
def tiny_umt5(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    path = tmp_path_factory.mktemp("umt5")
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # T5 appends </s> to every sequence.
    tok.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                       special_tokens=[("</s>", 1)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>",
                                                eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(path)
    torch.manual_seed(0)
    cfg = transformers.UMT5Config(vocab_size=len(vocab), d_model=64, d_kv=16, d_ff=96,
                                  num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                                  pad_token_id=0, eos_token_id=1)
    transformers.UMT5EncoderModel(cfg).eval().save_pretrained(path)
    return str(path)


def test_encode_prompt_matches_umt5(tiny_umt5):
    states = encode_prompt("a cat runs on the beach", tiny_umt5, max_length=16)
    assert states.shape == (1, 16, 64)
    enc = transformers.UMT5EncoderModel.from_pretrained(tiny_umt5)
    ids = torch.tensor([[3, 4, 5, 6, 7, 8, 1]])                 # 6 words + </s>
    with torch.no_grad():
        want = enc(ids, torch.ones_like(ids)).last_hidden_state.numpy()
    np.testing.assert_allclose(states[:, :7], want, atol=1e-5, rtol=1e-5)
    assert np.all(states[:, 7:] == 0)
    assert np.isfinite(states).all() and np.abs(states[:, :7]).sum() > 0


def test_cli_with_prompt(tiny_umt5, tmp_path):
    out = tmp_path / "p.mp4"
    report = generate.main(["--out", str(out), "--prompt", "a cat runs",
                            "--negative-prompt", "blurry static", "--text-encoder", tiny_umt5,
                            "--steps", "3", "--no-progress"])
    assert out.exists() and report["timings_s"]["sample"] > 0
    on_disk = json.loads((tmp_path / "p.json").read_text())
    assert on_disk["model"].startswith("TINY RANDOM")


def test_prompt_without_encoder_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="--text-encoder"):
        generate.main(["--out", str(tmp_path / "x.mp4"), "--prompt", "a cat", "--steps", "2"])
