import jax
import jax.numpy as jnp
import numpy as np

from svg2_jax import SVG2Config, svg2_attention
from svg2_jax.layer_attention import DenseAttention, SVG2Attention

# the reference rule with compensation: random q, k are sparse under top-p, while the
# error-aware rule rightly computes nearly every block of them
CFG = SVG2Config(num_q_clusters=4, num_k_clusters=8, selection="svg2", top_p=0.5,
                 kmeans_iters_cold=5)


def stacked_qkv(seed, layers=3, shape=(1, 96, 2, 16)):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    return [jax.random.normal(kk, (layers,) + shape) for kk in keys]


def scan_layers(attn, q, k, v, state):
    def body(state_l, xs):
        i, ql, kl, vl, st = xs
        out, st, dens = attn(ql, kl, vl, st, i)
        return None, (out, st, dens)

    _, (out, state, dens) = jax.lax.scan(body, None, (jnp.arange(q.shape[0]), q, k, v, state))
    return out, state, dens


def test_dense_layers_and_cold_then_warm_inside_a_layer_scan():
    attn = SVG2Attention(CFG, dense_layers=(0,), seed=3)
    q, k, v = stacked_qkv(0)
    state = attn.init_state(3, 1, 2, 16)
    run = jax.jit(lambda q, k, v, s: scan_layers(attn, q, k, v, s))
    out, state1, dens = run(q, k, v, state)
    np.testing.assert_allclose(np.asarray(out[0]), np.asarray(jax.nn.dot_product_attention(
        q[0], k[0], v[0])), rtol=1e-5, atol=1e-6)
    assert (np.asarray(dens[0]) == 1).all() and (np.asarray(dens[1:]) < 1).all()
    np.testing.assert_array_equal(np.asarray(state1.initialized), [False, True, True])
    # layer 1 was a cold start with fold_in(PRNGKey(3), 1)
    want, cache, _ = svg2_attention(q[1], k[1], v[1], None, CFG,
                                    jax.random.fold_in(jax.random.PRNGKey(3), 1))
    np.testing.assert_allclose(np.asarray(out[1]), np.asarray(want), rtol=1e-5, atol=1e-6)
    # second call: warm from the stored centroids, same compiled function
    out2, _, _ = run(q, k, v, state1)
    want2, _, _ = svg2_attention(q[1], k[1], v[1], cache, CFG)
    np.testing.assert_allclose(np.asarray(out2[1]), np.asarray(want2), rtol=1e-5, atol=1e-6)
    assert run._cache_size() == 1


def test_disabled_sparsity_is_dense_everywhere():
    attn = SVG2Attention(CFG)
    q, k, v = stacked_qkv(1)
    state = attn.init_state(3, 1, 2, 16)
    out, state2, dens = scan_layers(attn, q, k, v, attn.set_mode(state, sparse=False))
    dense, _, _ = scan_layers(DenseAttention(), q, k, v, None)
    np.testing.assert_allclose(np.asarray(out), np.asarray(dense), rtol=1e-5, atol=1e-6)
    assert (np.asarray(dens) == 1).all() and not np.asarray(state2.initialized).any()


def test_dense_call_can_cluster_so_the_next_sparse_call_is_warm():
    attn = SVG2Attention(CFG, dense_layers=(0,), seed=3)
    q, k, v = stacked_qkv(2)
    state = attn.set_mode(attn.init_state(3, 1, 2, 16), sparse=False, cluster=True)
    np.testing.assert_array_equal(np.asarray(state.cluster), [False, True, True])
    out, state, dens = scan_layers(attn, q, k, v, state)
    dense, _, _ = scan_layers(DenseAttention(), q, k, v, None)
    np.testing.assert_allclose(np.asarray(out), np.asarray(dense), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(state.initialized), [False, True, True])
    _, cache, _ = svg2_attention(q[2], k[2], v[2], None, CFG,
                                 jax.random.fold_in(jax.random.PRNGKey(3), 2))
    np.testing.assert_allclose(np.asarray(state.cache.k_centroids[2]),
                               np.asarray(cache.k_centroids), rtol=1e-6)
    out2, _, _ = scan_layers(attn, q, k, v, attn.set_mode(state, sparse=True))
    want, _, _ = svg2_attention(q[2], k[2], v[2], cache, CFG)
    np.testing.assert_allclose(np.asarray(out2[2]), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_layer_attention_table():
    from svg2_jax.layer_attention import LAYER_ATTENTIONS, LayerAttention
    assert LAYER_ATTENTIONS == {"dense": DenseAttention, "svg2": SVG2Attention}
    for attn in (DenseAttention(), SVG2Attention(CFG)):
        assert isinstance(attn, LayerAttention)
