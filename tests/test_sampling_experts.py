"""Two experts in the compiled loop (Wan2.2 A14B's high-/low-noise transformers): switched
at the exact boundary step, each with its own guidance scale and its own SVG2 caches,
against a step-by-step Python loop that switches as diffusers' WanPipeline does."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_sampling_loop import CFG, B, H, L, D, inputs, toy_model, toy_weights

from svg2_jax.layer_attention import DenseAttention, SVG2Attention
from svg2_jax.sampling import FlowMatchEuler, FlowUniPC, SamplerConfig, make_sampler


def python_loop(model_fn, params, attention, scheduler, cfg, boundary, scales, latents, cond,
                uncond, state):
    """diffusers' rule: `transformer` while t >= boundary, else `transformer_2` (here one
    model function with each expert's params); each expert keeps its own (shared-CFG)
    state, set to dense / sparse by the global step."""
    fn = jax.jit(model_fn)
    step = jax.jit(scheduler.step)
    timesteps, sigmas = scheduler.schedule(cfg.num_steps)
    n_dense = int(cfg.dense_fraction * cfg.num_steps)
    solver = scheduler.init(latents)
    states = [state, state]
    used = []
    for i in range(cfg.num_steps):
        e = 0 if float(timesteps[i]) >= boundary else 1
        used.append(e)
        states[e] = attention.set_mode(states[e], sparse=i >= n_dense)
        t = jnp.full((B,), timesteps[i])
        pc, states[e], _ = fn(params[e], latents, t, cond, states[e])
        pu, states[e], _ = fn(params[e], latents, t, uncond, states[e])
        latents, solver = step(solver, jnp.asarray(sigmas), i, pu + scales[e] * (pc - pu),
                               latents)
    return latents, states, used


def test_experts_switch_at_the_exact_boundary_with_their_own_caches():
    """UniPC (multistep: its history runs across the switch); 6 steps, 2 dense: the first
    expert runs steps 0-3 (sparse from 2), the second 4-5, cold-starting its own cache at 4."""
    scheduler, switch_after = FlowUniPC(flow_shift=3.0), 3
    attention = SVG2Attention(CFG, dense_layers=(0,))
    fn = toy_model(attention)
    params = (toy_weights(0), toy_weights(7))
    timesteps, _ = scheduler.schedule(6)
    boundary = float(timesteps[switch_after])  # that step is still the first expert's (>=)
    cfg = SamplerConfig(num_steps=6, guidance_scale=4.0, guidance_scale_2=2.5,
                        dense_fraction=0.34, boundary_timestep=boundary, progress=False)
    latents, cond, uncond = inputs()
    state = attention.init_state(L, B, H, D)
    res = make_sampler((fn, fn), attention, scheduler, cfg)(
        params, latents, cond, uncond, (state, state))
    want, states, used = python_loop(fn, params, attention, scheduler, cfg, boundary,
                                     (4.0, 2.5), latents, cond, uncond, state)
    expected = [0] * (switch_after + 1) + [1] * (5 - switch_after)
    assert used == expected
    np.testing.assert_array_equal(np.asarray(res.expert), expected)
    np.testing.assert_allclose(np.asarray(res.latents), np.asarray(want), rtol=1e-4, atol=1e-5)
    # each expert's centroids are its own: equal to those of the loop that never mixes them
    for e in range(2):
        ours, theirs = res.attn_state[e][0], states[e]
        np.testing.assert_allclose(np.asarray(ours.cache.q_centroids),
                                   np.asarray(theirs.cache.q_centroids), rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(ours.initialized),
                                      np.asarray(theirs.initialized))
    # both caches were filled (layer 0 stays dense), each from its own expert's Q/K
    dens = np.asarray(res.density)
    assert (dens[:2] == 1).all() and (dens[2:, :, 1:] < 1).all()  # floor(0.34 * 6) dense
    for e in range(2):
        assert np.asarray(res.attn_state[e][0].initialized)[1:].all()
    assert not np.allclose(np.asarray(res.attn_state[0][0].cache.q_centroids),
                           np.asarray(res.attn_state[1][0].cache.q_centroids))


def test_an_expert_whose_steps_are_all_dense_never_clusters():
    attention = SVG2Attention(CFG, dense_layers=(0,))
    fn = toy_model(attention)
    scheduler = FlowMatchEuler(shift=3.0)
    timesteps, _ = scheduler.schedule(5)
    cfg = SamplerConfig(num_steps=5, guidance_scale=1.0, dense_fraction=0.4,
                        boundary_timestep=float(timesteps[1]), progress=False)
    state = attention.init_state(L, B, H, D)
    res = make_sampler((fn, fn), attention, scheduler, cfg)(
        (toy_weights(0), toy_weights(7)), *inputs()[:2], None, (state, state))
    np.testing.assert_array_equal(np.asarray(res.expert), [0, 0, 1, 1, 1])
    # expert 0 ran steps 0-1, both in the dense warm-up: its cache was never filled
    assert not np.asarray(res.attn_state[0][0].initialized).any()
    assert np.asarray(res.attn_state[1][0].initialized)[1:].all()


def test_expert_count_and_config_checks():
    attention = DenseAttention()
    fn = toy_model(attention)
    with pytest.raises(ValueError, match="2 model functions for 1 expert"):
        make_sampler((fn, fn), attention, FlowUniPC(), SamplerConfig(progress=False))
    with pytest.raises(ValueError, match="1 model functions for 2 expert"):
        make_sampler(fn, attention, FlowUniPC(), SamplerConfig(boundary_timestep=875.0))
    with pytest.raises(ValueError, match="guidance_scale_2 .* needs boundary_timestep"):
        SamplerConfig(guidance_scale_2=3.0)
    cfg = SamplerConfig(num_steps=2, boundary_timestep=500.0, progress=False)
    sample = make_sampler((fn, fn), attention, FlowUniPC(), cfg)
    with pytest.raises(ValueError, match="tuples of 2"):
        sample(None, *inputs(), None)
    assert cfg.guidance_scales == (5.0, 5.0) and cfg.cfg
    assert SamplerConfig(guidance_scale=1.0, guidance_scale_2=1.0, boundary_timestep=1.0).cfg \
        is False
