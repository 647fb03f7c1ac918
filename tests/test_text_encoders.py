"""Parity (fp32, CPU) of the JAX text encoders with their transformers originals on tiny
random configs, loaded through our checkpoint code from `save_pretrained` safetensors; and
of the prompt encodings with diffusers' WanPipeline / HunyuanVideoPipeline methods called
on the same tiny models and tokenizers."""

import types

import jax.numpy as jnp
import numpy as np
import pytest

from test_text_helpers import (PROMPTS, clip_tokenizer, llama_tokenizer, rel_error, saved,
                               torch, torch_encoder, transformers, umt5_tokenizer)

from svg2_jax.models import clip_text, llama, umt5
from svg2_jax.models.umt5.model import relative_position_buckets
from svg2_jax.text import (PromptTemplate, encode_hunyuan_prompt, encode_wan_prompt,
                           load_tokenizer)

TOL = 1e-4


def _ids(vocab: int, batch: int = 2, length: int = 18, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab - 2, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 11:] = 0  # right padding on the second row
    return ids, mask


def _load(module, model, directory):
    path = saved(model, directory)
    return module.load(path, str(path / "config.json"), dtype=jnp.float32)


@pytest.mark.parametrize("variant", [{}, {"feed_forward_proj": "relu", "num_layers": 3}])
def test_umt5_matches_transformers(tmp_path, variant):
    model = torch_encoder("umt5", **variant)
    ours = _load(umt5, model, tmp_path / "umt5")
    ids, mask = _ids(160, length=40)  # longer than max_distance: log buckets in use
    with torch.no_grad():
        want = model(ids, mask).last_hidden_state.numpy()
    got = ours(jnp.asarray(ids.numpy()), jnp.asarray(mask.numpy()))
    assert rel_error(got, want) <= TOL
    assert rel_error(ours(jnp.asarray(ids.numpy())), model(ids).last_hidden_state.detach()) <= TOL


def test_relative_position_buckets_match_transformers():
    """umT5-XXL's bucketing (32 buckets, distance 128) over Wan's 512 tokens."""
    attention = transformers.models.umt5.modeling_umt5.UMT5Attention(
        transformers.UMT5Config(relative_attention_num_buckets=32,
                                relative_attention_max_distance=128),
        has_relative_attention_bias=True)
    relative = torch.arange(512)[None, :] - torch.arange(512)[:, None]
    np.testing.assert_array_equal(relative_position_buckets(512, 512, 32, 128),
                                  attention._relative_position_bucket(relative).numpy())


LLAMA_VARIANTS = {
    "default": {},
    "llama3": dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 16}),
    "linear_bias_mha": dict(rope_scaling={"rope_type": "linear", "factor": 2.0},
                            attention_bias=True, mlp_bias=True, num_key_value_heads=4,
                            head_dim=16),
}


@pytest.mark.parametrize("variant", sorted(LLAMA_VARIANTS))
def test_llama_hidden_states_match_transformers(tmp_path, variant):
    model = torch_encoder("llama", **LLAMA_VARIANTS[variant])
    ours = _load(llama, model, tmp_path / "llama")
    ids, mask = _ids(400, length=24)
    with torch.no_grad():
        states = model(ids, mask, output_hidden_states=True).hidden_states
    for index in (-1, -3, 0, 1, 4, -5):
        got = ours(jnp.asarray(ids.numpy()), jnp.asarray(mask.numpy()), hidden_state=index)
        assert rel_error(got, states[index]) <= TOL, index
    with pytest.raises(ValueError, match=r"hidden_state must be an int in \[-5, 4\]"):
        ours(jnp.asarray(ids.numpy()), hidden_state=5)


@pytest.mark.parametrize("eos", [2, 300])
def test_clip_text_matches_transformers(tmp_path, eos):
    """eos_token_id 2: pooled at the highest id (HunyuanVideo's config); else at the first
    eos_token_id. The second row holds an id above the eos and an early eos."""
    model = torch_encoder("clip", eos_token_id=eos)
    ours = _load(clip_text, model, tmp_path / "clip")
    ids, _ = _ids(300, length=20)
    ids[0, 12:] = 301
    ids[1, 3], ids[1, 9], ids[1, 15:] = 300, 302, 301
    with torch.no_grad():
        want = model(ids)
    last, pooled = ours(jnp.asarray(ids.numpy()))
    assert rel_error(last, want.last_hidden_state) <= TOL
    assert rel_error(pooled, want.pooler_output) <= TOL
    with pytest.raises(ValueError, match="more than max_position_embeddings=20"):
        ours(jnp.zeros((1, 21), jnp.int32))


def test_clip_text_reads_transformers_4_prefixed_keys(tmp_path):
    """transformers 4 saved CLIPTextModel keys under `text_model.` (HunyuanVideo's
    text_encoder_2), with a `position_ids` buffer: the same model."""
    from safetensors.numpy import load_file, save_file

    model = torch_encoder("clip")
    path = saved(model, tmp_path / "v5")
    state = {f"text_model.{k}": v for k, v in load_file(path / "model.safetensors").items()}
    state["text_model.embeddings.position_ids"] = np.arange(20, dtype=np.float32)[None]
    (tmp_path / "v4").mkdir()
    save_file(state, str(tmp_path / "v4" / "model.safetensors"))
    ours = clip_text.load(tmp_path / "v4", str(path / "config.json"), dtype=jnp.float32)
    ids, _ = _ids(300, length=20)
    assert rel_error(ours(jnp.asarray(ids.numpy()))[1], model(ids).pooler_output.detach()) <= TOL


@pytest.fixture(scope="module")
def wan_parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan")
    model = torch_encoder("umt5")
    return dict(tokenizer_dir=umt5_tokenizer(root / "tokenizer"), model=model,
                encoder_dir=root / "text_encoder", ours=_load(umt5, model, root / "text_encoder"))


def test_wan_prompt_encoding_matches_diffusers(wan_parts):
    from diffusers import WanPipeline

    stub = types.SimpleNamespace(
        tokenizer=transformers.AutoTokenizer.from_pretrained(wan_parts["tokenizer_dir"]),
        text_encoder=wan_parts["model"], _execution_device=torch.device("cpu"))
    tokenizer = load_tokenizer(wan_parts["tokenizer_dir"])
    for prompts in (PROMPTS, PROMPTS[2], [""]):
        with torch.no_grad():
            want = WanPipeline._get_t5_prompt_embeds(stub, prompts, max_sequence_length=24)
        got = encode_wan_prompt(tokenizer, wan_parts["ours"], prompts, max_length=24)
        assert got.shape == want.shape
        assert rel_error(got, want) <= TOL
        np.testing.assert_array_equal(np.asarray(got) == 0, want.numpy() == 0)


@pytest.fixture(scope="module")
def hunyuan_parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("hunyuan")
    llama_model, clip_model = torch_encoder("llama"), torch_encoder("clip", seed=1)
    return dict(llama_dir=llama_tokenizer(root / "tokenizer"),
                clip_dir=clip_tokenizer(root / "tokenizer_2", files="vocab+merges"),
                llama_model=llama_model, clip_model=clip_model,
                llama=_load(llama, llama_model, root / "text_encoder"),
                clip=_load(clip_text, clip_model, root / "text_encoder_2"))


def test_hunyuan_prompt_encoding_matches_diffusers(hunyuan_parts, caplog):
    from diffusers import HunyuanVideoPipeline
    from svg2_jax.text.hunyuan import HUNYUAN_VIDEO_TEMPLATE

    p = hunyuan_parts
    llama_tokenizer_ = load_tokenizer(p["llama_dir"])
    # the system part of the template as this tiny tokenizer splits it (95 for Llama 3's)
    system = HUNYUAN_VIDEO_TEMPLATE.template.split("<|start_header_id|>user")[0]
    crop = int(llama_tokenizer_(system, padding="do_not_pad", truncation=False).input_ids.size)
    template = PromptTemplate(HUNYUAN_VIDEO_TEMPLATE.template, crop)
    stub = types.SimpleNamespace(
        tokenizer=transformers.AutoTokenizer.from_pretrained(p["llama_dir"]),
        tokenizer_2=transformers.CLIPTokenizer.from_pretrained(p["clip_dir"]),
        text_encoder=p["llama_model"], text_encoder_2=p["clip_model"],
        _execution_device=torch.device("cpu"))
    for prompts in (PROMPTS, PROMPTS[0]):
        with torch.no_grad():
            want_embeds, want_mask = HunyuanVideoPipeline._get_llama_prompt_embeds(
                stub, prompts, {"template": template.template, "crop_start": crop},
                max_sequence_length=16)
            want_pooled = HunyuanVideoPipeline._get_clip_prompt_embeds(
                stub, prompts, max_sequence_length=12)
        got = encode_hunyuan_prompt(llama_tokenizer_, p["llama"], load_tokenizer(p["clip_dir"]),
                                    p["clip"], prompts, template=template, max_length=16,
                                    clip_max_length=12)
        assert got.prompt_embeds.shape == want_embeds.shape == (len(got.prompt_embeds), 16, 32)
        assert rel_error(got.prompt_embeds, want_embeds) <= TOL
        np.testing.assert_array_equal(got.prompt_attention_mask, want_mask.numpy())
        assert rel_error(got.pooled_prompt_embeds, want_pooled) <= TOL
    assert "CLIP can only handle sequences up to 12 tokens" in caplog.text
