"""NaN/Inf in the attention's inputs: never silent zeros, never cached, reported by the
sampler with the step, pass and layer where they first appeared (`svg2_jax.nonfinite`)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from svg2_jax import SVG2Config
from svg2_jax.attention import svg2_attention, svg2_kmeans
from svg2_jax.joint_attention import dense_joint_attention, svg2_joint_attention
from svg2_jax.layer_attention import DenseAttention, SVG2Attention
from svg2_jax.sampling import (FlowMatchEuler, SamplerConfig, check_finite, make_sampler,
                               nonfinite_report)

B, S, H, D = 2, 160, 3, 16
# top_p=1 keeps every block: the finite rows must then equal dense attention exactly
CFG = SVG2Config(num_q_clusters=4, num_k_clusters=8, selection="svg2", top_p=1.0,
                 kmeans_iters_cold=3, q_tile=64)
# the error-aware rule at a density budget: the compensation stands in for most blocks
COMPENSATED = SVG2Config.error_aware(num_q_clusters=4, num_k_clusters=8, target_density=0.3,
                                     kmeans_iters_cold=3, q_tile=64)
BACKENDS = ["jax", "masked_dense", "pallas_reference"]


def qkv(seed=0, s=S):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(B, s, H, D)).astype(np.float32) for _ in range(3)]


def numpy_dense(q, k, v, key_valid=None):
    """Softmax attention in float64, NaN/Inf propagating as they do in dense attention.
    q, k, v: [B, S, H, D]; key_valid: [B, Sk] bool or None."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    with np.errstate(invalid="ignore", over="ignore"):
        s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(D)
        if key_valid is not None:
            s = np.where(key_valid[:, None, None, :], s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        p = np.where(np.isnan(s), np.nan, p)  # a NaN key score stays NaN for the whole row
        if key_valid is not None:  # masked keys take no part, whatever their values
            v = np.where(key_valid[:, :, None, None], v, 0.0)
        return np.einsum("bhqk,bkhd->bqhd", p / p.sum(-1, keepdims=True), v)


def check_like_dense(out, want, whole_head=False, whole_rows=True):
    """Output rows [B, S, H] all NaN exactly where a row of the dense reference is not
    finite (dense attention may leave some elements of such a row finite, e.g. an Inf
    value reaches only its own column), finite and equal elsewhere. whole_head: an
    infinite key, which dense attention ignores in the rows that score it -inf; ours
    makes its whole head NaN (a superset: never less). whole_rows=False: only that such
    rows are not finite (joint attention's text part is dense, element for element)."""
    out = np.asarray(out, np.float64)
    bad = ~np.isfinite(want).all(-1)
    assert bad.any()
    if whole_head:
        bad = np.broadcast_to(bad.any(1, keepdims=True), bad.shape)
    if whole_rows:
        np.testing.assert_array_equal(np.isnan(out).all(-1), bad)
    np.testing.assert_array_equal(np.isfinite(out).all(-1), ~bad)
    np.testing.assert_allclose(out[~bad], want[~bad], rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("where,value", [("k", np.nan), ("v", np.inf), ("q", np.nan),
                                         ("k", -np.inf)])
def test_nonfinite_input_is_nan_where_dense_is(backend, where, value):
    q, k, v = qkv(1)
    x = {"q": q, "k": k, "v": v}[where]
    x[1, 17, 2, 5] = value  # one element of batch 1, head 2
    cfg = SVG2Config(**{**CFG.__dict__, "backend": backend})
    out, cache, stats = svg2_attention(*map(jnp.asarray, (q, k, v)), None, cfg)
    check_like_dense(out, numpy_dense(q, k, v), whole_head=np.isinf(value) and where == "k")
    if where == "q":
        assert np.isnan(np.asarray(out)[1, 17, 2]).all()
        assert np.isfinite(np.asarray(out)[1, 18:, 2]).all()  # only that row
    flags = np.zeros((B, H), bool)
    flags[1, 2] = True
    np.testing.assert_array_equal(np.asarray(stats.nonfinite_input), flags)
    for c in (cache.q_centroids, cache.k_centroids):
        assert np.isfinite(np.asarray(c)).all()
    np.testing.assert_array_equal(np.asarray(stats.density) > 0, True)  # not a silent 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("where,value", [("q", np.nan), ("k", np.inf), ("v", np.nan)])
def test_the_compensation_does_not_hide_nonfinite_input(backend, where, value):
    """Error-aware selection with compensation: the bad head's output is NaN where dense
    attention's is (whole rows; the whole head for a bad key or value), not a finite
    estimate, and every other head is exactly the clean call's; the bad head's
    compensation stats are NaN, the others' finite."""
    q, k, v = qkv(4)
    cfg = SVG2Config(**{**COMPENSATED.__dict__, "backend": backend})
    clean, _, clean_stats = svg2_attention(*map(jnp.asarray, (q, k, v)), None, cfg)
    assert (np.asarray(clean_stats.compensated_mass) > 0.2).all()  # it compensates
    x = {"q": q, "k": k, "v": v}[where]
    x[1, 17, 2, 5] = value
    out, cache, stats = svg2_attention(*map(jnp.asarray, (q, k, v)), None, cfg)
    out = np.asarray(out)
    want = ~np.isfinite(numpy_dense(q, k, v)).all(-1)  # [B, S, H]
    if where != "q":
        want[1, :, 2] = True
    np.testing.assert_array_equal(np.isnan(out).all(-1), want)
    np.testing.assert_array_equal(np.isfinite(out).all(-1), ~want)
    np.testing.assert_array_equal(out[0], np.asarray(clean)[0])
    np.testing.assert_array_equal(out[1, :, :2], np.asarray(clean)[1, :, :2])
    flags = np.zeros((B, H), bool)
    flags[1, 2] = True
    np.testing.assert_array_equal(np.asarray(stats.nonfinite_input), flags)
    for name in ("compensated_mass", "estimated_error"):
        got = np.asarray(getattr(stats, name))
        np.testing.assert_array_equal(np.isnan(got), flags, err_msg=name)
        np.testing.assert_array_equal(got[~flags], np.asarray(getattr(clean_stats, name))[~flags])
    assert np.isfinite(np.asarray(stats.density)).all()
    for c in (cache.q_centroids, cache.k_centroids):
        assert np.isfinite(np.asarray(c)).all()


@pytest.mark.parametrize("where", ["q", "k"])
def test_a_bad_head_leaves_the_shared_error_budget_of_the_others(where):
    """error_pool="layer": the heads of a batch element share one error budget; a NaN in
    one head enters its estimates as 0, so the other heads still select (a NaN budget
    would compute every block) and stay finite."""
    q, k, v = qkv(5)
    cfg = dataclasses.replace(COMPENSATED, target_density=None, error_tolerance=0.3,
                              error_pool="layer")
    _, _, clean = svg2_attention(*map(jnp.asarray, (q, k, v)), None, cfg)
    {"q": q, "k": k}[where][1, 17, 2, 5] = np.nan
    out, _, stats = svg2_attention(*map(jnp.asarray, (q, k, v)), None, cfg)
    others = np.asarray(stats.density)[1, :2]
    assert (others < 1).all()
    np.testing.assert_allclose(others, np.asarray(clean.density)[1, :2], atol=0.05)
    assert np.isfinite(np.asarray(out)[1, :, :2]).all()
    assert np.isfinite(np.asarray(stats.estimated_error)[1, :2]).all()


def test_a_bad_call_does_not_poison_the_warm_cache():
    q, k, v = qkv(2)
    _, cache, _ = svg2_attention(q, k, v, None, CFG)
    k_bad = k.copy()
    k_bad[0, :, 1] = np.nan  # a whole head of NaN keys
    q_bad = q.copy()
    q_bad[0, 3, 0] = np.inf
    _, warm, stats = svg2_attention(q_bad, k_bad, v, cache, CFG)
    assert np.asarray(stats.nonfinite_input).tolist() == [[True, True, False], [False] * 3]
    for c in (warm.q_centroids, warm.k_centroids):
        assert np.isfinite(np.asarray(c)).all()
    # the next, clean call continues as if from finite centroids
    out, _, _ = svg2_attention(q, k, v, warm, CFG)
    np.testing.assert_allclose(np.asarray(out), numpy_dense(q, k, v), rtol=2e-5, atol=2e-5)
    only = svg2_kmeans(q_bad, k_bad, cache, CFG)  # the dense steps' clustering too
    assert np.isfinite(np.asarray(only.k_centroids)).all()


def test_joint_attention_follows_dense_masked_attention():
    t, lengths = 12, np.array([5, 12])
    q, k, v = qkv(3, S + t)
    k[0, 40, 1, 0] = np.nan      # a video key: the whole head
    v[1, S + 2, 0, 3] = np.nan   # a real text value: the whole head
    q[1, 7, 2, 1] = np.inf       # a video query: its row
    args = [*map(jnp.asarray, (q, k, v)), jnp.asarray(lengths, jnp.int32)]
    out, cache, stats = svg2_joint_attention(*args, None, CFG, num_text=t)
    valid = np.concatenate([np.ones((B, S), bool), np.arange(t)[None] < lengths[:, None]], 1)
    want = numpy_dense(q, k, v, valid)
    check_like_dense(out, want, whole_rows=False)
    check_like_dense(dense_joint_attention(*args, num_text=t), want, whole_rows=False)
    assert np.asarray(stats.nonfinite_input).tolist() == [[False, True, False],
                                                          [True, False, True]]
    assert np.isfinite(np.asarray(cache.k_centroids)).all()


# -- the sampler names the step, pass and layer -------------------------------------------

L, C = 3, 8


def toy_model(attention, bad_layer, bad_from_t):
    """3 attention layers on latents [B, S, C]; layer `bad_layer`'s keys get one NaN
    when the timestep is below `bad_from_t` and the text context is the conditional one
    (context mean > 0), so the first NaN is known: (step, conditional pass, layer)."""
    ks = jax.random.split(jax.random.PRNGKey(0), 4)
    w = [jax.random.normal(kk, (L, C, H * D)) * 0.3 for kk in ks[:3]]
    wo = jax.random.normal(ks[3], (L, H * D, C)) * 0.05

    def model_fn(params, x, t, context, state):
        h = x + context

        def layer(h, xs):
            i, wq, wk, wv, wo_l, st = xs
            q, k, v = (jnp.einsum("bsc,cf->bsf", h, w_).reshape(B, S, H, D)
                       for w_ in (wq, wk, wv))
            poison = (i == bad_layer) & (t[0] < bad_from_t) & (jnp.mean(context) > 0)
            k = k.at[0, 5, 1, 0].set(jnp.where(poison, jnp.nan, k[0, 5, 1, 0]))
            out, st, dens = attention(q, k, v, st, i)
            return h + jnp.einsum("bsf,fc->bsc", out.reshape(B, S, H * D), wo_l), (st, dens)

        h, (state, dens) = jax.lax.scan(layer, h, (jnp.arange(L), *w, wo, state))
        return h - x, state, dens

    return model_fn


@pytest.mark.parametrize("attention", [DenseAttention(), SVG2Attention(CFG, dense_layers=(0,))],
                         ids=["dense", "svg2"])
def test_the_sampler_names_step_pass_and_layer(attention):
    scheduler = FlowMatchEuler()  # shift 1: timesteps 1000 * (1 - i / steps)
    cfg = SamplerConfig(num_steps=6, guidance_scale=3.0, dense_fraction=0.34, progress=False)
    sample = make_sampler(toy_model(attention, bad_layer=2, bad_from_t=600), attention,
                          scheduler, cfg)
    state = attention.init_state(L, B, H, D)
    x = jax.random.normal(jax.random.PRNGKey(1), (B, S, C))
    cond, uncond = jnp.full((B, S, C), 0.1), jnp.full((B, S, C), -0.1)
    res = sample(None, x, cond, uncond, state)
    # step 4 is the first with t < 600 (t = 1000, 833, 667, 500 ...: step 3)
    first_bad = int(np.argmax(np.asarray(scheduler.schedule(6)[0]) < 600))
    assert nonfinite_report(res) == {
        "latents_step": first_bad,
        "attention": {"step": first_bad, "pass": "conditional", "layer": 2}}
    dens = np.asarray(res.density)  # [steps, passes, L, B, H]
    assert np.isnan(dens[first_bad, 0, 2, 0, 1]) and np.isfinite(dens[:first_bad]).all()
    with pytest.raises(FloatingPointError,
                       match=f"layer 2 in the conditional pass of step {first_bad}"):
        check_finite(res)
    if isinstance(attention, SVG2Attention):  # the cache stayed finite throughout
        for c in jax.tree.leaves(res.attn_state[0].cache):
            assert np.isfinite(np.asarray(c)).all()


def test_the_two_expert_sampler_names_the_expert_too():
    """Two experts switched at t = 700: only the second (low-noise) one's layer 1 turns
    NaN, so the first NaN is at the first step below the boundary, in expert 1; the
    first expert's SVG2 cache stays finite."""
    attention = SVG2Attention(CFG, dense_layers=(0,))
    scheduler = FlowMatchEuler()
    cfg = SamplerConfig(num_steps=6, guidance_scale=3.0, dense_fraction=0.0, progress=False,
                        boundary_timestep=700.0)
    experts = [toy_model(attention, bad_layer=99, bad_from_t=0),
               toy_model(attention, bad_layer=1, bad_from_t=1001)]
    sample = make_sampler(experts, attention, scheduler, cfg)
    states = tuple(attention.init_state(L, B, H, D) for _ in experts)
    x = jax.random.normal(jax.random.PRNGKey(1), (B, S, C))
    cond, uncond = jnp.full((B, S, C), 0.1), jnp.full((B, S, C), -0.1)
    res = sample((None, None), x, cond, uncond, states)
    switch = int(np.argmax(np.asarray(scheduler.schedule(6)[0]) < 700))
    assert 0 < switch < 6
    assert np.asarray(res.expert).tolist() == [0] * switch + [1] * (6 - switch)
    assert nonfinite_report(res) == {
        "latents_step": switch,
        "attention": {"step": switch, "pass": "conditional", "layer": 1, "expert": 1}}
    with pytest.raises(FloatingPointError, match=f"layer 1 in the conditional pass of step "
                                                 f"{switch} \\(expert 1\\)"):
        check_finite(res)
    for c in jax.tree.leaves(res.attn_state[0][0].cache):  # the first expert's
        assert np.isfinite(np.asarray(c)).all()


def test_a_nan_outside_attention_is_reported_as_such():
    def model_fn(params, x, t, context, state):
        return x * 0 + jnp.where(t[0] < 700, jnp.inf, 0.0), state, jnp.ones((1, B, H))

    cfg = SamplerConfig(num_steps=5, guidance_scale=1.0, progress=False)
    res = make_sampler(model_fn, DenseAttention(), FlowMatchEuler(), cfg)(
        None, jnp.ones((B, S, C)), jnp.zeros((B, S, C)), None, None)
    report = nonfinite_report(res)
    assert report["attention"] is None and report["latents_step"] == 2
    with pytest.raises(FloatingPointError, match="every self-attention output stayed finite"):
        check_finite(res)
