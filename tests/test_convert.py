"""Weight converters (diffusers / official Wan2.1 safetensors -> orbax), `load`, the CLI."""

import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from shared_fixtures import torch_layout
from test_wan_helpers import TINY, official_state_dict, same_params, torch, torch_model

from convert.cli import main as cli_main
from convert.wan import convert_to_orbax, count_reads
from svg2_jax.checkpoints import abstract_state, expected_keys
from svg2_jax.models.wan import PRESETS, WanConfig, get_config, load
from svg2_jax.models.wan.load import FAMILY

CFG = TINY["t2v"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """(torch model, diffusers directory, its state dict as numpy float32)."""
    model = torch_model(CFG, seed=3)
    path = tmp_path_factory.mktemp("ckpt") / "transformer"
    model.save_pretrained(path, safe_serialization=True)
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    return model, path, sd


def _save(sd: dict, path):
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(path))
    return path


def _entries(directory):
    return sorted(os.listdir(directory))


def test_every_problem_listed_in_one_error_and_nothing_left_behind(ckpt, tmp_path):
    _, _, sd = ckpt
    bad = dict(sd)
    del bad["blocks.1.attn1.to_q.weight"]
    bad["blocks.0.attn1.extra.weight"] = np.zeros((3,), np.float32)
    bad["proj_out.bias"] = np.zeros((5,), np.float32)
    src = _save(bad, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError) as err:
        convert_to_orbax(src, "diffusers", CFG, tmp_path / "out")
    msg = str(err.value)
    assert "1 missing, 1 unexpected, 1 shape mismatches" in msg
    assert "blocks.1.attn1.to_q.weight" in msg
    assert "blocks.0.attn1.extra.weight" in msg
    assert "proj_out.bias: checkpoint (5,), model expects (16,)" in msg
    assert _entries(tmp_path) == ["bad.safetensors"]
    with pytest.raises(ValueError, match="1 missing, 1 unexpected, 1 shape mismatches"):
        load(src, CFG)  # the direct route checks the same way


def test_wrong_layout_gives_a_hint(ckpt, tmp_path):
    model, path, _ = ckpt
    with pytest.raises(ValueError, match="keys look like the 'diffusers' layout, not 'wan'"):
        convert_to_orbax(path, "wan", CFG, tmp_path / "out")
    official = tmp_path / "official.safetensors"
    from safetensors.torch import save_file

    save_file(official_state_dict(model), str(official))
    with pytest.raises(ValueError, match="keys look like the 'wan' layout, not 'diffusers'"):
        convert_to_orbax(official, "diffusers", CFG, tmp_path / "out")
    with pytest.raises(ValueError, match="unknown source layout"):
        convert_to_orbax(official, "pth", CFG, tmp_path / "out")
    assert _entries(tmp_path) == ["official.safetensors"]


def test_unknown_preset_and_missing_paths(ckpt, tmp_path):
    _, path, _ = ckpt
    with pytest.raises(ValueError, match="unknown Wan preset 'wan2.2-t2v'.*wan2.1-t2v-1.3b"):
        convert_to_orbax(path, "diffusers", "wan2.2-t2v", tmp_path / "out")
    with pytest.raises(ValueError, match="unknown Wan preset"):
        load(path, "nope")
    with pytest.raises(ValueError, match="does not exist"):
        convert_to_orbax(tmp_path / "absent", "diffusers", CFG, tmp_path / "out")
    with pytest.raises(ValueError, match="does not exist"):
        load(tmp_path / "absent", CFG)
    with pytest.raises(ValueError, match="config file .* does not exist"):
        get_config(str(tmp_path / "absent.json"))
    assert _entries(tmp_path) == []


def test_failure_while_writing_leaves_no_partial_output(ckpt, tmp_path):
    _, path, _ = ckpt
    seen = []

    def explode(key):
        seen.append(key)
        if len(seen) == 10:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        convert_to_orbax(path, "diffusers", CFG, tmp_path / "out", progress=explode)
    assert _entries(tmp_path) == []


def test_existing_output_needs_overwrite(ckpt, tmp_path):
    _, path, _ = ckpt
    out = tmp_path / "out"
    convert_to_orbax(path, "diffusers", CFG, out, dtype=jnp.float32)
    with pytest.raises(ValueError, match="already exists"):
        convert_to_orbax(path, "diffusers", CFG, out)
    convert_to_orbax(path, "diffusers", CFG, out, overwrite=True)  # now bf16
    assert json.loads((out / "wan_config.json").read_text())["param_dtype"] == "bfloat16"
    assert _entries(tmp_path) == ["out"]


def _torch_layout(ours: dict) -> dict:
    _, abstract = abstract_state(FAMILY, CFG, jnp.float32)
    return torch_layout(ours, expected_keys(FAMILY.keys, CFG, abstract))


def test_round_trip_diffusers_orbax_load_is_exact(ckpt, tmp_path):
    _, path, sd = ckpt
    convert_to_orbax(path, "diffusers", CFG, tmp_path / "orbax", dtype=jnp.float32)
    from_orbax = load(tmp_path / "orbax", CFG, dtype=jnp.float32)
    assert same_params(from_orbax, load(path, CFG, dtype=jnp.float32))
    flat = {".".join(map(str, p)): np.asarray(v[...])
            for p, v in nnx.to_flat_state(nnx.state(from_orbax))}
    back = _torch_layout(flat)
    assert back.keys() == sd.keys()
    for key in sd:
        np.testing.assert_array_equal(back[key], sd[key], err_msg=key)


def test_bf16_conversion_rounds_like_torch_and_restore_casts(ckpt, tmp_path):
    model, path, sd = ckpt
    convert_to_orbax(path, "diffusers", CFG, tmp_path / "bf16")  # default bf16
    ours = load(tmp_path / "bf16", CFG)
    flat = {".".join(map(str, p)): np.asarray(v[...])
            for p, v in nnx.to_flat_state(nnx.state(ours))}
    assert flat["blocks.attn1.to_q.kernel"].dtype == ml_dtypes.bfloat16
    assert flat["blocks.scale_shift_table"].dtype == np.float32
    want = model.state_dict()["blocks.1.attn1.to_q.weight"].to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(flat["blocks.attn1.to_q.kernel"][1].astype(np.float32), want.T)
    # a float32 checkpoint restored as bf16 equals the bf16 conversion
    convert_to_orbax(path, "diffusers", CFG, tmp_path / "f32", dtype=jnp.float32)
    assert same_params(load(tmp_path / "f32", CFG), ours)


def test_ignored_keys_are_reported_not_silent(ckpt, tmp_path):
    _, _, sd = ckpt
    src = _save({**sd, "blocks.0.attn2.norm_added_q.weight": np.ones(24, np.float32)},
                tmp_path / "extra.safetensors")
    report = convert_to_orbax(src, "diffusers", CFG, tmp_path / "out")
    assert report.ignored == ["blocks.0.attn2.norm_added_q.weight"]
    meta = json.loads((tmp_path / "out" / "wan_config.json").read_text())
    assert meta["ignored_keys"] == report.ignored


def test_cli_end_to_end(ckpt, tmp_path, capsys):
    model, path, _ = ckpt
    config_json = tmp_path / "config.json"
    config_json.write_text(json.dumps(CFG.to_diffusers()))
    rc = cli_main(["--from", "diffusers", str(path), "--model", str(config_json),
                   "--out", str(tmp_path / "orbax"), "--dtype", "float32", "-v"])
    out = capsys.readouterr().out
    assert rc == 0 and "wrote" in out and "peak RSS" in out
    assert same_params(load(tmp_path / "orbax", CFG, dtype=jnp.float32),
                       load(path, CFG, dtype=jnp.float32))
    official = tmp_path / "official.safetensors"
    from safetensors.torch import save_file

    save_file(official_state_dict(model), str(official))
    assert cli_main(["--from", "wan", str(official), "--model", str(config_json),
                     "--out", str(tmp_path / "orbax2"), "--quiet"]) == 0
    assert same_params(load(tmp_path / "orbax2", CFG), load(path, CFG))
    rc = cli_main(["--from", "diffusers", str(path), "--model", "wan2.1-t2v-1.3b",
                   "--out", str(tmp_path / "orbax3"), "--quiet"])
    assert rc == 1 and "missing" in capsys.readouterr().err
    assert not (tmp_path / "orbax3").exists()


def test_load_detects_what_the_path_is(ckpt, tmp_path):
    _, path, _ = ckpt
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no Wan checkpoint at"):
        load(tmp_path / "empty", CFG)
    other = _save({"encoder.weight": np.zeros(3, np.float32)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="neither the diffusers nor the official"):
        load(other, CFG)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="no Wan checkpoint at"):
        load(tmp_path / "notes.txt", CFG)
    # the diffusers directory's config.json must agree with the requested architecture
    with pytest.raises(ValueError, match="eps: checkpoint 1e-06, requested 1e-05"):
        load(path, WanConfig(**{**CFG.to_diffusers(), "eps": 1e-5}))
    convert_to_orbax(path, "diffusers", CFG, tmp_path / "orbax")
    with pytest.raises(ValueError, match="num_layers: checkpoint 2, requested 3"):
        load(tmp_path / "orbax", WanConfig(**{**CFG.to_diffusers(), "num_layers": 3}))


def test_torch_files_read_like_safetensors_and_progress_counts(ckpt, tmp_path):
    model, path, sd = ckpt
    diffusers_pt = tmp_path / "diffusers.pt"
    torch.save(model.state_dict(), diffusers_pt)
    assert same_params(load(diffusers_pt, CFG, dtype=jnp.float32),
                       load(path, CFG, dtype=jnp.float32))
    official_pt = tmp_path / "official.pt"
    torch.save({"module": official_state_dict(model), "step": torch.tensor(1)}, official_pt)
    seen = []
    report = convert_to_orbax(official_pt, "wan", CFG, tmp_path / "orbax", progress=seen.append)
    # one callback per tensor, named in diffusers' keys; the wrapper's other entry reported
    assert len(seen) == count_reads(official_pt, "wan", CFG) == len(sd) == report.tensors
    assert sorted(seen) == sorted(sd) and report.ignored == ["step"]
    assert same_params(load(tmp_path / "orbax", CFG), load(path, CFG))


def test_load_with_mesh_places_replicated(ckpt):
    _, path, _ = ckpt
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    model = load(path, CFG, mesh=mesh)
    for _, v in nnx.to_flat_state(nnx.state(model)):
        assert v[...].sharding == jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_match_diffusers_parameter_shapes(preset):
    """Our expected keys and shapes for each preset equal diffusers' model (meta device)."""
    config = PRESETS[preset]
    with torch.device("meta"):
        theirs = diffusers_model(config)
    want = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    _, abstract = abstract_state(FAMILY, config, jnp.bfloat16)
    got = {k: t.source_shape for k, t in expected_keys(FAMILY.keys, config, abstract).items()}
    assert got == want
    n = sum(int(np.prod(s)) for s in want.values())
    # the released sizes (per expert for the Wan2.2 A14B models)
    size = {"wan2.1-t2v-1.3b": 1.3e9, "wan2.2-ti2v-5b": 5e9}.get(preset, 14e9)
    assert 0.9 * size < n < 1.2 * size


def diffusers_model(config):
    import diffusers

    return diffusers.WanTransformer3DModel(**config.to_diffusers())


def test_config_json_round_trip_and_errors(ckpt, tmp_path):
    _, path, _ = ckpt
    assert get_config(str(path / "config.json")) == CFG
    assert get_config("wan2.1-i2v-14b").in_channels == 36
    with pytest.raises(ValueError, match="unknown config keys"):
        WanConfig.from_diffusers({**CFG.to_diffusers(), "window_size": [-1, -1]})
    with pytest.raises(ValueError, match="added_kv_proj_dim .* must equal the inner dim"):
        WanConfig(image_dim=1280, added_kv_proj_dim=1280)
    with pytest.raises(ValueError, match="attention_head_dim=13"):
        WanConfig(num_attention_heads=2, attention_head_dim=13)
    with pytest.raises(ValueError, match="qk_norm"):
        WanConfig(qk_norm="rms_norm")
