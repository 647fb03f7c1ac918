"""The Wan model with SVG2 self-attention: exact at top_p=1, sparse and stateful below (the
default error-aware selection with compensation)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from test_attention import numpy_svg2

from svg2_jax import SVG2Cache, SVG2Config, svg2_attention
from svg2_jax.layer_attention import DenseAttention, SVG2Attention
from svg2_jax.models.wan import WanConfig, WanTransformer3DModel, wan_forward

# 3 layers, latent 3 x 6 x 10 -> S = 45 tokens (>= the 8 key clusters below)
CFG = WanConfig(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                text_dim=32, freq_dim=16, ffn_dim=64, num_layers=3)
SMALL = dict(num_q_clusters=4, num_k_clusters=8, kmeans_iters_cold=5, min_kc_ratio=0.0)


@pytest.fixture(scope="module")
def setup():
    model = WanTransformer3DModel(CFG, dtype=jnp.float32, param_dtype=jnp.float32,
                                  rngs=nnx.Rngs(0))
    keys = jax.random.split(jax.random.PRNGKey(1), 2)
    args = (jax.random.normal(keys[0], (2, 4, 3, 6, 10)), jnp.array([900.0, 10.0]),
            jax.random.normal(keys[1], (2, 16, 32)))
    graphdef, params = nnx.split(model)
    dense = jax.jit(functools.partial(wan_forward, graphdef))(params, *args)[0]
    return model, args, dense


_STEPS = {}


def _with(model, attention):
    """The same weights behind another attention object (no model code involved); the
    jitted step is shared by the tests that use the same attention object."""
    model.attention = attention
    graphdef, params = nnx.split(model)
    model.attention = DenseAttention()
    if attention not in _STEPS:
        _STEPS[attention] = jax.jit(functools.partial(wan_forward, graphdef))
    return _STEPS[attention], params


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def test_top_p_one_equals_dense(setup):
    model, args, dense = setup
    attention = SVG2Attention(SVG2Config(selection="svg2", top_p=1.0, **SMALL), dense_layers=())
    step, params = _with(model, attention)
    out, state, density = step(params, *args, attention.init_state(3, 2, 2, 12))
    assert _rel(out, dense) <= 1e-5
    np.testing.assert_allclose(np.asarray(density), 1.0, rtol=1e-6)
    assert np.asarray(state.initialized).all()


@dataclasses.dataclass(frozen=True)
class Recording:
    """An attention that also keeps what each layer gave and got: its state is (the inner
    attention's state, [L, 4, B, seq, H, D] stacked q, k, v, out)."""

    inner: SVG2Attention
    seq: int

    def init_state(self, num_layers, batch, heads, head_dim):
        return (self.inner.init_state(num_layers, batch, heads, head_dim),
                jnp.zeros((num_layers, 4, batch, self.seq, heads, head_dim)))

    def __call__(self, q, k, v, state, layer_index, **kwargs):
        out, inner, density = self.inner(q, k, v, state[0], layer_index, **kwargs)
        return out, (inner, jnp.stack([q, k, v, out])), density


def test_sparse_layers_cluster_their_own_tokens_and_warm_start_from_their_state(setup):
    model, args, _ = setup
    svg2 = SVG2Attention(SVG2Config.error_aware(error_tolerance=0.05, **SMALL),
                         dense_layers=(0,))
    attention = Recording(svg2, seq=45)
    step, params = _with(model, attention)
    state0 = attention.init_state(CFG.num_layers, 2, CFG.num_attention_heads,
                                  CFG.attention_head_dim)
    out1, (state1, rec1), density1 = step(params, *args, state0)
    compiled = step._cache_size()
    assert density1.shape == (3, 2, 2)
    np.testing.assert_array_equal(np.asarray(density1[0]), 1.0)  # layer 0 stays dense
    assert (np.asarray(density1[1:]) < 1).all()
    np.testing.assert_array_equal(np.asarray(state1.initialized), [False, True, True])
    np.testing.assert_array_equal(np.asarray(state1.cache.q_centroids[0]), 0.0)  # dense layer
    # each sparse layer: a cold start on its own tokens with fold_in(PRNGKey(seed), layer)
    for layer in (1, 2):
        q, k, v, out = rec1[layer]
        want, cache, stats = svg2_attention(q, k, v, None, svg2.config,
                                            jax.random.fold_in(jax.random.PRNGKey(0), layer))
        np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(state1.cache.k_centroids[layer]),
                                      np.asarray(cache.k_centroids))
        np.testing.assert_allclose(np.asarray(density1[layer]), np.asarray(stats.density))
    # second call: each layer warm-starts from its carried centroids (numpy reference),
    # same compiled function
    x, t, ctx = args
    out2, (state2, rec2), density2 = step(params, x, t * 0.9, ctx, (state1, rec1))
    assert step._cache_size() == compiled
    for layer in (1, 2):
        q, k, v, out = (np.asarray(a) for a in rec2[layer])
        carried = SVG2Cache(state1.cache.q_centroids[layer], state1.cache.k_centroids[layer])
        want, density = numpy_svg2(q, k, v, carried, svg2.config)
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(density2[layer]), density, rtol=1e-5)
    assert (np.asarray(density2[1:]) < 1).all()
    assert np.isfinite(np.asarray(out2)).all()


def test_fresh_state_is_made_when_none_is_given(setup):
    model, args, _ = setup
    attention = SVG2Attention(SVG2Config.error_aware(error_tolerance=0.05, **SMALL),
                              dense_layers=(0,))
    step, params = _with(model, attention)
    out_none, state, _ = step(params, *args, None)
    out_init, _, _ = step(params, *args, attention.init_state(3, 2, 2, 12))
    np.testing.assert_array_equal(np.asarray(out_none), np.asarray(out_init))
    assert np.asarray(state.initialized)[1:].all()
