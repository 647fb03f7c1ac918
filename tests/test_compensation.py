"""Compensation of the left-out key clusters and error-aware selection (issue #13), against
the numpy written in npref.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from einops import rearrange

import npref
from svg2_jax import SVG2Config, SparseTuningConfig, svg2_attention
from svg2_jax.attention import svg2_core
from svg2_jax.backends import SPARSE_BACKENDS, jax_backend
from svg2_jax.clustering import Clustering, cluster_qk
from svg2_jax.compensation import KeyClusterStats, compensate, key_cluster_stats
from svg2_jax.head_group import HeadGroup
from svg2_jax.kmeans import KMeansResult
from svg2_jax.layout import used_blocks
from svg2_jax.selection import select_by_error, select_clusters

N, S, D, QC, KC = 2, 150, 16, 5, 9
SCALE = D ** -0.5


def _result(labels, num):
    labels = jnp.asarray(labels, jnp.int32)
    sizes = jax.vmap(lambda l: jnp.bincount(l, length=num))(labels).astype(jnp.int32)
    cent = jnp.zeros((labels.shape[0], num, D), jnp.float32)
    return KMeansResult(labels, cent, sizes, jnp.int32(1), jnp.float32(0))


def problem(seed, empty=(3,), spread=1.0):
    """Random q, k, v [N, S, D] around per-cluster centres (key clusters in `empty` get no
    member), labels, and the Clustering built from them."""
    rng = np.random.default_rng(seed)
    ql = rng.integers(0, QC, (N, S))
    allowed = np.array([j for j in range(KC) if j not in empty])
    kl = allowed[rng.integers(0, len(allowed), (N, S))]
    centres = rng.normal(size=(N, KC, D)) * 2.0
    k = np.take_along_axis(centres, kl[..., None], 1) + spread * rng.normal(size=(N, S, D))
    q = np.take_along_axis(centres, rng.integers(0, KC, (N, S))[..., None], 1) \
        + rng.normal(size=(N, S, D))
    v = rng.normal(size=(N, S, D))
    q, k, v = (jnp.asarray(x, jnp.float32) for x in (q, k, v))
    return q, k, v, ql, kl, Clustering(_result(ql, QC), _result(kl, KC))


def random_selection(seed, ql):
    sel = np.random.default_rng(seed).random((N, QC, KC)) < 0.4
    sel[:, 0] = False   # a query cluster that selected nothing: pure compensation
    sel[:, 1] = True    # one that selected everything: nothing to compensate
    assert (ql == 0).any() and (ql == 1).any()
    return jnp.asarray(sel)


def np_stats(k, v, kl, n):
    return npref.key_stats(np.asarray(k[n]), np.asarray(v[n]), kl[n], KC)


def compensated(q, k, v, ql, kl, clustering, sel, own_key, q_tile=64, stats=None):
    stats = key_cluster_stats(k, v, clustering.k) if stats is None else stats
    out, lse = SPARSE_BACKENDS["masked_dense"](q, k, v, clustering, _Sel(sel), SCALE, None)
    return compensate(q, k, v, jnp.asarray(ql), jnp.asarray(kl), sel, stats, SCALE, out, lse,
                      own_key=own_key, q_tile=q_tile)


class _Sel:  # the backends read .selected only
    def __init__(self, selected):
        self.selected = selected


def test_key_cluster_stats_match_numpy():
    q, k, v, ql, kl, clustering = problem(0)
    st = key_cluster_stats(k, v, clustering.k)
    for n in range(N):
        sizes, c, vb, kv, vv = np_stats(k, v, kl, n)
        np.testing.assert_array_equal(np.asarray(st.sizes[n]), sizes)
        for got, want in ((st.key_mean, c), (st.value_mean, vb), (st.key_var, kv),
                          (st.value_var, vv)):
            np.testing.assert_allclose(np.asarray(got[n]), want, rtol=1e-5, atol=1e-6)
    assert (np.asarray(st.sizes[:, 3]) == 0).all()
    # streamed in tiles of 64 tokens (the last one overlapping the one before): the same
    tiled = key_cluster_stats(k, v, clustering.k, tile=64)
    for a, b in zip(st, tiled):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("own_key", [True, False])
def test_compensated_output_for_given_clusters_and_selection(own_key):
    q, k, v, ql, kl, clustering = problem(1)
    sel = random_selection(1, ql)
    out, lse, comp_lse = compensated(q, k, v, ql, kl, clustering, sel, own_key)
    for n in range(N):
        sizes, c, vb, kv, _ = np_stats(k, v, kl, n)
        want_o, want_lse = npref.compensated_attention(q[n], k[n], v[n], ql[n], kl[n],
                                                       np.asarray(sel[n]), sizes, c, vb, kv,
                                                       SCALE, own_key)
        np.testing.assert_allclose(np.asarray(out[n]), want_o, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(lse[n]), want_lse, rtol=1e-5, atol=1e-5)
    # a query whose cluster selected every block has nothing compensated
    full = np.asarray(ql) == 1
    assert np.isneginf(np.asarray(comp_lse)[full]).all()
    assert np.isfinite(np.asarray(comp_lse)[~full]).all()


@pytest.mark.parametrize("own_key", [True, False])
def test_nothing_selected_is_pure_centroid_attention(own_key):
    q, k, v, ql, kl, clustering = problem(2)
    sel = jnp.zeros((N, QC, KC), bool)
    out, lse, comp_lse = compensated(q, k, v, ql, kl, clustering, sel, own_key)
    np.testing.assert_array_equal(np.asarray(lse), np.asarray(comp_lse))
    for n in range(N):
        sizes, c, vb, kv, _ = np_stats(k, v, kl, n)
        qq = np.asarray(q[n], np.float64)
        l = (SCALE * qq @ c.T + np.log(np.maximum(sizes, 1))
             + 0.5 * SCALE ** 2 * (qq * qq).sum(-1, keepdims=True) * kv)
        l = np.where(sizes > 0, l, -np.inf)
        if own_key:  # n - 1 average members of the own cluster, plus the own key exactly
            own = kl[n]
            l_own = np.take_along_axis(l, own[:, None], 1)[:, 0]
            rest = np.log(np.maximum(sizes[own] - 1, 0) / sizes[own]) + l_own
            np.put_along_axis(l, own[:, None], rest[:, None], 1)
            vals = np.broadcast_to(vb, (S, KC, D)).copy()
            vals[np.arange(S), own] = ((sizes[own, None] * vb[own] - np.asarray(v[n]))
                                       / np.maximum(sizes[own] - 1, 1)[:, None])
            a = SCALE * (qq * np.asarray(k[n])).sum(-1)
            l = np.concatenate([l, a[:, None]], 1)
            vals = np.concatenate([vals, np.asarray(v[n])[:, None]], 1)
        else:
            vals = np.broadcast_to(vb, (S, KC, D))
        w = np.exp(l - l.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        np.testing.assert_allclose(np.asarray(out[n]), np.einsum("sk,skd->sd", w, vals),
                                   rtol=1e-5, atol=1e-5)
        m = l.max(-1)
        np.testing.assert_allclose(np.asarray(lse[n]), m + np.log(np.exp(l - m[:, None]).sum(-1)),
                                   rtol=1e-5, atol=1e-5)


def test_empty_clusters_contribute_nothing():
    q, k, v, ql, kl, clustering = problem(3, empty=(2, 6))
    sel = random_selection(3, ql)
    st = key_cluster_stats(k, v, clustering.k)
    assert (np.asarray(st.sizes[:, [2, 6]]) == 0).all()
    # whatever an empty cluster's statistics hold, it weighs nothing
    junk = KeyClusterStats(st.sizes, st.key_mean.at[:, [2, 6]].set(50.0),
                           st.value_mean.at[:, [2, 6]].set(1e3), st.key_var.at[:, [2, 6]].set(9.0),
                           st.value_var.at[:, [2, 6]].set(9.0))
    a = compensated(q, k, v, ql, kl, clustering, sel, True, stats=st)
    b = compensated(q, k, v, ql, kl, clustering, sel, True, stats=junk)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # and a selection that "selects" an empty cluster computes nothing more
    c = compensated(q, k, v, ql, kl, clustering, sel.at[:, :, [2, 6]].set(True), True)
    for x, y in zip(a, c):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("own_key", [True, False])
def test_merge_is_exact_when_the_compensation_terms_are_the_true_cluster_sums(own_key):
    """Keys identical within each cluster: e^{s q.k} is one number per cluster, so a
    cluster's n e^{s q.c} vbar is its exact contribution, and the lse merge of the sparse
    part with the compensation must give dense attention whatever was selected."""
    q, k, v, ql, kl, clustering = problem(4, spread=0.0)
    sel = random_selection(4, ql)
    out, lse, _ = compensated(q, k, v, ql, kl, clustering, sel, own_key)
    full = np.ones((N, S, S), bool)
    want_o, want_lse = npref.masked_attention_lse(q, k, v, full, SCALE)
    np.testing.assert_allclose(np.asarray(out), want_o, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(lse), want_lse, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(error_tolerance=0.02), dict(error_tolerance=0.1),
                                    dict(target_density=0.3)])
def test_error_selection_matches_numpy(kwargs):
    q, k, v, ql, kl, clustering = problem(5)
    st = key_cluster_stats(k, v, clustering.k)
    got = select_by_error(q, clustering, st, SCALE, q_tile=64, **kwargs)
    for n in range(N):
        sel, mass, est = npref.error_select(np.asarray(q[n]), ql[n], QC, *np_stats(k, v, kl, n),
                                            SCALE, tau=kwargs.get("error_tolerance"),
                                            density=kwargs.get("target_density"))
        np.testing.assert_array_equal(np.asarray(got.selected[n]), sel)
        np.testing.assert_allclose(np.asarray(got.mass[n]), mass, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(float(got.estimated_error[n]), est, rtol=1e-4)
        assert 0 < sel.sum() < sel.size  # the selection is a real one
        if "error_tolerance" in kwargs:
            assert est < kwargs["error_tolerance"]


@pytest.mark.parametrize("kwargs", [dict(error_tolerance=0.05), dict(target_density=0.3)])
def test_error_selection_pooled_over_heads_matches_numpy(kwargs):
    """error_pool="layer": the blocks of all heads of a batch element compete together."""
    q, k, v, ql, kl, clustering = problem(9)
    st = key_cluster_stats(k, v, clustering.k)
    got = select_by_error(q, clustering, st, SCALE, q_tile=64, pool=N, **kwargs)
    heads = [npref.error_blocks(np.asarray(q[n]), ql[n], QC, *np_stats(k, v, kl, n), SCALE)
             for n in range(N)]
    sel, est = npref.error_select_pooled(heads, kwargs.get("error_tolerance"),
                                         kwargs.get("target_density"))
    np.testing.assert_array_equal(np.asarray(got.selected), sel)
    np.testing.assert_allclose(np.asarray(got.estimated_error), est, rtol=1e-4)
    per_head = select_by_error(q, clustering, st, SCALE, q_tile=64, **kwargs)
    assert not (np.asarray(per_head.selected) == sel).all()  # pooling changed the choice
    # through the config: svg2_attention pools the heads of each batch element
    qkv = [rearrange(x, "(b h) s d -> b s h d", b=1) for x in (q, k, v)]
    base = dict(num_q_clusters=QC, num_k_clusters=KC, kmeans_iters_cold=3, **kwargs)
    _, _, a = svg2_attention(*qkv, None, SVG2Config.error_aware(error_pool="layer", **base))
    _, _, b = svg2_attention(*qkv, None, SVG2Config.error_aware(**base))
    assert not np.allclose(np.asarray(a.density), np.asarray(b.density))
    # a call holding some of a layer's heads (head-parallel attention) cannot pool them
    with pytest.raises(ValueError, match="error_pool='head'"):
        svg2_attention(*qkv, None, SVG2Config.error_aware(error_pool="layer", **base),
                       head_group=HeadGroup(jnp.arange(N), total=2 * N))


def test_every_backend_agrees_with_masked_dense_plus_compensation():
    q, k, v, ql, kl, _ = problem(6)
    qkv = [rearrange(x, "(b h) s d -> b s h d", b=1) for x in (q, k, v)]
    base = dict(num_q_clusters=QC, num_k_clusters=KC, kmeans_iters_cold=4, q_tile=64,
                kernel=SparseTuningConfig(block_kv=64, box_rows=8))
    want, _, want_st = svg2_attention(*qkv, None,
                                      SVG2Config.error_aware(backend="masked_dense", **base))
    assert (np.asarray(want_st.density) < 1).all()
    assert (np.asarray(want_st.compensated_mass) > 0).all()
    for backend in SPARSE_BACKENDS:
        if backend in ("pallas", "masked_dense"):
            continue
        got, _, st = svg2_attention(*qkv, None,
                                    SVG2Config.error_aware(backend=backend, **base))
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5,
                                   err_msg=backend)
        np.testing.assert_allclose(np.asarray(st.density), np.asarray(want_st.density))


def test_spanning_query_tiles_compensate_only_what_their_tiles_left_out():
    """Spanning query tiles attend to the union of their clusters' selections, more pairs
    than were selected: the compensation stands in for the rest of each token's keys only
    (numpy over the pairs the tiles use), never for a pair computed exactly."""
    q, k, v, *_ = problem(10)
    tuning = SparseTuningConfig(query_tiles="spanning", block_kv=64, box_rows=8)
    cfg = SVG2Config.error_aware(num_q_clusters=QC, num_k_clusters=KC, kmeans_iters_cold=4,
                                 q_tile=64, target_density=0.3, backend="pallas_reference",
                                 kernel=tuning)
    core = jax.jit(svg2_core, static_argnums=(4, 6))(q, k, v, None, cfg,
                                                     jax.random.PRNGKey(3), SCALE)
    groups, used = (np.asarray(x) for x in used_blocks(core.clustering, core.selection,
                                                       tuning))
    ql, kl = np.asarray(core.clustering.q.labels), np.asarray(core.clustering.k.labels)
    selected = np.asarray(core.selection.selected)
    extra = 0
    for n in range(N):
        sizes, c, vb, kv, _ = np_stats(k, v, kl, n)
        extra += (used[n][groups[n]][:, kl[n]] & ~selected[n][ql[n]][:, kl[n]]).sum()
        want, want_lse = npref.compensated_attention(q[n], k[n], v[n], groups[n], kl[n],
                                                     used[n], sizes, c, vb, kv, SCALE)
        np.testing.assert_allclose(np.asarray(core.out[n]), want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(core.lse[n]), want_lse, rtol=1e-5, atol=1e-5)
    assert extra > 0  # the tiles did use pairs beyond the selection


def _compensated_backends_agree(backends, rule, seed=11, shape=(1, 512, 2, 128)):
    """svg2_attention on bf16 q, k, v with each backend and compensation on: the same
    clusters and selection as masked_dense (equal densities, compensated mass), outputs
    within bf16 rounding of its."""
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.standard_normal(shape), jnp.bfloat16) for _ in range(3))
    base = dict(num_q_clusters=8, num_k_clusters=32, kmeans_iters_cold=5, **rule)
    want, _, want_st = svg2_attention(q, k, v, None,
                                      SVG2Config.error_aware(backend="masked_dense", **base))
    assert (np.asarray(want_st.density) < 0.9).all()
    assert (np.asarray(want_st.compensated_mass) > 0.05).all()
    ref = np.asarray(want, np.float32)
    for backend in backends:
        got, _, st = svg2_attention(q, k, v, None,
                                    SVG2Config.error_aware(backend=backend, **base))
        got = np.asarray(got, np.float32)
        assert np.isfinite(got).all(), backend
        assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-2, backend
        np.testing.assert_array_equal(np.asarray(st.density), np.asarray(want_st.density))
        np.testing.assert_allclose(np.asarray(st.compensated_mass),
                                   np.asarray(want_st.compensated_mass), atol=2e-3)


# the error-aware rule at a density budget, and the reference's top-p with compensation
COMPENSATED_RULES = [dict(target_density=0.2), dict(selection="svg2", top_p=0.7)]


@pytest.mark.parametrize("rule", COMPENSATED_RULES, ids=["error", "svg2"])
def test_pallas_twin_path_with_compensation_bf16(rule):
    """The Hopper kernel's path (pallas_layout, the kernel's twin, gather_rows) in bf16 at
    head dim 128, with the compensation merged in after it: what `pallas` runs on a GPU,
    the kernel aside (its twin equality is tests/test_sparse_kernel.py's)."""
    _compensated_backends_agree(("pallas_reference",), rule)


@pytest.mark.gpu
@pytest.mark.parametrize("rule", COMPENSATED_RULES, ids=["error", "svg2"])
def test_pallas_backend_with_compensation(rule):
    """The Hopper kernel itself with the compensation (sm_90 only)."""
    _compensated_backends_agree(("pallas", "pallas_reference"), rule, shape=(2, 1500, 3, 128))


def test_bf16_inputs_stay_finite():
    """Peaky logits (scaled q, k) in bf16: the compensation's float32 merge stays finite and
    close to the float32 call on the same clusters."""
    q, k, v, *_ = problem(7)
    qkv = [rearrange(x, "(b h) s d -> b s h d", b=1) for x in (3 * q, 3 * k, v)]
    cfg = SVG2Config.error_aware(num_q_clusters=QC, num_k_clusters=KC, kmeans_iters_cold=4,
                                 error_tolerance=0.05)
    out32, cache, st32 = svg2_attention(*qkv, None, cfg)
    bf = [x.astype(jnp.bfloat16) for x in qkv]
    out16, _, st16 = svg2_attention(*bf, cache, cfg)   # warm, from the float32 centroids
    assert out16.dtype == jnp.bfloat16 and np.isfinite(np.asarray(out16, np.float32)).all()
    assert np.isfinite(np.asarray(st16.compensated_mass)).all()
    out32, _, _ = svg2_attention(*qkv, cache, cfg)
    o32 = np.asarray(out32)
    err = np.linalg.norm(np.asarray(out16, np.float32) - o32) / np.linalg.norm(o32)
    assert err < 2e-2, err
    # nothing selected: the whole output comes from the compensation, still finite
    st = key_cluster_stats(bf[1][0].swapaxes(0, 1), bf[2][0].swapaxes(0, 1),
                           _result(np.zeros((N, S), int), KC))
    o, l, _ = compensate(bf[0][0].swapaxes(0, 1), bf[1][0].swapaxes(0, 1),
                         bf[2][0].swapaxes(0, 1), jnp.zeros((N, S), jnp.int32),
                         jnp.zeros((N, S), jnp.int32), jnp.zeros((N, QC, KC), bool), st, SCALE,
                         jnp.zeros((N, S, D), jnp.bfloat16), jnp.full((N, S), -jnp.inf))
    assert np.isfinite(np.asarray(o, np.float32)).all() and np.isfinite(np.asarray(l)).all()


def test_presets_and_the_default():
    """The default is the paper's rule; error_aware() is issue #13's method; changes given
    to a preset win over it."""
    assert SVG2Config() == SVG2Config.reference()
    assert (SVG2Config().selection, SVG2Config().compensation) == ("svg2", False)
    cfg = SVG2Config.error_aware()
    assert (cfg.selection, cfg.error_tolerance, cfg.compensation,
            cfg.compensate_own_key) == ("error", 0.02, True, True)
    assert cfg == SVG2Config(selection="error", error_tolerance=0.02, compensation=True)
    assert not SVG2Config.error_aware(compensation=False, error_tolerance=0.1).compensation
    assert SVG2Config.reference(compensation=True).compensation


def test_reference_preset_is_todays_svg2_bit_for_bit():
    """SVG2Config.reference(): selection "svg2" and no compensation, i.e. cluster, centroid
    top-p, sparse attention and nothing else."""
    q, k, v, *_ = problem(8)
    qkv = [rearrange(x, "(b h) s d -> b s h d", b=1) for x in (q, k, v)]
    cfg = SVG2Config.reference(num_q_clusters=QC, num_k_clusters=KC, kmeans_iters_cold=4,
                               q_tile=64, backend="jax")
    assert (cfg.selection, cfg.compensation, cfg.top_p, cfg.min_kc_ratio) == ("svg2", False,
                                                                               0.9, 0.1)
    got, _, st = svg2_attention(*qkv, None, cfg, jax.random.PRNGKey(2))

    @jax.jit
    def by_hand(q, k, v):
        clustering = cluster_qk(q, k, None, cfg, jax.random.PRNGKey(2))
        sel = select_clusters(clustering.q.centroids, clustering.k.centroids,
                              clustering.k.sizes, cfg.top_p, cfg.min_k_clusters)
        return jax_backend(q, k, v, clustering, sel, SCALE, cfg)[0]

    want = rearrange(by_hand(q, k, v), "(b h) s d -> b s h d", b=1)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert (np.asarray(st.density) < 1).all()
