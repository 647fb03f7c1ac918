"""The public calls' arguments do what they say, against numpy: `scale`, the cold-start
`key`, Sk != Sq, the warm k-means' early stop, and `svg2_kmeans`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from einops import rearrange

import npref
from test_attention import clustered_qkv, numpy_svg2
from svg2_jax import SVG2Cache, SVG2Config, SparseTuningConfig, svg2_attention, svg2_kmeans
from svg2_jax import kmeans as km

# config settings of each portable backend (tiles small enough for these sizes)
PORTABLE = {"jax": dict(q_tile=64), "masked_dense": {},
            "pallas_reference": dict(kernel=SparseTuningConfig(block_kv=64, box_rows=8))}


def heads(x):
    return rearrange(np.asarray(x), "b s h d -> (b h) s d")


def per_head(c):
    return rearrange(np.asarray(c), "b h c d -> (b h) c d")


def dense_numpy(q, k, v, scale):
    """Dense softmax attention in float64: [B, Sq, H, D]."""
    mask = np.ones((q.shape[0] * q.shape[2], q.shape[1], k.shape[1]), bool)
    out = npref.masked_attention(heads(q), heads(k), heads(v), mask, scale)
    return rearrange(out, "(b h) s d -> b s h d", b=q.shape[0])


# ---- scale -----------------------------------------------------------------------------


def test_scale_keep_everything_equals_dense_attention_with_that_scale():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(1, 150, 2, 16)).astype(np.float32)
    k, v = (rng.normal(size=(1, 190, 2, 16)).astype(np.float32) for _ in range(2))
    cfg = SVG2Config(num_q_clusters=5, num_k_clusters=9, selection="svg2", top_p=1.0,
                     kmeans_iters_cold=3, backend="jax", q_tile=64)
    out, _, stats = svg2_attention(q, k, v, None, cfg, jax.random.PRNGKey(1), scale=0.6)
    np.testing.assert_allclose(np.asarray(out), dense_numpy(q, k, v, 0.6), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(stats.density), 1.0)


# the reference rule; the error-aware rule with compensation (SVG2Config.error_aware())
RULES = {"svg2": dict(selection="svg2", compensation=False, top_p=0.7, min_kc_ratio=0.0),
         "error": dict(selection="error", error_tolerance=0.05, compensation=True)}


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("scale", [0.4, 0.08])
def test_scale_sets_the_attention_and_the_selection_mass(scale, rule):
    """Sparse: the softmax scale is the attention's, the compensation's and the selection's
    (top-p's mass estimate, the error-aware rule's error estimate)."""
    q, k, v, cache = clustered_qkv(21, d=16, noise=0.3)
    cfg = SVG2Config(num_q_clusters=6, num_k_clusters=12, kmeans_iters_warm=2, backend="jax",
                     q_tile=128, **RULES[rule])
    out, _, stats = svg2_attention(q, k, v, cache, cfg, scale=scale)
    want, density = numpy_svg2(q, k, v, cache, cfg, scale)
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(stats.density), density, rtol=1e-5)
    # the scale changes what is selected, so the check above sees the selection's scale
    _, default_density = numpy_svg2(q, k, v, cache, cfg)
    assert not np.allclose(density, default_density)


# ---- the cold-start key ----------------------------------------------------------------


def test_the_cold_start_key_picks_the_initial_rows():
    """Cold: k-means from distinct token rows drawn with the key (split in two: queries,
    keys), kmeans_iters_cold iterations; other keys give other clusterings; None is
    PRNGKey(0)."""
    rng = np.random.default_rng(3)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 96, 2, 8)).astype(np.float32))
               for _ in range(3))  # no structure: every initialisation ends elsewhere
    cfg = SVG2Config(num_q_clusters=4, num_k_clusters=6, kmeans_iters_cold=3,
                     selection="svg2", top_p=0.6)
    results = {}
    for seed in (1, 2):
        key = jax.random.PRNGKey(seed)
        out, cache, stats = svg2_attention(q, k, v, None, cfg, key)
        key_q, key_k = jax.random.split(key)
        for x, got, init_key, c, iters in (
                (q, cache.q_centroids, key_q, 4, stats.q_kmeans_iters),
                (k, cache.k_centroids, key_k, 6, stats.k_kmeans_iters)):
            init = km.random_init(init_key, jnp.asarray(heads(x)), c)
            _, want, _, it = npref.kmeans(heads(x), init, 3, cfg.kmeans_tol)
            np.testing.assert_allclose(per_head(got), want, rtol=1e-5, atol=1e-5)
            assert int(iters) == it
        results[seed] = out, cache
    (out1, cache1), (out2, cache2) = results[1], results[2]
    for a, b in ((cache1.q_centroids, cache2.q_centroids),
                 (cache1.k_centroids, cache2.k_centroids), (out1, out2)):
        assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3
    out0, cache0, _ = svg2_attention(q, k, v, None, cfg)
    _, want0, _ = svg2_attention(q, k, v, None, cfg, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(cache0.k_centroids), np.asarray(want0.k_centroids))


# ---- Sk != Sq --------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("sq,sk,backend", [(160, 250, b) for b in PORTABLE]
                         + [(250, 130, "jax")])
def test_fewer_or_more_queries_than_keys(sq, sk, backend, rule):
    """Sq != Sk on every portable backend; with compensation, no own-key term (the query
    at position t has no key t of its own)."""
    q, k, v, cache = clustered_qkv(sq + sk, s=max(sq, sk), d=16)
    q, k, v = q[:, :sq], k[:, :sk], v[:, :sk]
    cfg = SVG2Config(num_q_clusters=6, num_k_clusters=12, kmeans_iters_warm=2,
                     backend=backend, **{**RULES[rule], "top_p": 0.6, "min_kc_ratio": 0.1},
                     **PORTABLE[backend])
    out, new_cache, stats = svg2_attention(q, k, v, cache, cfg)
    want, density = numpy_svg2(q, k, v, cache, cfg)
    assert out.shape == q.shape
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(stats.density), density, rtol=1e-5)
    assert (density < 1).all()
    assert int(np.asarray(stats.q_size_max).max()) <= sq
    assert new_cache.k_centroids.shape == cache.k_centroids.shape


# ---- warm early stop (the unrolled k-means) ---------------------------------------------


@pytest.mark.parametrize("still_moving", [False, True])
def test_warm_kmeans_stops_early_when_converged(still_moving):
    """Warm iteration counts up to UNROLL_MAX_ITERS run unrolled; a converged state must
    stop there too: the iteration count, labels and centroids of numpy's early stop. With
    a loose tolerance the centroids still move when it stops: the result is the centroids
    the last assignment was made against, not the update after it."""
    iters = 4
    assert iters <= km.UNROLL_MAX_ITERS  # this is the unrolled path
    rng = np.random.default_rng(0 if still_moving else 8)
    if still_moving:  # no structure: every iteration moves the centroids (by 0.28 at the 3rd)
        x = rng.normal(size=(3, 240, 4)).astype(np.float32)
        c0, tol = x[:, rng.choice(240, 5, replace=False)], 0.35
    else:
        centers = rng.normal(size=(3, 5, 16)) * 3.0
        x = (np.take_along_axis(centers, rng.integers(0, 5, (3, 240))[..., None], axis=1)
             + 0.1 * rng.normal(size=(3, 240, 16))).astype(np.float32)
        c0, tol = (centers + 0.3).astype(np.float32), 1e-4
    res = km.kmeans(jnp.asarray(x), jnp.asarray(c0), num_iters=iters, tol=tol)
    labels, cents, sizes, it = npref.kmeans(x, c0, iters, tol)
    assert 1 < it < iters  # converged before the cap
    assert int(res.iterations) == it
    assert float(res.shift) < tol and (float(res.shift) > 0.1) == still_moving
    np.testing.assert_array_equal(np.asarray(res.labels), labels)
    np.testing.assert_array_equal(np.asarray(res.sizes), sizes)
    np.testing.assert_allclose(np.asarray(res.centroids), cents, rtol=1e-6, atol=1e-6)


def test_warm_call_reports_the_early_stop():
    q, k, v, cache = clustered_qkv(30, noise=0.05)
    cfg = SVG2Config(num_q_clusters=6, num_k_clusters=12, top_p=0.6, kmeans_iters_warm=4,
                     backend="jax")
    out, new_cache, stats = svg2_attention(q, k, v, cache, cfg)
    for side, c0 in (("q", cache.q_centroids), ("k", cache.k_centroids)):
        x = heads(q if side == "q" else k)
        _, cents, _, it = npref.kmeans(x, per_head(c0), 4, cfg.kmeans_tol)
        assert it < 4
        assert int(getattr(stats, f"{side}_kmeans_iters")) == it
        np.testing.assert_allclose(per_head(getattr(new_cache, f"{side}_centroids")), cents,
                                   rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out), numpy_svg2(q, k, v, cache, cfg)[0], rtol=1e-5,
                               atol=1e-5)


# ---- svg2_kmeans -----------------------------------------------------------------------


def test_svg2_kmeans_warm_is_numpy_kmeans_and_the_attention_cache():
    q, k, v, cache = clustered_qkv(40, s=260)
    q = q[:, :200]  # Sq != Sk
    cfg = SVG2Config(num_q_clusters=6, num_k_clusters=12, kmeans_iters_warm=3, kmeans_tol=0.0)
    got = svg2_kmeans(q, k, cache, cfg)
    for x, c0, c in ((q, cache.q_centroids, got.q_centroids),
                     (k, cache.k_centroids, got.k_centroids)):
        _, want, _, it = npref.kmeans(heads(x), per_head(c0), 3, 0.0)
        assert it == 3
        np.testing.assert_allclose(per_head(c), want, rtol=1e-5, atol=1e-5)
        assert c.dtype == jnp.float32
    _, attn_cache, _ = svg2_attention(q, k, v, cache, cfg)
    np.testing.assert_array_equal(np.asarray(got.k_centroids), np.asarray(attn_cache.k_centroids))
    np.testing.assert_array_equal(np.asarray(got.q_centroids), np.asarray(attn_cache.q_centroids))


def test_svg2_kmeans_cold_uses_the_key_as_the_attention_does():
    rng = np.random.default_rng(5)
    q = jnp.asarray(rng.normal(size=(1, 80, 2, 8)).astype(np.float32))
    k = jnp.asarray(rng.normal(size=(1, 120, 2, 8)).astype(np.float32))
    cfg = SVG2Config(num_q_clusters=4, num_k_clusters=6, kmeans_iters_cold=4)
    for seed in (4, 9):
        key = jax.random.PRNGKey(seed)
        got = svg2_kmeans(q, k, None, cfg, key)
        _, want, _ = svg2_attention(q, k, k, None, cfg, key)
        np.testing.assert_array_equal(np.asarray(got.q_centroids), np.asarray(want.q_centroids))
        np.testing.assert_array_equal(np.asarray(got.k_centroids), np.asarray(want.k_centroids))
    a, b = svg2_kmeans(q, k, None, cfg, jax.random.PRNGKey(4)), svg2_kmeans(
        q, k, None, cfg, jax.random.PRNGKey(9))
    assert np.abs(np.asarray(a.k_centroids) - np.asarray(b.k_centroids)).max() > 1e-3


def test_svg2_kmeans_bad_inputs_name_the_call():
    q = jnp.zeros((1, 64, 2, 8))
    cfg = SVG2Config(num_q_clusters=4, num_k_clusters=8)
    with pytest.raises(ValueError, match="svg2_kmeans: .*fewer than num_k_clusters"):
        svg2_kmeans(q, q[:, :7], None, cfg)
    with pytest.raises(ValueError, match="svg2_kmeans: .*do not fit"):
        svg2_kmeans(q, q, SVG2Cache(jnp.zeros((1, 2, 4, 8)), jnp.zeros((1, 2, 5, 8))), cfg)
