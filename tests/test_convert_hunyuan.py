"""HunyuanVideo converters (diffusers safetensors / official .pt -> orbax), `load`, the CLI."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from shared_fixtures import torch_layout
from test_hunyuan_helpers import TINY, official_state_dict, same_params, torch, torch_model

from convert.cli import main as cli_main
from convert.hunyuan import convert_to_orbax, count_reads
from svg2_jax.checkpoints import TorchCheckpointSource, abstract_state, expected_keys
from svg2_jax.models.hunyuan import PRESETS, HunyuanVideoConfig, get_config, load
from svg2_jax.models.hunyuan.keys import official_to_diffusers
from svg2_jax.models.hunyuan.load import FAMILY

CFG = TINY["t2v"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """(torch model, diffusers directory, its state dict as numpy float32, official .pt)."""
    model = torch_model(CFG, seed=3)
    root = tmp_path_factory.mktemp("ckpt")
    path = root / "transformer"
    model.save_pretrained(path, safe_serialization=True)
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    official = root / "mp_rank_00_model_states.pt"
    torch.save({"module": official_state_dict(model)}, official)
    return model, path, sd, official


def _save(sd: dict, path):
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(path))
    return path


def _entries(directory):
    return sorted(os.listdir(directory))


def test_every_problem_listed_in_one_error_and_nothing_left_behind(ckpt, tmp_path):
    _, _, sd, _ = ckpt
    bad = dict(sd)
    del bad["single_transformer_blocks.1.attn.to_q.weight"]
    del bad["context_embedder.token_refiner.refiner_blocks.0.norm1.bias"]
    bad["transformer_blocks.0.attn.extra.weight"] = np.zeros((3,), np.float32)
    bad["proj_out.bias"] = np.zeros((5,), np.float32)
    src = _save(bad, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError) as err:
        convert_to_orbax(src, "diffusers", CFG, tmp_path / "out")
    msg = str(err.value)
    assert "2 missing, 1 unexpected, 1 shape mismatches" in msg
    assert "single_transformer_blocks.1.attn.to_q.weight" in msg
    assert "context_embedder.token_refiner.refiner_blocks.0.norm1.bias" in msg
    assert "transformer_blocks.0.attn.extra.weight" in msg
    assert "proj_out.bias: checkpoint (5,), model expects (16,)" in msg
    assert _entries(tmp_path) == ["bad.safetensors"]
    with pytest.raises(ValueError, match="2 missing, 1 unexpected, 1 shape mismatches"):
        load(src, CFG)  # the direct route checks the same way


def test_official_layout_problems_name_the_official_keys(ckpt, tmp_path):
    model, _, _, _ = ckpt
    official = official_state_dict(model)
    del official["double_blocks.1.txt_attn_qkv.bias"]
    official["single_blocks.0.linear1.weight"] = official["single_blocks.0.linear1.weight"][:-3]
    official["transformer_blocks.0.attn.to_q.weight"] = torch.zeros(32, 32)  # diffusers key
    file = tmp_path / "bad.pt"
    torch.save({"module": official}, file)
    with pytest.raises(ValueError) as err:
        convert_to_orbax(file, "hunyuan", CFG, tmp_path / "out")
    msg = str(err.value)
    assert "3 missing, 1 unexpected, 1 shape mismatches" in msg
    assert "missing keys (diffusers names)" in msg
    assert "transformer_blocks.1.attn.add_k_proj.bias" in msg
    assert "unexpected keys:\n  transformer_blocks.0.attn.to_q.weight" in msg
    # the MLP part of the fused linear1 is 3 rows short
    assert ("single_transformer_blocks.0.proj_mlp.weight (from single_blocks.0.linear1.weight):"
            " checkpoint (125, 32), model expects (128, 32)") in msg
    assert _entries(tmp_path) == ["bad.pt"]


def test_wrong_layout_gives_a_hint(ckpt, tmp_path):
    _, path, _, official = ckpt
    with pytest.raises(ValueError, match="keys look like the 'diffusers' layout, not 'hunyuan'"):
        convert_to_orbax(path, "hunyuan", CFG, tmp_path / "out")
    with pytest.raises(ValueError, match="keys look like the 'hunyuan' layout, not 'diffusers'"):
        convert_to_orbax(official, "diffusers", CFG, tmp_path / "out")
    with pytest.raises(ValueError, match="unknown source layout"):
        convert_to_orbax(official, "wan", CFG, tmp_path / "out")
    assert _entries(tmp_path) == []


def test_unknown_preset_and_missing_paths(ckpt, tmp_path):
    _, path, _, _ = ckpt
    with pytest.raises(ValueError, match="unknown HunyuanVideo preset 'hunyuan-i2v'.*t2v-720p"):
        convert_to_orbax(path, "diffusers", "hunyuan-i2v", tmp_path / "out")
    with pytest.raises(ValueError, match="unknown HunyuanVideo preset"):
        load(path, "nope")
    with pytest.raises(ValueError, match="does not exist"):
        convert_to_orbax(tmp_path / "absent.pt", "hunyuan", CFG, tmp_path / "out")
    with pytest.raises(ValueError, match="does not exist"):
        load(tmp_path / "absent", CFG)
    assert _entries(tmp_path) == []


def test_failure_while_writing_leaves_no_partial_output(ckpt, tmp_path):
    _, _, _, official = ckpt
    seen = []

    def explode(key):
        seen.append(key)
        if len(seen) == 10:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        convert_to_orbax(official, "hunyuan", CFG, tmp_path / "out", progress=explode)
    assert _entries(tmp_path) == []


def test_existing_output_needs_overwrite(ckpt, tmp_path):
    _, path, _, _ = ckpt
    out = tmp_path / "out"
    convert_to_orbax(path, "diffusers", CFG, out, dtype=jnp.float32)
    with pytest.raises(ValueError, match="already exists"):
        convert_to_orbax(path, "diffusers", CFG, out)
    convert_to_orbax(path, "diffusers", CFG, out, overwrite=True)  # now bf16
    assert json.loads((out / "hunyuan_config.json").read_text())["param_dtype"] == "bfloat16"
    assert _entries(tmp_path) == ["out"]


def _torch_layout(ours: dict) -> dict:
    _, abstract = abstract_state(FAMILY, CFG, jnp.float32)
    return torch_layout(ours, expected_keys(FAMILY.keys, CFG, abstract))


def test_round_trip_official_orbax_load_is_exact(ckpt, tmp_path):
    _, path, sd, official = ckpt
    assert count_reads(official, "hunyuan", CFG) == len(sd)
    convert_to_orbax(official, "hunyuan", CFG, tmp_path / "orbax", dtype=jnp.float32)
    from_orbax = load(tmp_path / "orbax", CFG, dtype=jnp.float32)
    flat = {".".join(map(str, p)): np.asarray(v[...])
            for p, v in nnx.to_flat_state(nnx.state(from_orbax))}
    back = _torch_layout(flat)
    assert back.keys() == sd.keys()
    for key in sd:
        np.testing.assert_array_equal(back[key], sd[key], err_msg=key)


def test_official_mapping_matches_diffusers_split_and_swap():
    # fused q/k/v in thirds, linear1 at the model width, final modulation halves swapped
    assert official_to_diffusers("double_blocks.3.img_attn_qkv.weight", 96, 32) == [
        ("transformer_blocks.3.attn.to_q.weight", ((0, 32),)),
        ("transformer_blocks.3.attn.to_k.weight", ((32, 64),)),
        ("transformer_blocks.3.attn.to_v.weight", ((64, 96),))]
    assert official_to_diffusers("model.diffusion_model.single_blocks.0.linear1.bias", 224,
                                 32)[3] == ("single_transformer_blocks.0.proj_mlp.bias",
                                            ((96, 224),))
    assert official_to_diffusers("final_layer.adaLN_modulation.1.weight", 64, 32) == [
        ("norm_out.linear.weight", ((32, 64), (0, 32)))]
    assert official_to_diffusers("txt_in.individual_token_refiner.blocks.1.mlp.fc2.bias", 32,
                                 32) == [("context_embedder.token_refiner.refiner_blocks.1.ff."
                                          "net.2.bias", None)]


def test_torch_source_wrapping_reopening_and_errors(ckpt, tmp_path):
    model, _, sd, _ = ckpt
    file = tmp_path / "wrapped.pt"
    torch.save({"module": {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()},
                "ema": {}, "step": torch.tensor(3)}, file)
    with TorchCheckpointSource(file, reopen_bytes=1) as source:  # re-maps after every read
        assert source.ignored == ["ema", "step"]
        key = "transformer_blocks.1.attn.to_k.weight"
        want = model.state_dict()[key].to(torch.bfloat16).float().numpy()
        for _ in range(2):
            got = source.read(key)
            assert got.flags.c_contiguous and str(got.dtype) == "bfloat16"
            np.testing.assert_array_equal(got.astype(np.float32), want)
        np.testing.assert_array_equal(source.read(key, ((4, 8), (0, 2))).astype(np.float32),
                                      np.concatenate([want[4:8], want[:2]]))
    # the converted checkpoint reports what it did not convert
    report = convert_to_orbax(file, "diffusers", CFG, tmp_path / "out")
    assert report.ignored == ["ema", "step"]
    meta = json.loads((tmp_path / "out" / "hunyuan_config.json").read_text())
    assert meta["ignored_keys"] == ["ema", "step"] and meta["layout"] == "diffusers"
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        TorchCheckpointSource(tmp_path / "list.pt")
    torch.save({"a": torch.zeros(2, dtype=torch.int64)}, tmp_path / "int.pt")
    with pytest.raises(ValueError, match=r"unsupported dtypes .*a \(torch.int64\)"):
        TorchCheckpointSource(tmp_path / "int.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read .* as a torch state dict"):
        load(tmp_path / "junk.pt", CFG)


def test_load_detects_what_the_path_is(ckpt, tmp_path):
    _, path, _, official = ckpt
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no HunyuanVideo checkpoint at"):
        load(tmp_path / "empty", CFG)
    other = _save({"encoder.weight": np.zeros(3, np.float32)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="neither the diffusers nor the official"):
        load(other, CFG)
    # a directory holding only the released .pt is read as it
    release = tmp_path / "transformers"
    release.mkdir()
    os.symlink(official, release / official.name)
    assert same_params(load(release, CFG), load(path, CFG))
    # the diffusers directory's config.json must agree with the requested architecture
    with pytest.raises(ValueError, match="rope_theta: checkpoint 256.0, requested 10000.0"):
        load(path, HunyuanVideoConfig(**{**CFG.to_diffusers(), "rope_theta": 10000.0}))
    convert_to_orbax(path, "diffusers", CFG, tmp_path / "orbax")
    with pytest.raises(ValueError, match="num_single_layers: checkpoint 2, requested 3"):
        load(tmp_path / "orbax", HunyuanVideoConfig(**{**CFG.to_diffusers(),
                                                        "num_single_layers": 3}))


def test_load_with_mesh_places_replicated(ckpt):
    _, path, _, _ = ckpt
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    model = load(path, CFG, mesh=mesh)
    for _, v in nnx.to_flat_state(nnx.state(model)):
        assert v[...].sharding == jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def test_cli_end_to_end(ckpt, tmp_path, capsys):
    _, path, _, official = ckpt
    config_json = tmp_path / "config.json"
    config_json.write_text(json.dumps(CFG.to_diffusers()))
    rc = cli_main(["--from", "diffusers", str(path), "--model", str(config_json),
                   "--out", str(tmp_path / "orbax"), "--dtype", "float32", "-v"])
    out = capsys.readouterr().out
    assert rc == 0 and "wrote" in out and "peak RSS" in out
    assert same_params(load(tmp_path / "orbax", CFG, dtype=jnp.float32),
                       load(path, CFG, dtype=jnp.float32))
    assert cli_main(["--from", "hunyuan", str(official), "--model", str(config_json),
                     "--out", str(tmp_path / "orbax2"), "--quiet"]) == 0
    assert same_params(load(tmp_path / "orbax2", CFG), load(path, CFG))
    # the real preset does not fit the tiny checkpoint: one error, no output
    rc = cli_main(["--from", "hunyuan", str(official), "--model", "hunyuan-video-t2v-720p",
                   "--out", str(tmp_path / "orbax3"), "--quiet"])
    assert rc == 1 and "missing" in capsys.readouterr().err
    assert not (tmp_path / "orbax3").exists()
    # an official HunyuanVideo layout with a Wan model (or the reverse) is refused
    rc = cli_main(["--from", "hunyuan", str(official), "--model", "wan2.1-t2v-1.3b",
                   "--out", str(tmp_path / "orbax4"), "--quiet"])
    assert rc == 1 and "hunyuan" in capsys.readouterr().err
    rc = cli_main(["--from", "wan", str(official), "--model", str(config_json),
                   "--out", str(tmp_path / "orbax4"), "--quiet"])
    assert rc == 1 and "wan" in capsys.readouterr().err
    assert not (tmp_path / "orbax4").exists()


def test_preset_matches_diffusers_parameter_shapes():
    """Our expected keys and shapes for the preset equal diffusers' model (meta device)."""
    import diffusers

    config = PRESETS["hunyuan-video-t2v-720p"]
    with torch.device("meta"):
        theirs = diffusers.HunyuanVideoTransformer3DModel()  # diffusers' defaults
    assert HunyuanVideoConfig.from_diffusers(
        {k: v for k, v in theirs.config.items() if not k.startswith("_")}) == config
    want = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    _, abstract = abstract_state(FAMILY, config, jnp.bfloat16)
    got = {k: t.source_shape for k, t in expected_keys(FAMILY.keys, config, abstract).items()}
    assert got == want
    n = sum(int(np.prod(s)) for s in want.values())
    assert 12.7e9 < n < 13.0e9  # HunyuanVideo's 13B transformer


def test_config_json_round_trip_and_errors(ckpt):
    _, path, _, _ = ckpt
    assert get_config(str(path / "config.json")) == CFG
    assert get_config("hunyuan-video-t2v-720p").rope_axes_dim == (16, 56, 56)
    assert HunyuanVideoConfig(out_channels=None).out_channels == 16
    with pytest.raises(ValueError, match="unknown config keys"):
        HunyuanVideoConfig.from_diffusers({**CFG.to_diffusers(), "window_size": 3})
    with pytest.raises(ValueError, match=r"must sum to attention_head_dim=128"):
        HunyuanVideoConfig(rope_axes_dim=(16, 56, 48))
    with pytest.raises(ValueError, match="rope_axes_dim must be 3 positive even ints"):
        HunyuanVideoConfig(rope_axes_dim=(15, 57, 56))
    with pytest.raises(ValueError, match="'token_replace' is not implemented"):
        HunyuanVideoConfig(image_condition_type="token_replace")
    with pytest.raises(ValueError, match="qk_norm"):
        HunyuanVideoConfig(qk_norm="layer_norm")
