import jax
import jax.numpy as jnp
import numpy as np
import pytest
from einops import rearrange

import npref
from svg2_jax import SVG2Config
from svg2_jax.joint_attention import dense_joint_attention, svg2_joint_attention
from svg2_jax.layer_attention import DenseAttention, SVG2Attention

B, SV, T, H, D = 2, 150, 12, 2, 16


def qkv(seed):
    ks = jax.random.split(jax.random.PRNGKey(seed), 3)
    return [jax.random.normal(kk, (B, SV + T, H, D)) for kk in ks]


LENGTHS = jnp.asarray([5, 12], jnp.int32)


def numpy_dense_masked(q, k, v, lengths):
    """diffusers' HunyuanVideo masking: padded text tokens are masked as keys only."""
    heads = lambda x: rearrange(np.asarray(x), "b s h d -> (b h) s d")
    valid = np.concatenate([np.ones((B, SV), bool), np.arange(T)[None] < np.asarray(lengths)[:, None]], 1)
    mask = np.repeat(valid, H, axis=0)[:, None, :]
    out = npref.masked_attention(heads(q), heads(k), heads(v), mask, D ** -0.5)
    return rearrange(out, "(b h) s d -> b s h d", b=B)


def heads(x):
    return rearrange(x, "b s h d -> (b h) s d")


def documented_cold_clusters(q, k, key, cfg):
    """The video tokens' clustering rebuilt with the documented cold start (the key split
    in two for queries and keys): (qn, kn, vn heads, query and key k-means results)."""
    from svg2_jax import kmeans as km
    qn, kn = heads(q), heads(k)
    kq, kk = jax.random.split(key)
    rq = km.kmeans(qn[:, :SV], km.random_init(kq, qn[:, :SV], cfg.num_q_clusters),
                   cfg.kmeans_iters_cold, cfg.kmeans_tol)
    rk = km.kmeans(kn[:, :SV], km.random_init(kk, kn[:, :SV], cfg.num_k_clusters),
                   cfg.kmeans_iters_cold, cfg.kmeans_tol)
    return qn, kn, rq, rk


TEXT_OK = np.repeat(np.arange(T)[None] < np.asarray(LENGTHS)[:, None], H, axis=0)


def test_dense_joint_attention_masks_padded_text_keys():
    q, k, v = qkv(0)
    got = dense_joint_attention(q, k, v, LENGTHS, num_text=T)
    np.testing.assert_allclose(np.asarray(got), numpy_dense_masked(q, k, v, LENGTHS),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rule", [dict(selection="svg2", top_p=1.0, compensation=True),
                                  dict(selection="error", error_tolerance=0.0,
                                       compensation=True)])
def test_keep_everything_equals_dense_masked_attention(rule):
    q, k, v = qkv(1)
    cfg = SVG2Config(num_q_clusters=5, num_k_clusters=9, kmeans_iters_cold=3, q_tile=64, **rule)
    out, cache, stats = svg2_joint_attention(q, k, v, LENGTHS, None, cfg, num_text=T)
    np.testing.assert_allclose(np.asarray(out), numpy_dense_masked(q, k, v, LENGTHS),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(stats.density), 1.0, rtol=1e-6)
    assert cache.k_centroids.shape == (B, H, 9, D)


@pytest.mark.parametrize("backend", ["jax", "pallas_reference"])
def test_sparse_joint_attention_equals_numpy_with_the_same_selection(backend):
    """Video queries: selected video clusters + real text; text queries: everything real.
    pallas_reference: the Hopper kernel's path (padded layout, work list, output slots,
    lse merged with the text part) through the kernel's pure-JAX twin."""
    from svg2_jax import SparseTuningConfig
    from svg2_jax.selection import select_clusters

    q, k, v = qkv(2)
    cfg = SVG2Config.reference(num_q_clusters=5, num_k_clusters=9, top_p=0.5, min_kc_ratio=0.2,
                               kmeans_iters_cold=3, backend=backend,
                               kernel=SparseTuningConfig(block_kv=64, box_rows=8))
    out, _, stats = svg2_joint_attention(q, k, v, LENGTHS, None, cfg, jax.random.PRNGKey(4),
                                         num_text=T)
    # the same clustering, and the token mask in numpy
    qn, kn, rq, rk = documented_cold_clusters(q, k, jax.random.PRNGKey(4), cfg)
    vn = heads(v)
    sel = np.asarray(select_clusters(rq.centroids, rk.centroids, rk.sizes, 0.5, 1).selected)
    ql, kl = np.asarray(rq.labels), np.asarray(rk.labels)
    text_ok = TEXT_OK
    mask = np.zeros((B * H, SV + T, SV + T), bool)
    for n in range(B * H):
        mask[n, :SV, :SV] = sel[n][ql[n]][:, kl[n]]
        mask[n, :, SV:] = text_ok[n][None]
        mask[n, SV:, :SV] = True
    want = npref.masked_attention(qn, kn, vn, mask, D ** -0.5)
    np.testing.assert_allclose(np.asarray(heads(out)), want, rtol=1e-5, atol=1e-5)
    real = np.concatenate([np.ones((B * H, SV), bool), text_ok], 1)
    pairs = (mask & real[:, :, None] & real[:, None, :]).sum((1, 2)) / real.sum(1) ** 2
    np.testing.assert_allclose(np.asarray(stats.density).reshape(-1), pairs, rtol=1e-5)
    assert (pairs < 1).all()


def test_compensation_is_of_video_keys_only_and_text_stays_exact():
    """The error-aware selection (a density budget, random q, k being far from sparse) with
    compensation: video queries get their
    compensated video part (own video key exact) merged with every real text key; text
    queries attend exactly to everything real."""
    q, k, v = qkv(5)
    cfg = SVG2Config.error_aware(num_q_clusters=5, num_k_clusters=9, kmeans_iters_cold=3,
                                 target_density=0.4)
    out, _, stats = svg2_joint_attention(q, k, v, LENGTHS, None, cfg, jax.random.PRNGKey(6),
                                         num_text=T)
    qn, kn, rq, rk = documented_cold_clusters(q, k, jax.random.PRNGKey(6), cfg)
    vn = heads(v)
    ql, kl = np.asarray(rq.labels), np.asarray(rk.labels)
    scale = D ** -0.5
    got = np.asarray(heads(out))
    for n in range(B * H):
        st = npref.key_stats(kn[n, :SV], vn[n, :SV], kl[n], 9)
        sel = npref.error_select(qn[n, :SV], ql[n], 5, *st, scale, density=0.4)[0]
        assert 0 < sel.sum() < sel.size
        o_v, lse_v = npref.compensated_attention(qn[n, :SV], kn[n, :SV], vn[n, :SV], ql[n],
                                                 kl[n], sel, *st[:4], scale)
        o_t, lse_t = npref.masked_attention_lse(qn[None, n, :SV], kn[None, n, SV:],
                                                vn[None, n, SV:], TEXT_OK[None, n, None], scale)
        w_v, w_t = np.exp(lse_v - np.maximum(lse_v, lse_t[0])), np.exp(lse_t[0] - np.maximum(
            lse_v, lse_t[0]))
        want_video = (w_v[:, None] * o_v + w_t[:, None] * o_t[0]) / (w_v + w_t)[:, None]
        np.testing.assert_allclose(got[n, :SV], want_video, rtol=1e-5, atol=1e-5)
    dense = np.asarray(heads(numpy_dense_masked(q, k, v, LENGTHS)))
    np.testing.assert_allclose(got[:, SV:], dense[:, SV:], rtol=1e-5, atol=1e-5)
    assert (np.asarray(stats.compensated_mass) > 0).all()
    assert (np.asarray(stats.density) < 1).all()


def test_layer_attention_joint_mode_dense_and_sparse():
    q, k, v = qkv(3)
    dense, _, _ = DenseAttention()(q, k, v, None, 0, num_text=T, text_lengths=LENGTHS)
    np.testing.assert_allclose(np.asarray(dense), numpy_dense_masked(q, k, v, LENGTHS),
                               rtol=1e-5, atol=1e-5)
    attn = SVG2Attention(SVG2Config(num_q_clusters=5, num_k_clusters=9, selection="svg2",
                                    top_p=1.0, kmeans_iters_cold=3), dense_layers=())
    state = jax.tree.map(lambda x: x[0], attn.init_state(1, B, H, D))
    out, state, dens = attn(q, k, v, state, 0, num_text=T, text_lengths=LENGTHS)
    np.testing.assert_allclose(np.asarray(out), np.asarray(dense), rtol=1e-5, atol=1e-5)
    assert bool(state.initialized)


def test_joint_bad_inputs():
    q, k, v = qkv(0)
    cfg = SVG2Config(num_q_clusters=5, num_k_clusters=9)
    with pytest.raises(ValueError, match="num_text"):
        svg2_joint_attention(q, k, v, LENGTHS, None, cfg, num_text=0)
    with pytest.raises(ValueError, match="no video tokens"):
        svg2_joint_attention(q, k, v, LENGTHS, None, cfg, num_text=SV + T)
    with pytest.raises(ValueError, match="text_lengths"):
        svg2_joint_attention(q, k, v, LENGTHS[:1], None, cfg, num_text=T)
    with pytest.raises(ValueError, match="fewer than num_k_clusters"):
        svg2_joint_attention(q, k, v, LENGTHS, None, SVG2Config(num_q_clusters=5,
                             num_k_clusters=SV + 1), num_text=T)
