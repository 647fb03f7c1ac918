import jax
import jax.numpy as jnp
import numpy as np
import pytest
from einops import rearrange

import npref
from svg2_jax import SVG2Cache, SVG2Config, SparseTuningConfig, svg2_attention
from svg2_jax.sparse_attention import sparse_attention_chunked, sparse_attention_masked_dense


def clustered_qkv(seed, b=2, s=300, h=2, d=32, nq=6, nk=12, noise=0.2):
    """q, k, v [B, S, H, D] drawn around per-head centres, plus a cache near those centres."""
    rng = np.random.default_rng(seed)

    def draw(n):
        centers = rng.normal(size=(b, h, n, d)) * 2.0
        member = rng.integers(0, n, size=(b, h, s))
        x = np.take_along_axis(centers, member[..., None], axis=2)
        x = x + noise * rng.normal(size=x.shape)
        return rearrange(x, "b h s d -> b s h d").astype(np.float32), centers

    q, qcent = draw(nq)
    k, kcent = draw(nk)
    v = rng.normal(size=k.shape).astype(np.float32)
    cache = SVG2Cache(jnp.asarray(qcent + 0.1, jnp.float32), jnp.asarray(kcent + 0.1, jnp.float32))
    return q, k, v, cache


def numpy_svg2(q, k, v, cache, cfg, scale=None):
    """The whole warm-started algorithm in numpy, from the same centroids, with cfg's
    selection rule ("svg2": top-p; "error": per head at cfg.error_tolerance) and
    compensation: (out [B, Sq, H, D], density [B, H])."""
    ref = numpy_svg2_ref(q, k, v, cache, cfg, scale)
    b = q.shape[0]
    return (rearrange(ref["out"], "(b h) s d -> b s h d", b=b),
            rearrange(ref["density"], "(b h) -> b h", b=b))


def numpy_svg2_ref(q, k, v, cache, cfg, scale=None):
    """`npref.svg2`'s dict for q, k, v [B, S, H, D] (per head), the cache and cfg."""
    if cfg.error_pool != "head" or cfg.target_density is not None:
        raise ValueError("numpy_svg2 follows per-head tolerance or top-p selection only")
    heads = lambda x: rearrange(np.asarray(x), "b s h d -> (b h) s d")
    c = lambda x: rearrange(np.asarray(x), "b h c d -> (b h) c d")
    return npref.svg2(heads(q), heads(k), heads(v), c(cache.q_centroids),
                      c(cache.k_centroids), cfg.kmeans_iters_warm, cfg.kmeans_tol, cfg.top_p,
                      int(cfg.min_kc_ratio * cfg.num_k_clusters), scale,
                      tau=cfg.error_tolerance if cfg.selection == "error" else None,
                      compensation=cfg.compensation, own_key=cfg.compensate_own_key)


@pytest.mark.parametrize("backend,q_tile", [("jax", 64), ("jax", 512), ("masked_dense", 64)])
@pytest.mark.parametrize("rule", [dict(selection="svg2", compensation=False, top_p=0.5),
                                  dict(selection="svg2", compensation=False, top_p=0.9),
                                  dict(error_tolerance=0.05)])
def test_warm_call_equals_numpy_pipeline(backend, q_tile, rule):
    q, k, v, cache = clustered_qkv(int(rule.get("top_p", 0.3) * 10) + q_tile)
    cfg = SVG2Config(num_q_clusters=6, num_k_clusters=12, min_kc_ratio=0.25,
                     kmeans_iters_warm=3, backend=backend, q_tile=q_tile, **rule)
    out, new_cache, stats = svg2_attention(q, k, v, cache, cfg)
    want, density = numpy_svg2(q, k, v, cache, cfg)
    assert out.shape == q.shape and out.dtype == q.dtype
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(stats.density), density, rtol=1e-5)
    assert (np.asarray(stats.density) < 1.0).all()  # the test exercises real sparsity
    assert new_cache.q_centroids.shape == cache.q_centroids.shape
    assert int(stats.k_kmeans_iters) <= 3


@pytest.mark.parametrize("backend", ["jax", "masked_dense"])
def test_keep_everything_equals_dense_attention(backend):
    """Every block selected: nothing to compensate, with or without compensation."""
    rng = np.random.default_rng(4)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 200, 3, 16)).astype(np.float32)) for _ in range(3))
    for rule in (dict(selection="svg2", top_p=1.0, min_kc_ratio=1.0, compensation=True),
                 dict(selection="svg2", top_p=1.0, min_kc_ratio=0.0, compensation=False),
                 dict(selection="svg2", top_p=0.5, min_kc_ratio=1.0, compensation=True),
                 dict(selection="error", error_tolerance=0.0, compensation=True),
                 dict(selection="error", target_density=1.0, compensation=True)):
        cfg = SVG2Config(num_q_clusters=8, num_k_clusters=20, kmeans_iters_cold=5,
                         backend=backend, q_tile=64, **rule)
        out, _, stats = svg2_attention(q, k, v, None, cfg, jax.random.PRNGKey(1))
        dense = jax.nn.dot_product_attention(q, k, v)
        np.testing.assert_allclose(np.asarray(out), np.asarray(dense), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(stats.density), 1.0, rtol=1e-6)
        assert (np.asarray(stats.compensated_mass) == 0).all()


def test_rows_with_no_selected_key_give_zeros_not_nan():
    rng = np.random.default_rng(5)
    q, k, v = (jnp.asarray(rng.normal(size=(1, 90, 8)).astype(np.float32)) for _ in range(3))
    ql = jnp.asarray(rng.integers(0, 3, (1, 90)), jnp.int32)
    kl = jnp.asarray(rng.integers(0, 4, (1, 90)), jnp.int32)
    sel = jnp.asarray(rng.random((1, 3, 4)) < 0.5).at[0, 1].set(False)
    for out, lse in (sparse_attention_chunked(q, k, v, ql, kl, sel, 0.3, q_tile=32),
                     sparse_attention_masked_dense(q, k, v, ql, kl, sel, 0.3)):
        out, lse = np.asarray(out), np.asarray(lse)
        assert np.isfinite(out).all()
        assert (lse[0, np.asarray(ql[0]) == 1] == -np.inf).all()
        assert np.isfinite(lse[0, np.asarray(ql[0]) != 1]).all()
        assert (out[0, np.asarray(ql[0]) == 1] == 0).all()
        mask = np.asarray(sel)[0][np.asarray(ql[0])][:, np.asarray(kl[0])][None]
        np.testing.assert_allclose(out, npref.masked_attention(q, k, v, mask, 0.3), atol=1e-5)


def test_bf16_inputs_run_and_stay_close_to_float32():
    q, k, v, cache = clustered_qkv(9)
    cfg = SVG2Config(num_q_clusters=6, num_k_clusters=12, kmeans_iters_warm=2)
    out32, _, _ = svg2_attention(q, k, v, cache, cfg)
    bf = lambda x: jnp.asarray(x, jnp.bfloat16)
    out16, cache16, stats = svg2_attention(bf(q), bf(k), bf(v), cache, cfg)
    assert out16.dtype == jnp.bfloat16 and cache16.k_centroids.dtype == jnp.float32
    err = np.linalg.norm(np.asarray(out16, np.float32) - np.asarray(out32)) / np.linalg.norm(out32)
    assert err < 2e-2


def test_warm_calls_under_jit_do_not_retrace_and_carry_through_fori_loop():
    q, k, v, cache = clustered_qkv(2)
    cfg = SVG2Config(num_q_clusters=6, num_k_clusters=12)
    traces = []

    @jax.jit
    def step(q, k, v, cache):
        traces.append(None)
        return svg2_attention(q, k, v, cache, cfg)

    _, cache, _ = svg2_attention(q, k, v, None, cfg, jax.random.PRNGKey(3))  # cold start
    for seed in range(3):
        q2, k2, v2, _ = clustered_qkv(10 + seed)
        _, cache, stats = step(q2, k2, v2, cache)
    assert len(traces) == 1

    def body(i, carry):
        cache, dens = carry
        _, cache, stats = svg2_attention(q, k, v, cache, cfg)
        return cache, dens.at[i].set(stats.density)

    looped, dens = jax.jit(lambda c: jax.lax.fori_loop(
        0, 4, body, (c, jnp.zeros((4,) + stats.density.shape))))(cache)
    for i in range(4):  # the same calls one by one: the loop carried each call's cache
        _, cache, stats = step(q, k, v, cache)
        np.testing.assert_allclose(np.asarray(dens[i]), np.asarray(stats.density), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(looped.k_centroids), np.asarray(cache.k_centroids),
                               rtol=1e-5, atol=1e-6)


def test_cold_start_is_deterministic_per_key():
    q, k, v, _ = clustered_qkv(3)
    cfg = SVG2Config(num_q_clusters=6, num_k_clusters=12)
    a = svg2_attention(q, k, v, None, cfg, jax.random.PRNGKey(7))
    b = svg2_attention(q, k, v, None, cfg, jax.random.PRNGKey(7))
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    np.testing.assert_array_equal(np.asarray(a[1].k_centroids), np.asarray(b[1].k_centroids))


# ---- bad input -------------------------------------------------------------------------

def _qkv(b=1, s=64, h=2, d=8, dtype=jnp.float32):
    return jnp.ones((b, s, h, d), dtype), jnp.ones((b, s, h, d), dtype), jnp.ones((b, s, h, d), dtype)


CFG = SVG2Config(num_q_clusters=4, num_k_clusters=8)


@pytest.mark.parametrize("mutate,match", [
    (lambda q, k, v: (q[0], k, v), r"q must be \[B, S, H, D\]"),
    (lambda q, k, v: (q, k, v[:, :32]), "same shape"),
    (lambda q, k, v: (q[..., :4], k, v), "agree on B, H and D"),
    (lambda q, k, v: (q[:, :, :1], k, v), "agree on B, H and D"),
    (lambda q, k, v: (q.astype(jnp.bfloat16), k, v), "dtypes differ"),
    (lambda q, k, v: (q.astype(jnp.int32), k.astype(jnp.int32), v.astype(jnp.int32)),
     "floating point"),
    (lambda q, k, v: (q[:, :3], k, v), "fewer than num_q_clusters"),
    (lambda q, k, v: (q, k[:, :7], v[:, :7]), "fewer than num_k_clusters"),
])
def test_bad_inputs(mutate, match):
    with pytest.raises(ValueError, match=match):
        svg2_attention(*mutate(*_qkv()), None, CFG)


def test_bad_cache():
    q, k, v = _qkv()
    bad = SVG2Cache(jnp.zeros((1, 2, 4, 8)), jnp.zeros((1, 2, 9, 8)))
    with pytest.raises(ValueError, match="do not fit"):
        svg2_attention(q, k, v, bad, CFG)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_q_clusters=0), "num_q_clusters must be a positive int"),
    (dict(num_k_clusters=-3), "num_k_clusters must be a positive int"),
    (dict(num_k_clusters=2.5), "num_k_clusters must be a positive int"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.01), "top_p"),
    (dict(min_kc_ratio=-0.1), "min_kc_ratio"),
    (dict(kmeans_iters_warm=0), "kmeans_iters_warm"),
    (dict(kmeans_tol=-1.0), "kmeans_tol"),
    (dict(backend="flashinfer"), "backend"),
    (dict(kmeans_impl="cuvs"), "kmeans_impl"),
    (dict(selection="topk"), "selection must be one of"),
    (dict(error_pool="batch"), "error_pool must be one of"),
    (dict(error_tolerance=-0.1), "error_tolerance"),
    (dict(error_tolerance=float("nan")), "error_tolerance"),
    (dict(error_tolerance=True), "error_tolerance"),
    (dict(compensation="yes"), "compensation must be a bool"),
    (dict(compensate_own_key=1), "compensate_own_key must be a bool"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SVG2Config(**kwargs)


def test_masked_dense_refuses_large_problems():
    q = jnp.zeros((1, 1 << 12, 8, 8))
    with pytest.raises(ValueError, match="backend='jax'"):
        svg2_attention(q, q, q, None, SVG2Config(num_q_clusters=2, num_k_clusters=2,
                                                 backend="masked_dense"))


# ---- the backend seam --------------------------------------------------------------------


def test_every_portable_backend_meets_the_seam_contract():
    """Each SPARSE_BACKENDS entry but "pallas" (Hopper only), called through the seam on
    one clustering and selection, gives numpy's masked attention and its log-sum-exp
    (-inf and zeros for query clusters that selected nothing)."""
    from svg2_jax.backends import SPARSE_BACKENDS
    from svg2_jax.clustering import cluster_qk
    from svg2_jax.selection import Selection, select_blocks

    q, k, v, cache = clustered_qkv(12)
    cfg = SVG2Config.reference(num_q_clusters=6, num_k_clusters=12, top_p=0.6, q_tile=128,
                               kernel=SparseTuningConfig(block_kv=64, box_rows=8))
    heads = lambda x: rearrange(jnp.asarray(x), "b s h d -> (b h) s d")
    qn, kn, vn = heads(q), heads(k), heads(v)
    clustering = cluster_qk(qn, kn, cache, cfg)
    selection = select_blocks(clustering, cfg)
    selected = selection.selected.at[:, 0].set(False)    # query cluster 0 attends to nothing
    selection = Selection(selected, selection.mass)
    ql, kl = np.asarray(clustering.q.labels), np.asarray(clustering.k.labels)
    mask = np.stack([np.asarray(selected)[n][ql[n]][:, kl[n]] for n in range(len(ql))])
    want_o, want_lse = npref.masked_attention_lse(qn, kn, vn, mask, 0.3)
    assert (ql == 0).any() and (mask.sum(-1) > 0).any()
    assert set(SPARSE_BACKENDS) == {"pallas", "pallas_reference", "jax", "masked_dense"}
    for name, backend in SPARSE_BACKENDS.items():
        if name == "pallas":
            continue
        out, lse = backend(qn, kn, vn, clustering, selection, 0.3, cfg)
        assert out.dtype == qn.dtype and lse.dtype == jnp.float32, name
        np.testing.assert_allclose(np.asarray(out), want_o, rtol=1e-5, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(np.asarray(lse), want_lse, rtol=1e-5, atol=1e-5,
                                   err_msg=name)


def test_backend_resolution():
    from svg2_jax.backends import resolve_backend
    if jax.default_backend() == "gpu":
        pytest.skip("this machine has a GPU")
    assert resolve_backend(SVG2Config(), jnp.bfloat16, 128) == "jax"
    assert resolve_backend(SVG2Config(backend="masked_dense")) == "masked_dense"
    with pytest.raises(ValueError, match="Hopper"):
        resolve_backend(SVG2Config(backend="pallas"), jnp.bfloat16, 128)


def test_cluster_qk_cold_start_is_documented_kmeans():
    """Cold: the key split in two (queries, keys), distinct random rows, kmeans_iters_cold."""
    from svg2_jax import kmeans as km
    from svg2_jax.clustering import cluster_qk
    q, k, _, _ = clustered_qkv(13)
    heads = lambda x: rearrange(jnp.asarray(x), "b s h d -> (b h) s d")
    qn, kn = heads(q), heads(k)
    cfg = SVG2Config(num_q_clusters=6, num_k_clusters=12, kmeans_iters_cold=3)
    got = cluster_qk(qn, kn, None, cfg, jax.random.PRNGKey(5), kmeans_impl="xla")
    key_q, key_k = jax.random.split(jax.random.PRNGKey(5))
    for res, x, key, c in ((got.q, qn, key_q, 6), (got.k, kn, key_k, 12)):
        want = km.kmeans(x, km.random_init(key, x, c), 3, cfg.kmeans_tol)
        np.testing.assert_array_equal(np.asarray(res.labels), np.asarray(want.labels))
        np.testing.assert_array_equal(np.asarray(res.centroids), np.asarray(want.centroids))


def test_errors_list_every_problem():
    with pytest.raises(ValueError, match="error_tolerance.*top_p.*backend.*target_density"):
        SVG2Config(top_p=2.0, backend="flashinfer", target_density=0.0, error_tolerance=-1.0)
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="dtypes differ.*fewer than num_k_clusters"):
        svg2_attention(q.astype(jnp.bfloat16), k[:, :7], v[:, :7], None, CFG)
