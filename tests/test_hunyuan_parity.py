"""Parity of svg2_jax.models.hunyuan with diffusers' HunyuanVideoTransformer3DModel (fp32,
CPU, padded text), through every checkpoint route: diffusers single file, diffusers
sharded -> orbax, official-layout torch .pt and safetensors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from shared_fixtures import make_saved_fixture
from test_hunyuan_helpers import (TEXT_LEN, TEXT_LENGTHS, TINY, inputs, jax_args, jax_forward,
                                  official_state_dict, rel_err, same_params, torch,
                                  torch_forward, torch_model)

from convert.hunyuan import convert_to_orbax
from svg2_jax.models.hunyuan import HunyuanVideoTransformer3DModel, hunyuan_forward, load

TOL = 1e-4


saved = make_saved_fixture(TINY, torch_model, torch_forward, inputs)


@pytest.mark.parametrize("kind", list(TINY))
def test_diffusers_single_file_direct(saved, kind):
    _, path, ref = saved(kind)
    cfg = TINY[kind]
    model = load(path, cfg, dtype=jnp.float32)
    out, state, density = jax_forward(model, inputs(cfg))
    assert out.shape == ref.shape and out.dtype == jnp.float32
    assert rel_err(out, ref) <= TOL
    assert state is None
    assert density.shape == (cfg.num_layers + cfg.num_single_layers, 2,
                             cfg.num_attention_heads)
    np.testing.assert_array_equal(np.asarray(density), 1.0)


def test_diffusers_sharded_through_orbax(saved, tmp_path):
    model, _, ref = saved("t2v")
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, safe_serialization=True, max_shard_size="20KB")
    assert (sharded / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("*.safetensors"))) > 2
    report = convert_to_orbax(sharded, "diffusers", TINY["t2v"], tmp_path / "orbax",
                              dtype=jnp.float32)
    assert report.tensors == len(model.state_dict()) and report.ignored == []
    ours = load(tmp_path / "orbax", TINY["t2v"], dtype=jnp.float32)
    assert rel_err(jax_forward(ours, inputs(TINY["t2v"]))[0], ref) <= TOL


def test_official_pt(saved, tmp_path):
    """The released layout: a torch .pt holding the state dict under "module"."""
    model, path, ref = saved("t2v")
    file = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": official_state_dict(model)}, file)
    ours = load(file, TINY["t2v"], dtype=jnp.float32)
    assert rel_err(jax_forward(ours, inputs(TINY["t2v"]))[0], ref) <= TOL
    assert same_params(ours, load(path, TINY["t2v"], dtype=jnp.float32))
    # official -> orbax gives the very same parameters as loading the file directly
    report = convert_to_orbax(file, "hunyuan", TINY["t2v"], tmp_path / "orbax",
                              dtype=jnp.float32)
    assert report.tensors == len(model.state_dict())
    assert same_params(load(tmp_path / "orbax", TINY["t2v"], dtype=jnp.float32), ours)


def test_official_safetensors_with_prefix(saved, tmp_path):
    from safetensors.torch import save_file

    model, path, ref = saved("nog")
    file = tmp_path / "hunyuan_official.safetensors"
    save_file(official_state_dict(model, "model.diffusion_model."), str(file))
    ours = load(file, TINY["nog"], dtype=jnp.float32)
    assert rel_err(jax_forward(ours, inputs(TINY["nog"]))[0], ref) <= TOL
    assert same_params(ours, load(path, TINY["nog"], dtype=jnp.float32))


def test_jit_pure_form_matches_eager_and_compiles_once(saved):
    _, path, ref = saved("t2v")
    model = load(path, TINY["t2v"], dtype=jnp.float32)
    graphdef, params = nnx.split(model)
    step = jax.jit(functools.partial(hunyuan_forward, graphdef))
    args = jax_args(inputs(TINY["t2v"]))
    out, _, _ = step(params, *args)
    assert rel_err(out, ref) <= TOL
    step(params, args[0], args[1] * 0.5, *args[2:])
    assert step._cache_size() == 1


def test_padded_text_is_ignored_and_the_mask_matters(saved):
    """Padded text tokens never reach the video output (as in diffusers, checked on both);
    treating them as real changes it."""
    model, path, ref = saved("t2v")
    cfg = TINY["t2v"]
    ours = load(path, cfg, dtype=jnp.float32)
    x = inputs(cfg)
    noisy = dict(x, encoder_hidden_states=x["encoder_hidden_states"].clone())
    for b, n in enumerate(TEXT_LENGTHS):
        noisy["encoder_hidden_states"][b, n:] = 100.0
    np.testing.assert_allclose(torch_forward(model, noisy), ref, rtol=0, atol=1e-5)
    base = jax_forward(ours, x)[0]
    np.testing.assert_allclose(np.asarray(jax_forward(ours, noisy)[0]), np.asarray(base),
                               rtol=0, atol=1e-5)
    full = dict(x, encoder_attention_mask=torch.ones(2, TEXT_LEN, dtype=torch.long))
    out_full = jax_forward(ours, full)[0]
    assert rel_err(out_full, ref) > 1e-2
    assert rel_err(out_full, torch_forward(model, full)) <= TOL


def test_bf16_default_close_to_fp32_reference(saved):
    _, path, ref = saved("t2v")
    model = load(path, TINY["t2v"])  # bf16 weights and activations
    out = jax_forward(model, inputs(TINY["t2v"]))[0]
    assert out.dtype == jnp.bfloat16
    assert rel_err(out, ref) < 5e-2
    dtypes = {".".join(map(str, p)): v.dtype for p, v in nnx.to_flat_state(nnx.state(model))}
    # float32 where we keep float32 (norm scales, timestep/guidance MLPs); bf16 elsewhere
    assert dtypes["time_text_embed.timestep_embedder.linear_1.kernel"] == jnp.float32
    assert dtypes["time_text_embed.guidance_embedder.linear_2.kernel"] == jnp.float32
    assert dtypes["transformer_blocks.attn.norm_q.scale"] == jnp.float32
    assert dtypes["context_embedder.token_refiner.refiner_blocks.norm1.bias"] == jnp.float32
    assert dtypes["transformer_blocks.attn.to_q.kernel"] == jnp.bfloat16
    assert dtypes["time_text_embed.text_embedder.linear_1.kernel"] == jnp.bfloat16
    assert dtypes["x_embedder.proj.kernel"] == jnp.bfloat16


def test_blocks_are_stacked_on_layer_axes():
    config = TINY["nog"]  # 1 dual, 2 single, 1 refiner block; inner 32, mlp 64
    model = nnx.eval_shape(lambda: HunyuanVideoTransformer3DModel(config, rngs=nnx.Rngs(0)))
    flat = {".".join(map(str, p)): v.shape for p, v in nnx.to_flat_state(nnx.state(model))}
    assert flat["transformer_blocks.attn.to_q.kernel"] == (1, 32, 32)
    assert flat["transformer_blocks.ff_context.proj_in.kernel"] == (1, 32, 64)
    assert flat["single_transformer_blocks.proj_out.kernel"] == (2, 96, 32)
    assert flat["single_transformer_blocks.attn.norm_k.scale"] == (2, 16)
    assert flat["context_embedder.token_refiner.refiner_blocks.ff.proj_in.kernel"] == (1, 32, 128)
    assert flat["proj_out.kernel"] == (32, 2 * 2 * 2 * 6)
    assert not any(k.startswith("time_text_embed.guidance_embedder") for k in flat)


def _abstract(kind):
    # abstract weights: the input checks run before any parameter is touched
    return nnx.eval_shape(lambda: HunyuanVideoTransformer3DModel(
        TINY[kind], dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("kind,change,match", [
    ("t2v", dict(hidden_states=torch.zeros(2, 4, 3, 7, 10)), "H=7 is not divisible by the patch"),
    ("nog", dict(hidden_states=torch.zeros(2, 4, 3, 6, 10)), "F=3 is not divisible by the patch "
                                                             "size 2"),
    ("t2v", dict(hidden_states=torch.zeros(2, 5, 3, 6, 10)), "has 5 channels, the model takes "
                                                             "in_channels=4"),
    ("t2v", dict(hidden_states=torch.zeros(2, 4, 6, 10)), r"must be \[B, C, F, H, W\]"),
    ("t2v", dict(timestep=torch.zeros(3)), r"timestep must be \[B\]"),
    ("t2v", dict(encoder_hidden_states=torch.zeros(2, 12, 31)), "text_embed_dim=24"),
    ("t2v", dict(encoder_attention_mask=torch.ones(2, 11, dtype=torch.long)),
     "encoder_attention_mask must be"),
    ("t2v", dict(encoder_attention_mask=torch.ones(2, 12)), "encoder_attention_mask must be"),
    ("t2v", dict(pooled_projections=torch.zeros(2, 19)), "pooled_projection_dim=20"),
    ("t2v", dict(guidance=None), "needs guidance"),
    ("nog", dict(guidance=torch.ones(2)), "guidance given to a model without"),
])
def test_bad_inputs_raise(kind, change, match):
    x = {**inputs(TINY[kind]), **change}
    x = {k: v for k, v in x.items() if v is not None}
    with pytest.raises(ValueError, match=match):
        _abstract(kind)(*jax_args(x))
