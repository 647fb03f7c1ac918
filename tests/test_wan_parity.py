"""Parity of svg2_jax.models.wan with diffusers' WanTransformer3DModel (fp32, CPU), through
every checkpoint route: diffusers single file, diffusers sharded -> orbax, official layout."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from shared_fixtures import make_saved_fixture
from test_wan_helpers import (TINY, inputs, jax_args, jax_forward, official_state_dict,
                              rel_err, same_params, torch, torch_forward, torch_model)

from convert.wan import convert_to_orbax
from svg2_jax.models.wan import WanTransformer3DModel, load, wan_forward

TOL = 1e-4


saved = make_saved_fixture(TINY, torch_model, torch_forward, inputs)


@pytest.mark.parametrize("kind", list(TINY))
def test_diffusers_single_file_direct(saved, kind):
    _, path, ref = saved(kind)
    model = load(path, TINY[kind], dtype=jnp.float32)
    out, state, density = jax_forward(model, inputs(TINY[kind]))
    assert out.shape == ref.shape and out.dtype == jnp.float32
    assert rel_err(out, ref) <= TOL
    assert state is None
    cfg = TINY[kind]
    assert density.shape == (cfg.num_layers, 2, cfg.num_attention_heads)
    np.testing.assert_array_equal(np.asarray(density), 1.0)


@pytest.mark.parametrize("kind", ["t2v", "i2v"])
def test_diffusers_sharded_through_orbax(saved, tmp_path, kind):
    model, _, ref = saved(kind)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, safe_serialization=True, max_shard_size="20KB")
    assert (sharded / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("*.safetensors"))) > 2
    report = convert_to_orbax(sharded, "diffusers", TINY[kind], tmp_path / "orbax",
                              dtype=jnp.float32)
    assert report.tensors == len(model.state_dict())
    ours = load(tmp_path / "orbax", TINY[kind], dtype=jnp.float32)
    assert rel_err(jax_forward(ours, inputs(TINY[kind]))[0], ref) <= TOL


@pytest.mark.parametrize("kind,prefix", [("t2v", ""), ("i2v", "model.diffusion_model."),
                                         ("flf2v", "")])
def test_official_layout(saved, tmp_path, kind, prefix):
    from safetensors.torch import save_file

    model, _, ref = saved(kind)
    file = tmp_path / "wan_official.safetensors"
    save_file(official_state_dict(model, prefix), str(file))
    ours = load(file, TINY[kind], dtype=jnp.float32)
    assert rel_err(jax_forward(ours, inputs(TINY[kind]))[0], ref) <= TOL
    # official -> orbax gives the very same parameters as loading the file directly
    convert_to_orbax(file, "wan", TINY[kind], tmp_path / "orbax", dtype=jnp.float32)
    assert same_params(load(tmp_path / "orbax", TINY[kind], dtype=jnp.float32), ours)


def test_jit_pure_form_matches_eager_and_compiles_once(saved):
    _, path, ref = saved("i2v")
    model = load(path, TINY["i2v"], dtype=jnp.float32)
    graphdef, params = nnx.split(model)
    step = jax.jit(functools.partial(wan_forward, graphdef))
    x = {k: jnp.asarray(v.numpy()) for k, v in inputs(TINY["i2v"]).items()}
    args = (x["hidden_states"], x["timestep"], x["encoder_hidden_states"], None,
            x["encoder_hidden_states_image"])
    out, _, _ = step(params, *args)
    assert rel_err(out, ref) <= TOL
    step(params, args[0], args[1] * 0.5, *args[2:])
    assert step._cache_size() == 1


def test_bf16_default_close_to_fp32_reference(saved):
    _, path, ref = saved("i2v")
    model = load(path, TINY["i2v"])  # bf16 weights and activations
    out = jax_forward(model, inputs(TINY["i2v"]))[0]
    assert out.dtype == jnp.bfloat16
    assert rel_err(out, ref) < 3e-2
    dtypes = {".".join(map(str, p)): v.dtype for p, v in nnx.to_flat_state(nnx.state(model))}
    # float32 where diffusers keeps float32; bf16 elsewhere
    assert dtypes["blocks.scale_shift_table"] == jnp.float32
    assert dtypes["scale_shift_table"] == jnp.float32
    assert dtypes["condition_embedder.time_embedder.linear_1.kernel"] == jnp.float32
    assert dtypes["blocks.norm2.scale"] == jnp.float32
    assert dtypes["blocks.attn1.norm_q.scale"] == jnp.float32
    assert dtypes["blocks.attn1.to_q.kernel"] == jnp.bfloat16
    assert dtypes["condition_embedder.time_proj.kernel"] == jnp.bfloat16
    assert dtypes["patch_embedding.kernel"] == jnp.bfloat16


def test_blocks_are_stacked_on_a_layer_axis():
    config = TINY["t2v_hd24_nonorm"]
    model = nnx.eval_shape(lambda: WanTransformer3DModel(config, rngs=nnx.Rngs(0)))
    flat = {".".join(map(str, p)): v.shape for p, v in nnx.to_flat_state(nnx.state(model))}
    assert flat["blocks.attn1.to_q.kernel"] == (3, 48, 48)
    assert flat["blocks.ffn.proj_in.kernel"] == (3, 48, 64)
    assert flat["blocks.scale_shift_table"] == (3, 1, 6, 48)
    assert not any(k.startswith("blocks.norm2") for k in flat)  # cross_attn_norm=False


def _model(kind):
    # abstract weights: the input checks run before any parameter is touched
    return nnx.eval_shape(lambda: WanTransformer3DModel(TINY[kind], dtype=jnp.float32,
                                                        param_dtype=jnp.float32,
                                                        rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("change,match", [
    (dict(hidden_states=torch.zeros(2, 6, 3, 7, 10)), "H=7 is not divisible by the patch"),
    (dict(hidden_states=torch.zeros(2, 6, 3, 6, 9)), "W=9 is not divisible"),
    (dict(hidden_states=torch.zeros(2, 5, 3, 6, 10)), "has 5 channels, the model takes "
                                                      "in_channels=6"),
    (dict(hidden_states=torch.zeros(2, 6, 6, 10)), r"must be \[B, C, F, H, W\]"),
    (dict(timestep=torch.zeros(3)), r"timestep must be \[B\]"),
    (dict(encoder_hidden_states=torch.zeros(2, 512, 31)), "text_dim=32"),
    (dict(encoder_hidden_states_image=None), "pass encoder_hidden_states_image"),
    (dict(encoder_hidden_states_image=torch.zeros(2, 9, 19)), "encoder_hidden_states_image "
                                                              "must be"),
])
def test_bad_inputs_raise(change, match):
    x = {**inputs(TINY["i2v"]), **change}
    x = {k: v for k, v in x.items() if v is not None}
    with pytest.raises(ValueError, match=match):
        _model("i2v")(*jax_args(x))


def test_image_features_for_a_text_model_raise():
    x = inputs(TINY["i2v"])
    x["hidden_states"] = x["hidden_states"][:, :4]
    x["encoder_hidden_states"] = x["encoder_hidden_states"][:, :16]
    with pytest.raises(ValueError, match="given to a text-to-video model"):
        _model("t2v")(*jax_args(x))



