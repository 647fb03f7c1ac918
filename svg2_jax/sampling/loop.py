"""The denoising loop as one `jax.jit`: latents, solver history and every layer's SVG2
state are the carry of a `lax.fori_loop`.

The model is any function
    model_fn(params, latents [B, ...], timestep [B], context, attn_state)
        -> (pred, attn_state, density [L, B, H])
(density NaN for a head whose attention output was not finite, as `svg2_jax.layer_attention`
reports it; params is passed through as an argument of the compiled loop, never baked in as a constant)
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
import numpy as np

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
    first_nonfinite_step: [] int32, the first step whose latents had a NaN/Inf, -1 if none.
    first_nonfinite_attention: [3] int32, (step, pass, layer) of the first self-attention
      whose output had a NaN/Inf (a NaN density), all -1 if none. Passes run in order
      (conditional first) and layers in order, so this is where they first appeared."""

    latents: jax.Array
    density: jax.Array
    attn_state: Any
    first_nonfinite_step: jax.Array
    first_nonfinite_attention: jax.Array


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


def _first_nan_attention(record, step, dens):
    """record [3] (step, pass, layer), updated from this step's density [passes, L, B, H]
    if it is still -1 and a NaN is there."""
    hit = jnp.any(jnp.isnan(dens), axis=(-2, -1)).reshape(-1)  # [passes * L], in run order
    first = jnp.argmax(hit).astype(jnp.int32)
    layers = dens.shape[1]
    found = jnp.stack([jnp.int32(step), first // layers, first % layers])
    return jnp.where((record[0] < 0) & jnp.any(hit), found, record)


def make_sampler(model_fn: Callable, attention, scheduler, config: SamplerConfig):
    """Returns sample(params, latents, context, uncond_context, attn_state) -> SampleResult,
    jitted.

    latents: initial noise, float32 (the loop keeps latents in float32, as diffusers' Wan
    pipeline does). attn_state: `attention.init_state(...)` or None for dense attention.
    uncond_context is ignored when guidance_scale == 1.
    """
    timesteps_np, sigmas_np = scheduler.schedule(config.num_steps)
    n_dense = dense_warmup_steps(config.num_steps, config.dense_fraction)
    progress = _Progress(config.num_steps) if config.progress else None

    def guided(params, latents, t, context, uncond_context, state_c, state_u):
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
            latents, solver, state_c, state_u, density, bad, bad_attn = carry
            sparse_now = i >= n_dense
            # --kmeans_during_warmup: the last dense step already clusters (cold), so the
            # first sparse step starts from warm centroids, as the reference's zero-step init.
            cluster_now = config.kmeans_during_warmup & (i == n_dense - 1)
            state_c = _set_mode(attention, state_c, sparse_now, cluster_now)
            state_u = _set_mode(attention, state_u, sparse_now, cluster_now)
            t = jnp.broadcast_to(timesteps[i], (batch,))
            pred, state_c, state_u, dens = guided(params, latents, t, context, uncond_context,
                                                  state_c, state_u)
            latents, solver = scheduler.step(solver, sigmas, i, pred.astype(jnp.float32), latents)
            ok = jnp.all(jnp.isfinite(latents))
            bad = jnp.where((bad < 0) & ~ok, i, bad)
            bad_attn = _first_nan_attention(bad_attn, i, dens)
            if progress is not None:
                jax.debug.callback(progress, i, ordered=True)
            return (latents, solver, state_c, state_u, density.at[i].set(dens), bad,
                    bad_attn)

        passes = 2 if config.cfg else 1
        per_call = jax.eval_shape(lambda: model_fn(
            params, latents, jnp.zeros((batch,), timesteps.dtype), context, attn_state)[2]).shape
        density = jnp.zeros((config.num_steps, passes) + per_call, jnp.float32)
        carry = (latents, scheduler.init(latents), attn_state, state_u0, density, jnp.int32(-1),
                 jnp.full((3,), -1, jnp.int32))
        latents, _, state_c, state_u, density, bad, bad_attn = jax.lax.fori_loop(
            0, config.num_steps, body, carry)
        return SampleResult(latents, density, (state_c, state_u), bad, bad_attn)

    return sample


PASS_NAMES = ("conditional", "unconditional")


def nonfinite_report(result: SampleResult) -> dict | None:
    """Where NaN/Inf appeared (host side; None if nowhere): {"latents_step": first step
    whose latents were not finite or None, "attention": {"step", "pass", "layer"} of the
    first self-attention output that was not finite, or None}. Steps and layers 0-based."""
    step = int(result.first_nonfinite_step)
    s, p, layer = (int(x) for x in np.asarray(result.first_nonfinite_attention))
    if step < 0 and s < 0:
        return None
    return {"latents_step": step if step >= 0 else None,
            "attention": None if s < 0 else {"step": s, "pass": PASS_NAMES[p], "layer": layer}}


def describe_nonfinite(report: dict) -> str:
    """A sentence from `nonfinite_report`'s dict."""
    parts = []
    if report["latents_step"] is not None:
        parts.append(f"latents became NaN/Inf at denoising step {report['latents_step']}")
    att = report["attention"]
    if att is None:
        parts.append("every self-attention output stayed finite (the NaN/Inf came from "
                     "elsewhere in the model or from the solver)")
    else:
        parts.append(f"NaN/Inf first appeared in the self-attention output of layer "
                     f"{att['layer']} in the {att['pass']} pass of step {att['step']}")
    return "; ".join(parts) + " (steps and layers 0-based)"


def check_finite(result: SampleResult):
    """Raises FloatingPointError naming the first step whose latents were not finite and
    the step, pass and layer whose self-attention output first was (`nonfinite_report`)."""
    report = nonfinite_report(result)
    if report is not None:
        raise FloatingPointError(describe_nonfinite(report) + ". Check the inputs, dtype and "
                                 "guidance scale; SampleResult.density shows NaN for the "
                                 "heads whose attention output was not finite.")
    return result
