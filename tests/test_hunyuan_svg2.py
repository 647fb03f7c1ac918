"""The HunyuanVideo model with SVG2 joint attention: equal to dense (text masking included)
at top_p=1, sparse and stateful below, layers numbered dual i -> i, single j -> L + j."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from test_hunyuan_helpers import (TEXT_LEN, TEXT_LENGTHS, TINY, forward_args, inputs,
                                  jax_args, jax_forward)
from test_wan_svg2 import Recording

from svg2_jax import SVG2Cache, SVG2Config
from svg2_jax.checkpoints import nest
from svg2_jax.joint_attention import svg2_joint_attention
from svg2_jax.layer_attention import DenseAttention, SVG2Attention
from svg2_jax.models.hunyuan import HunyuanVideoTransformer3DModel, hunyuan_forward

# 2 dual + 2 single blocks (attention layers 0, 1 | 2, 3); latent 3 x 6 x 10 -> Sv = 45
# video tokens (>= the 8 key clusters below) + 12 text tokens, 5 and 9 of them real
CFG = TINY["t2v"]
SMALL = dict(num_q_clusters=4, num_k_clusters=8, kmeans_iters_cold=5, min_kc_ratio=0.0)
LAYERS, B, H, D = 4, 2, 2, 16
SV = 45  # video tokens


def random_model(config, seed=0):
    """A float32 model with numpy-random weights (kernels ~ N(0, 1/fan_in), norm scales near
    1): compiling jax's random initialisers for every parameter shape costs ~15 s on CPU."""
    model = nnx.eval_shape(lambda: HunyuanVideoTransformer3DModel(
        config, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    flat = {}
    for path, var in nnx.to_flat_state(nnx.state(model)):
        x = rng.standard_normal(var.shape).astype(np.float32)
        if path[-1] == "kernel":
            x /= np.sqrt(var.shape[-2])
        elif path[-1] == "scale":
            x = 1 + 0.1 * x
        else:
            x *= 0.1
        flat[path] = jnp.asarray(x)
    state = nnx.state(model)
    nnx.replace_by_pure_dict(state, nest(flat))
    nnx.update(model, state)
    return model


@pytest.fixture(scope="module")
def setup():
    model = random_model(CFG)
    x = inputs(CFG)
    # the dense reference through the parity tests' shared compilation
    return model, jax_args(x)[:-1], jax_forward(model, x)[0]


def _with(model, attention):
    """The same weights behind another attention object (no model code involved)."""
    model.attention = attention
    graphdef, params = nnx.split(model)
    model.attention = DenseAttention()
    return jax.jit(functools.partial(hunyuan_forward, graphdef)), params


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.mark.parametrize("rule", [dict(selection="svg2", top_p=1.0, compensation=True),
                                  dict(selection="error", error_tolerance=0.0,
                                       compensation=True)])
def test_top_p_one_equals_dense_including_text_cold_and_warm(setup, rule):
    """Every block selected (the reference rule at top_p 1, the error-aware rule at
    tolerance 0), compensation on: nothing to compensate, exactly dense."""
    model, args, dense = setup
    attention = SVG2Attention(SVG2Config(**rule, **SMALL), dense_layers=())
    step, params = _with(model, attention)
    out, state, density = step(params, *args, attention.init_state(LAYERS, B, H, D))
    assert _rel(out, dense) <= 1e-5
    np.testing.assert_allclose(np.asarray(density), 1.0, rtol=1e-6)
    assert np.asarray(state.initialized).all()  # every layer of both scans clustered
    assert state.cache.k_centroids.shape == (LAYERS, B, H, 8, D)
    # next step (new timestep), warm, in the same compiled function: still exact (what
    # the warm start computes is checked in the sparse test below)
    x, t, *rest = args
    out2, _, density2 = step(params, x, t * 0.9, *rest, state)
    assert step._cache_size() == 1
    assert _rel(out2, forward_args(model, x, t * 0.9, *rest)[0]) <= 1e-5
    np.testing.assert_allclose(np.asarray(density2), 1.0, rtol=1e-6)


def test_sparse_joint_layers_cold_then_warm_from_their_own_state(setup):
    """The error-aware rule with compensation through both scans: each
    layer's output, density and cache are `svg2_joint_attention` on its own tokens, cold
    from fold_in(PRNGKey(0), layer), then warm from the centroids that layer carried."""
    model, args, _ = setup
    svg2 = SVG2Attention(SVG2Config.error_aware(error_tolerance=0.05, **SMALL),
                         dense_layers=())
    attention = Recording(svg2, seq=SV + TEXT_LEN)
    step, params = _with(model, attention)
    lengths = jnp.asarray(TEXT_LENGTHS[:B], jnp.int32)
    joint = functools.partial(svg2_joint_attention, config=svg2.config, num_text=TEXT_LEN)
    _, (state1, rec1), density1 = step(params, *args, attention.init_state(LAYERS, B, H, D))
    assert (np.asarray(density1) < 1).all()
    keys = [jax.random.fold_in(jax.random.PRNGKey(0), layer) for layer in range(LAYERS)]
    for layer in range(LAYERS):
        q, k, v, out = rec1[layer]
        want, cache, stats = joint(q, k, v, lengths, None, key=keys[layer])
        np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(density1[layer]), np.asarray(stats.density))
        np.testing.assert_array_equal(np.asarray(state1.cache.k_centroids[layer]),
                                      np.asarray(cache.k_centroids))
        assert (np.asarray(stats.compensated_mass) > 0).all()
    x, t, *rest = args
    _, (state2, rec2), density2 = step(params, x, t * 0.9, *rest, (state1, rec1))
    assert step._cache_size() == 1
    cold_differs = []
    for layer in range(LAYERS):
        q, k, v, out = rec2[layer]
        carried = SVG2Cache(state1.cache.q_centroids[layer], state1.cache.k_centroids[layer])
        want, cache, stats = joint(q, k, v, lengths, carried)
        np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(density2[layer]), np.asarray(stats.density))
        np.testing.assert_array_equal(np.asarray(state2.cache.q_centroids[layer]),
                                      np.asarray(cache.q_centroids))
        cold, _, _ = joint(q, k, v, lengths, None, key=keys[layer])
        cold_differs.append(not np.allclose(np.asarray(cold), np.asarray(want), atol=1e-4))
    assert any(cold_differs)  # so the checks above see the warm start


@dataclasses.dataclass(frozen=True)
class ProbeAttention:
    """Dense attention that reports what the model hands it: density[b, h] encodes
    layer_index, num_text and text_lengths[b]; the state [L] int32 adds the sequence length
    (so each layer's slice must reach its layer exactly once)."""

    def init_state(self, num_layers, batch, heads, head_dim):
        return jnp.zeros((num_layers,), jnp.int32)

    def __call__(self, q, k, v, state, layer_index, *, num_text=0, text_lengths=None):
        out, _, _ = DenseAttention()(q, k, v, None, layer_index, num_text=num_text,
                                     text_lengths=text_lengths)
        code = 1000 * layer_index + 10 * num_text + text_lengths[:, None]
        density = jnp.broadcast_to(code, (q.shape[0], q.shape[2])).astype(jnp.float32)
        return out, state + q.shape[1], density


def test_layer_numbering_text_arguments_and_state_across_both_scans(setup):
    model, args, dense = setup
    attention = ProbeAttention()
    step, params = _with(model, attention)
    model.attention = attention
    state0 = model.init_attention_state(B)
    model.attention = DenseAttention()
    assert state0.shape == (LAYERS,)
    out, state, density = step(params, *args, state0)
    np.testing.assert_allclose(np.asarray(out), np.asarray(dense), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(state), 45 + 12)  # [video | text] tokens
    # dual blocks 0, 1 are layers 0, 1; single blocks 0, 1 are layers 2, 3 (= num_layers + j)
    want = (1000 * np.arange(LAYERS)[:, None, None] + 10 * 12
            + np.array([5, 9])[None, :, None]) * np.ones((1, 1, H))
    np.testing.assert_array_equal(np.asarray(density), want)
