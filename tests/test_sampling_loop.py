import jax
import jax.numpy as jnp
import numpy as np
import pytest

from svg2_jax import SVG2Config
from svg2_jax.layer_attention import DenseAttention, SVG2Attention
from svg2_jax.sampling import (FlowMatchEuler, FlowUniPC, SamplerConfig, check_finite,
                               make_sampler)

L, B, S, C, H, D = 3, 1, 128, 8, 2, 16


def toy_weights(seed=0):
    """(wq, wk, wv, wo, wt) of the toy model."""
    ks = jax.random.split(jax.random.PRNGKey(seed), 5)
    w = [jax.random.normal(kk, (L, C, H * D)) * 0.5 for kk in ks[:3]]
    return (*w, jax.random.normal(ks[3], (L, H * D, C)) * 0.05,
            jax.random.normal(ks[4], (C,)) * 0.01)


def toy_model(attention, seed=0):
    """A 3-layer attention-only 'DiT' on latents [B, S, C]: enough to exercise per-layer state.
    Its weights are `params` (`toy_weights`), or those of `seed` when params is None."""
    default = toy_weights(seed)

    def model_fn(params, x, t, context, state):
        *w, wo, wt = default if params is None else params
        h = x + context + wt * t[:, None, None] / 1000.0

        def layer(h, xs):
            i, wq, wk, wv, wo_l, st = xs
            q, k, v = (jnp.einsum("bsc,cf->bsf", h, w_).reshape(B, S, H, D) for w_ in (wq, wk, wv))
            out, st, dens = attention(q, k, v, st, i)
            return h + jnp.einsum("bsf,fc->bsc", out.reshape(B, S, H * D), wo_l), (st, dens)

        h, (state, dens) = jax.lax.scan(layer, h, (jnp.arange(L), *w, wo, state))
        return h - x, state, dens

    return model_fn


# the reference rule with compensation (random q, k are sparse under top-p), and the
# error-aware rule at a tolerance that leaves blocks of random q, k to the compensation
CFG = SVG2Config(num_q_clusters=4, num_k_clusters=8, selection="svg2", top_p=0.6,
                 compensation=True, kmeans_iters_cold=4)
CFG_ERROR = SVG2Config.error_aware(num_q_clusters=4, num_k_clusters=8, error_tolerance=0.3,
                                   kmeans_iters_cold=4)


def inputs(seed=0):
    ks = jax.random.split(jax.random.PRNGKey(seed), 3)
    return (jax.random.normal(ks[0], (B, S, C)), jax.random.normal(ks[1], (B, S, C)) * 0.1,
            jax.random.normal(ks[2], (B, S, C)) * 0.1)


def python_loop(model_fn, attention, scheduler, cfg, latents, cond, uncond, state):
    """Step by step in Python with the same pieces: what the compiled loop must equal.
    Only the model call and the solver step are compiled (separately), per step."""
    model_fn, step = jax.jit(model_fn), jax.jit(scheduler.step)
    timesteps, sigmas = scheduler.schedule(cfg.num_steps)
    n_dense = int(cfg.dense_fraction * cfg.num_steps)
    solver = scheduler.init(latents)
    state_c, state_u = state, (None if cfg.share_cfg_cache else state)
    for i in range(cfg.num_steps):
        mode = dict(sparse=i >= n_dense, cluster=cfg.kmeans_during_warmup and i == n_dense - 1)
        state_c = attention.set_mode(state_c, **mode)
        state_u = state_u if state_u is None else attention.set_mode(state_u, **mode)
        t = jnp.full((B,), timesteps[i])
        pc, state_c, _ = model_fn(None, latents, t, cond, state_c)
        if cfg.share_cfg_cache:
            pu, state_c, _ = model_fn(None, latents, t, uncond, state_c)
        else:
            pu, state_u, _ = model_fn(None, latents, t, uncond, state_u)
        pred = pu + cfg.guidance_scale * (pc - pu)
        latents, solver = step(solver, jnp.asarray(sigmas), i, pred, latents)
    return latents


@pytest.mark.parametrize("scheduler,share,warmup_kmeans,svg2", [
    (FlowUniPC(flow_shift=3.0), True, False, CFG_ERROR),
    (FlowMatchEuler(shift=3.0), False, True, CFG)])
def test_compiled_loop_equals_python_loop(scheduler, share, warmup_kmeans, svg2):
    attention = SVG2Attention(svg2, dense_layers=(0,))
    model_fn = toy_model(attention)
    cfg = SamplerConfig(num_steps=6, guidance_scale=4.0, dense_fraction=0.34,
                        share_cfg_cache=share, kmeans_during_warmup=warmup_kmeans,
                        progress=False)
    latents, cond, uncond = inputs()
    state = attention.init_state(L, B, H, D)
    res = check_finite(make_sampler(model_fn, attention, scheduler, cfg)(
        None, latents, cond, uncond, state))
    want = python_loop(model_fn, attention, scheduler, cfg, latents, cond, uncond, state)
    np.testing.assert_allclose(np.asarray(res.latents), np.asarray(want), rtol=1e-4, atol=1e-5)
    assert res.density.shape == (6, 2, L, B, H)
    assert (np.asarray(res.density)[2:, :, 1:] < 1).all()  # sparse after the warm-up


def test_warmup_is_dense_then_sparse_and_no_recompilation():
    attention = SVG2Attention(CFG, dense_layers=(0,))
    cfg = SamplerConfig(num_steps=5, guidance_scale=1.0, dense_fraction=0.4, progress=False)
    sample = make_sampler(toy_model(attention), attention, FlowUniPC(flow_shift=3.0), cfg)
    state = attention.init_state(L, B, H, D)
    res = sample(None, *inputs(0)[:2], None, state)
    dens = np.asarray(res.density)  # [steps, 1, L, B, H]
    assert (dens[:2] == 1.0).all()  # floor(0.4 * 5) = 2 dense warm-up steps
    assert (dens[:, :, 0] == 1.0).all()  # layer 0 always dense
    assert (dens[2:, :, 1:] < 1.0).all()  # sparse afterwards
    np.testing.assert_array_equal(np.asarray(res.attn_state[0].initialized), [False, True, True])
    res2 = sample(None, *inputs(1)[:2], None, state)
    assert sample._cache_size() == 1
    assert not np.allclose(np.asarray(res.latents), np.asarray(res2.latents))


def test_dense_attention_model_and_progress_bar(capsys):
    cfg = SamplerConfig(num_steps=3, guidance_scale=2.0, progress=True)
    sample = make_sampler(toy_model(DenseAttention()), DenseAttention(), FlowMatchEuler(), cfg)
    res = sample(None, *inputs(), None)
    jax.effects_barrier()
    assert (np.asarray(res.density) == 1).all()
    err = capsys.readouterr().err + capsys.readouterr().out
    assert "3/3" in err


def test_nan_is_reported_with_its_step():
    def model_fn(params, x, t, context, state):
        bad = jnp.where(t[0] < 700, jnp.nan, 0.0)  # FlowMatchEuler(shift=1): t < 700 from step 3
        return x * 0 + bad, state, jnp.ones((1, B, H))

    cfg = SamplerConfig(num_steps=10, guidance_scale=1.0, progress=False)
    sample = make_sampler(model_fn, DenseAttention(), FlowMatchEuler(), cfg)
    res = sample(None, jnp.ones((B, S, C)), jnp.zeros((B, S, C)), None, None)
    with pytest.raises(FloatingPointError, match="step 3"):
        check_finite(res)


def test_bad_sampler_config():
    with pytest.raises(ValueError, match="num_steps"):
        SamplerConfig(num_steps=0)
    with pytest.raises(ValueError, match="dense_fraction"):
        SamplerConfig(dense_fraction=1.5)
