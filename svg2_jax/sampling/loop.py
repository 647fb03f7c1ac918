"""The denoising loop as one `jax.jit`: latents, solver history and every layer's SVG2
state are the carry of a `lax.fori_loop`.

The model is any function
    model_fn(params, latents [B, ...], timestep [B], context, attn_state)
        -> (pred, attn_state, density [L, B, H])
(params is passed through as an argument of the compiled loop, never baked in as a constant)
where `attn_state` is the stacked per-layer state of a `svg2_jax.layer_attention`
attention (None for dense attention). The loop only flips which layers are sparse
(dense warm-up, then SVG2), so one compilation serves every step and every call with
the same shapes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from svg2_jax.sampling.schedulers import dense_warmup_steps


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """num_steps: denoising steps. guidance_scale: classifier-free guidance (1 = off: no
    unconditional pass). dense_fraction: the first floor(dense_fraction * num_steps) steps
    run dense (reference: Wan T2V 0.2, I2V 720p 0.35, HunyuanVideo 0.1).
    kmeans_during_warmup: run the cold k-means during the last dense step (attention
    stays dense there), so the first sparse step is warm (the reference's
    --zero_step_kmeans_init). share_cfg_cache: the conditional and unconditional passes share each layer's
    centroids (as the reference does; each warm-starts from the other's) instead of
    keeping one cache per pass. progress: a progress bar from inside the compiled loop."""

    num_steps: int = 50
    guidance_scale: float = 5.0
    dense_fraction: float = 0.2
    kmeans_during_warmup: bool = False
    share_cfg_cache: bool = True
    progress: bool = True

    def __post_init__(self):
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if not 0.0 <= self.dense_fraction <= 1.0:
            raise ValueError(f"dense_fraction must be in [0, 1], got {self.dense_fraction}")

    @property
    def cfg(self) -> bool:
        return self.guidance_scale != 1.0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SampleResult:
    """latents: the final latents. density: [num_steps, passes, L, B, H] per step, pass
    (conditional, then unconditional when CFG is on), layer, batch and head (1 = dense).
    attn_state: the final per-layer states (cond, uncond-or-None).
    first_nonfinite_step: [] int32, the first step whose latents had a NaN/Inf, -1 if none."""

    latents: jax.Array
    density: jax.Array
    attn_state: Any
    first_nonfinite_step: jax.Array


class _Progress:
    """tqdm bar fed by a host callback from the compiled loop (plain prints without tqdm)."""

    def __init__(self, total):
        self.total = total
        self.bar = None

    def __call__(self, i):
        i = int(i)
        if i == 0:  # a new run of the compiled loop
            try:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=self.total, desc="denoising", unit="step")
            except ImportError:
                self.bar = None
        if self.bar is not None:
            self.bar.update(1)
            if i + 1 == self.total:
                self.bar.close()
        else:
            print(f"denoising step {i + 1}/{self.total}", flush=True)


def _set_mode(attention, state, sparse, cluster):
    return None if state is None else attention.set_mode(state, sparse, cluster)


def make_sampler(model_fn: Callable, attention, scheduler, config: SamplerConfig,
                 sharding=None):
    """Returns sample(params, latents, context, uncond_context, attn_state) -> SampleResult,
    jitted.

    latents: initial noise, float32 (the loop keeps latents in float32, as diffusers' Wan
    pipeline does). attn_state: `attention.init_state(...)` or None for dense attention.
    uncond_context is ignored when guidance_scale == 1.
    sharding: None, or a `svg2_jax.sharding.MeshPlan` whose mesh the loop runs on (params
    already on their shards, the attention its head-parallel wrapper: `MeshPlan.prepare`):
    sequence-parallel activations, the state's heads split over devices and, when the plan
    balances, reassigned after every step by that step's density; on a cfg=2 mesh the
    conditional and unconditional passes run at once as one batch split over the two
    device groups (separate caches needed). Same results as without, up to rounding.
    """
    paired = sharding is not None and sharding.cfg_parallel
    if sharding is not None:
        sharding.check_sampler(attention, config)
        model_fn = sharding.model_fn(model_fn)
    timesteps_np, sigmas_np = scheduler.schedule(config.num_steps)
    n_dense = dense_warmup_steps(config.num_steps, config.dense_fraction)
    progress = _Progress(config.num_steps) if config.progress else None

    def guided(params, latents, t, context, uncond_context, state_c, state_u):
        if paired:  # [cond; uncond] as one batch, halves on the mesh's two cfg groups
            both = jax.tree.map(lambda c, u: jnp.concatenate([c, u]),
                                (latents, t, context), (latents, t, uncond_context))
            both = (jax.lax.with_sharding_constraint(
                both[0], sharding.batch_sharding(2 * latents.shape[0])),) + both[1:]
            pred, state_c, dens = model_fn(params, *both, state_c)
            pred_c, pred_u = jnp.split(pred, 2)
            return (pred_u + config.guidance_scale * (pred_c - pred_u), state_c, state_u,
                    jnp.stack(jnp.split(dens, 2, axis=1)))
        pred_c, state_c, dens_c = model_fn(params, latents, t, context, state_c)
        if not config.cfg:
            return pred_c, state_c, state_u, dens_c[None]
        if config.share_cfg_cache:
            pred_u, state_c, dens_u = model_fn(params, latents, t, uncond_context, state_c)
        else:
            pred_u, state_u, dens_u = model_fn(params, latents, t, uncond_context, state_u)
        pred = pred_u + config.guidance_scale * (pred_c - pred_u)
        return pred, state_c, state_u, jnp.stack([dens_c, dens_u])

    @jax.jit
    def sample(params, latents, context, uncond_context, attn_state):
        sigmas = jnp.asarray(sigmas_np)
        timesteps = jnp.asarray(timesteps_np)
        batch = latents.shape[0]
        state_u0 = None if (not config.cfg or config.share_cfg_cache) else attn_state

        def body(i, carry):
            latents, solver, state_c, state_u, density, bad = carry
            sparse_now = i >= n_dense
            # --kmeans_during_warmup: the last dense step already clusters (cold), so the
            # first sparse step starts from warm centroids, as the reference's zero-step init.
            cluster_now = config.kmeans_during_warmup & (i == n_dense - 1)
            state_c = _set_mode(attention, state_c, sparse_now, cluster_now)
            state_u = _set_mode(attention, state_u, sparse_now, cluster_now)
            t = jnp.broadcast_to(timesteps[i], (batch,))
            if sharding is not None:  # small: every device holds the whole latents
                latents = sharding.replicated(latents)
            pred, state_c, state_u, dens = guided(params, latents, t, context, uncond_context,
                                                  state_c, state_u)
            latents, solver = scheduler.step(solver, sigmas, i, pred.astype(jnp.float32), latents)
            if sharding is not None:  # heads to devices by this step's density
                state_c, state_u = (None if s is None else attention.rebalance(s, dens)
                                    for s in (state_c, state_u))
            ok = jnp.all(jnp.isfinite(latents))
            bad = jnp.where((bad < 0) & ~ok, i, bad)
            if progress is not None:
                # ordered callbacks are single-device only
                jax.debug.callback(progress, i, ordered=sharding is None)
            return latents, solver, state_c, state_u, density.at[i].set(dens), bad

        passes = 2 if config.cfg else 1
        per_call = jax.eval_shape(lambda: model_fn(
            params, latents, jnp.zeros((batch,), timesteps.dtype), context, attn_state)[2]).shape
        density = jnp.zeros((config.num_steps, passes) + per_call, jnp.float32)
        state_c = attn_state
        if sharding is not None:
            state_c, state_u0 = (sharding.constrain_state(attention, s)
                                 for s in (state_c, state_u0))
            if paired:
                state_c, state_u0 = sharding.pair_state(attention, state_c), None
        carry = (latents, scheduler.init(latents), state_c, state_u0, density, jnp.int32(-1))
        latents, _, state_c, state_u, density, bad = jax.lax.fori_loop(
            0, config.num_steps, body, carry)
        if paired:
            state_c, state_u = sharding.unpair_state(attention, state_c)
        return SampleResult(latents, density, (state_c, state_u), bad)

    return sample


def check_finite(result: SampleResult):
    """Raises FloatingPointError naming the first step whose latents were not finite."""
    step = int(result.first_nonfinite_step)
    if step >= 0:
        raise FloatingPointError(
            f"latents became NaN/Inf at denoising step {step} (0-based); the density report "
            f"up to that step is in the result. Check the inputs, dtype and guidance scale.")
    return result
