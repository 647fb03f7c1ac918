"""svg2-convert for the text encoders (umT5, Llama, CLIP text; transformers layout): the CLI
end to end, orbax round trips, tied and prefixed keys, strict errors listed in one message,
the presets against transformers' models, config.json handling."""

import json
import os

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from test_text_helpers import rel_error, saved, torch, torch_encoder, transformers

from convert.cli import main as cli_main
from convert.common import convert_to_orbax, count_reads
from svg2_jax.checkpoints import abstract_state, expected_keys
from svg2_jax.models import clip_text, llama, umt5
from svg2_jax.models.clip_text.load import FAMILY as CLIP_TEXT
from svg2_jax.models.llama.load import FAMILY as LLAMA
from svg2_jax.models.umt5.load import FAMILY as UMT5

# our kind -> (model package, ModelFamily, test_text_helpers.TORCH_ENCODERS kind)
KINDS = {"umt5": (umt5, UMT5, "umt5"), "llama": (llama, LLAMA, "llama"),
         "clip_text": (clip_text, CLIP_TEXT, "clip")}


def flat(model) -> dict:
    return {".".join(map(str, p)): np.asarray(v[...])
            for p, v in nnx.to_flat_state(nnx.state(model))}


def same_params(a, b) -> bool:
    fa, fb = flat(a), flat(b)
    return fa.keys() == fb.keys() and all(
        fa[k].dtype == fb[k].dtype and np.array_equal(fa[k], fb[k]) for k in fa)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """kind -> (torch model, its save_pretrained directory)."""
    root = tmp_path_factory.mktemp("text_ckpts")
    out = {}
    for kind, (_, _, torch_kind) in KINDS.items():
        model = torch_encoder(torch_kind)
        out[kind] = (model, saved(model, root / kind))
    return out


def _entries(directory):
    return sorted(os.listdir(directory))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_cli_converts_and_the_result_loads(ckpts, tmp_path, capsys, kind):
    module, family, _ = KINDS[kind]
    _, path = ckpts[kind]
    config = str(path / "config.json")
    rc = cli_main(["--from", "transformers", str(path), "--model", config,
                   "--out", str(tmp_path / "orbax"), "--dtype", "float32", "-v"])
    out = capsys.readouterr().out
    assert rc == 0 and "wrote" in out and "peak RSS" in out
    meta = json.loads((tmp_path / "orbax" / family.config_file).read_text())
    assert meta["format"] == family.format and meta["layout"] == "transformers"
    from_orbax = module.load(tmp_path / "orbax", config, dtype=jnp.float32)
    assert same_params(from_orbax, module.load(path, config, dtype=jnp.float32))
    assert from_orbax.config == family.get_config(config)


def test_bf16_conversion_keeps_what_the_model_keeps_in_float32(ckpts, tmp_path):
    model, path = ckpts["umt5"]
    config = str(path / "config.json")
    convert_to_orbax(UMT5, path, "transformers", config, tmp_path / "bf16")
    params = flat(umt5.load(tmp_path / "bf16", config))
    assert params["shared.embedding"].dtype == ml_dtypes.bfloat16
    assert params["encoder.block.layer.1.DenseReluDense.wo.kernel"].dtype == np.float32
    assert params["encoder.final_layer_norm.scale"].dtype == np.float32
    want = model.state_dict()["encoder.block.1.layer.0.SelfAttention.q.weight"]
    np.testing.assert_array_equal(
        params["encoder.block.layer.0.SelfAttention.q.kernel"][1].astype(np.float32),
        want.to(torch.bfloat16).float().numpy().T)


def test_umt5_tied_embedding_either_key(ckpts, tmp_path):
    """Files with both tied keys read shared.weight and report the copy; files with only
    encoder.embed_tokens.weight read it as shared.weight."""
    from safetensors.numpy import load_file, save_file

    model, path = ckpts["umt5"]
    config = str(path / "config.json")
    state = load_file(path / "model.safetensors")
    both = dict(state, **{"encoder.embed_tokens.weight": state["shared.weight"]})
    save_file(both, str(tmp_path / "both.safetensors"))
    assert count_reads(UMT5, tmp_path / "both.safetensors", "transformers", config) \
        == len(state)
    report = convert_to_orbax(UMT5, tmp_path / "both.safetensors", "transformers", config,
                              tmp_path / "out")
    assert report.ignored == ["encoder.embed_tokens.weight (tied to shared.weight)"]
    only = {("encoder.embed_tokens.weight" if k == "shared.weight" else k): v
            for k, v in state.items()}
    save_file(only, str(tmp_path / "only.safetensors"))
    reference = umt5.load(path, config, dtype=jnp.float32)
    assert same_params(umt5.load(tmp_path / "only.safetensors", config, dtype=jnp.float32),
                       reference)
    ids = torch.randint(3, 150, (1, 9))
    got = reference(jnp.asarray(ids.numpy()))
    assert rel_error(got, model(ids).last_hidden_state.detach()) <= 1e-4


def test_every_problem_listed_in_one_error_and_nothing_left_behind(ckpts, tmp_path):
    from safetensors.numpy import load_file, save_file

    _, path = ckpts["llama"]
    config = str(path / "config.json")
    state = load_file(path / "model.safetensors")
    del state["layers.2.mlp.up_proj.weight"]
    state["layers.0.self_attn.extra.weight"] = np.zeros(3, np.float32)
    state["norm.weight"] = np.zeros(5, np.float32)
    state["layers.1.self_attn.rotary_emb.inv_freq"] = np.zeros(4, np.float32)  # skipped
    (tmp_path / "bad").mkdir()
    save_file(state, str(tmp_path / "bad" / "model.safetensors"))
    with pytest.raises(ValueError) as err:
        convert_to_orbax(LLAMA, tmp_path / "bad", "transformers", config, tmp_path / "out")
    msg = str(err.value)
    assert "1 missing, 1 unexpected, 1 shape mismatches" in msg
    assert "layers.2.mlp.up_proj.weight" in msg and "layers.0.self_attn.extra.weight" in msg
    assert "norm.weight: checkpoint (5,), model expects (32,)" in msg
    assert "inv_freq" not in msg
    assert _entries(tmp_path) == ["bad"]
    with pytest.raises(ValueError, match="1 missing, 1 unexpected, 1 shape mismatches"):
        llama.load(tmp_path / "bad" / "model.safetensors", config)


def test_prefixed_clip_keys_and_their_errors(ckpts, tmp_path):
    """transformers 4's `text_model.` keys convert; problems name the file's keys."""
    from safetensors.numpy import load_file, save_file

    _, path = ckpts["clip_text"]
    config = str(path / "config.json")
    state = {f"text_model.{k}": v for k, v in load_file(path / "model.safetensors").items()}
    save_file(state, str(tmp_path / "v4.safetensors"))
    convert_to_orbax(CLIP_TEXT, tmp_path / "v4.safetensors", "transformers", config,
                     tmp_path / "out", dtype=jnp.float32)
    assert same_params(clip_text.load(tmp_path / "out", config, dtype=jnp.float32),
                       clip_text.load(path, config, dtype=jnp.float32))
    del state["text_model.final_layer_norm.bias"]
    state["visual_projection.weight"] = np.zeros((2, 2), np.float32)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError) as err:
        convert_to_orbax(CLIP_TEXT, tmp_path / "bad.safetensors", "transformers", config,
                         tmp_path / "out2")
    msg = str(err.value)
    assert "1 missing, 1 unexpected, 0 shape mismatches" in msg
    assert "missing keys (transformers names):\n  final_layer_norm.bias" in msg
    assert "visual_projection.weight" in msg
    assert not (tmp_path / "out2").exists()


def test_cli_refuses_wrong_layouts_presets_and_families(ckpts, tmp_path, capsys):
    _, path = ckpts["umt5"]
    out = str(tmp_path / "out")
    rc = cli_main(["--from", "diffusers", str(path), "--model", "umt5-xxl", "--out", out])
    assert rc == 1 and "not a layout of umT5 checkpoints" in capsys.readouterr().err
    # the released preset does not fit the tiny checkpoint: one error, no output
    rc = cli_main(["--from", "transformers", str(path), "--model", "umt5-xxl", "--out", out,
                   "--quiet"])
    assert rc == 1 and "shape mismatches" in capsys.readouterr().err
    # a Llama checkpoint converted as CLIP text
    rc = cli_main(["--from", "transformers", str(ckpts["llama"][1]), "--model",
                   "clip-vit-l-text", "--out", out, "--quiet"])
    assert rc == 1 and "unexpected" in capsys.readouterr().err
    rc = cli_main(["--from", "transformers", str(path), "--model", "wan2.1-t2v-1.3b",
                   "--out", out, "--quiet"])
    assert rc == 1 and "not a layout of Wan checkpoints" in capsys.readouterr().err
    assert _entries(tmp_path) == []


def test_load_checks_the_config_json_next_to_the_weights(ckpts, tmp_path):
    _, path = ckpts["llama"]
    config = llama.get_config(str(path / "config.json"))
    import dataclasses

    with pytest.raises(ValueError, match="rms_norm_eps: checkpoint 1e-06, requested 1e-05"):
        llama.load(path, dataclasses.replace(config, rms_norm_eps=1e-5))
    with pytest.raises(ValueError, match="not the transformers umT5 layout"):
        umt5.load(path / "model.safetensors", umt5.get_config(str(ckpts["umt5"][1] /
                                                                  "config.json")))
    with pytest.raises(ValueError, match="unknown Llama preset 'llama-2'"):
        llama.load(path, "llama-2")


def test_config_json_keys(ckpts, tmp_path):
    raw = json.loads((ckpts["umt5"][1] / "config.json").read_text())
    with pytest.raises(ValueError, match=r"does not know \['cross_layer_sharing'\]"):
        umt5.UMT5Config.from_transformers({**raw, "cross_layer_sharing": True})
    assert umt5.UMT5Config.from_transformers({**raw, "pruned_heads": {}, "num_beams": 4}) \
        == umt5.get_config(str(ckpts["umt5"][1] / "config.json"))
    with pytest.raises(ValueError, match=r"does not know \['pruned_heads'\]"):
        umt5.UMT5Config.from_transformers({**raw, "pruned_heads": {"0": [1]}})
    with pytest.raises(ValueError, match="is_decoder=true describes a decoder"):
        umt5.UMT5Config.from_transformers({**raw, "is_decoder": True})
    with pytest.raises(ValueError, match="model_type must be one of \\('llama',\\)"):
        llama.LlamaConfig.from_transformers(raw)
    with pytest.raises(ValueError, match="rope_type must be one of"):
        llama.LlamaConfig.from_transformers(
            {"model_type": "llama", "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}})
    # transformers 4's rope spelling: rope_theta beside rope_scaling (null), the config of
    # HunyuanVideo's text encoder
    v4 = llama.LlamaConfig.from_transformers({
        "model_type": "llama", "architectures": ["LlamaModel"], "vocab_size": 128320,
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "rms_norm_eps": 1e-5, "rope_scaling": None, "rope_theta": 500000.0,
        "max_position_embeddings": 8192, "attention_bias": False, "mlp_bias": False,
        "hidden_act": "silu", "bos_token_id": 128000, "eos_token_id": 128001,
        "pretraining_tp": 1, "torch_dtype": "float16", "transformers_version": "4.46.3"})
    assert v4 == llama.PRESETS["hunyuan-video-llama"]


def _transformers_model(kind, config):
    with torch.device("meta"):
        if kind == "umt5":
            return transformers.UMT5EncoderModel(transformers.UMT5Config(**config.to_diffusers()))
        if kind == "llama":
            fields = config.to_diffusers()
            rope = {"rope_type": fields.pop("rope_type"), "rope_theta": fields.pop("rope_theta")}
            for k in list(fields):
                if k.startswith("rope_"):
                    fields.pop(k)
            return transformers.LlamaModel(transformers.LlamaConfig(**fields,
                                                                    rope_parameters=rope))
        return transformers.CLIPTextModel(transformers.CLIPTextConfig(**config.to_diffusers()))


@pytest.mark.parametrize("kind,preset,billions", [("umt5", "umt5-xxl", (5.6, 5.8)),
                                                  ("llama", "hunyuan-video-llama", (7.4, 7.6)),
                                                  ("clip_text", "clip-vit-l-text", (0.12, 0.13))])
def test_presets_match_transformers_parameter_shapes(kind, preset, billions):
    """Our expected keys and shapes for the released presets equal transformers' models
    (meta device); the tied umT5 copy is our alias."""
    module, family, _ = KINDS[kind]
    config = module.PRESETS[preset]
    theirs = _transformers_model(kind, config)
    want = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    _, abstract = abstract_state(family, config, jnp.bfloat16)
    got = {k: t.source_shape for k, t in expected_keys(family.keys, config, abstract).items()}
    for alias, canonical in family.keys.aliases:
        got[alias] = got[canonical]
    assert got == want
    n = sum(int(np.prod(s)) for k, s in want.items() if k not in dict(family.keys.aliases))
    assert billions[0] * 1e9 < n < billions[1] * 1e9, n
