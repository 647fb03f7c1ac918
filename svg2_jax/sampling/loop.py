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

Several experts (Wan2.2 A14B: a high-noise and a low-noise transformer) are a sequence of
model functions with one params and one attention state each, switched at
`SamplerConfig.boundary_timestep` inside the same compiled loop (`lax.switch` on the
step's expert): each keeps its own per-layer state, and only the active expert's is
updated, so an expert's first sparse step clusters cold from its own Q/K (warm when
k-means ran during its dense steps).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

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
    keeping one cache per pass. progress: a progress bar from inside the compiled loop.

    Two experts (two model functions given to `make_sampler`): boundary_timestep: the
    first expert denoises the steps whose timestep is >= it, the second the rest
    (diffusers' Wan2.2 pipelines: boundary_ratio * num_train_timesteps);
    guidance_scale_2: the second expert's guidance (None: guidance_scale, as diffusers).
    CFG runs (both passes at every step) when either scale is not 1."""

    num_steps: int = 50
    guidance_scale: float = 5.0
    dense_fraction: float = 0.2
    kmeans_during_warmup: bool = False
    share_cfg_cache: bool = True
    progress: bool = True
    boundary_timestep: float | None = None
    guidance_scale_2: float | None = None

    def __post_init__(self):
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if not 0.0 <= self.dense_fraction <= 1.0:
            raise ValueError(f"dense_fraction must be in [0, 1], got {self.dense_fraction}")
        if self.guidance_scale_2 is not None and self.boundary_timestep is None:
            raise ValueError("guidance_scale_2 is the second expert's guidance: it needs "
                             "boundary_timestep (two experts)")

    @property
    def num_experts(self) -> int:
        return 1 if self.boundary_timestep is None else 2

    @property
    def guidance_scales(self) -> tuple[float, ...]:
        """Each expert's guidance scale."""
        if self.num_experts == 1:
            return (self.guidance_scale,)
        second = self.guidance_scale if self.guidance_scale_2 is None else self.guidance_scale_2
        return (self.guidance_scale, second)

    @property
    def cfg(self) -> bool:
        return any(g != 1.0 for g in self.guidance_scales)

    def experts(self, timesteps) -> np.ndarray:
        """[num_steps] int32: the expert of each step of the schedule `timesteps` (0 while
        t >= boundary_timestep, then 1; compared in float32 as torch compares a tensor
        with a Python number)."""
        t = np.asarray(timesteps)
        if self.boundary_timestep is None:
            return np.zeros(t.shape, np.int32)
        return (t.astype(np.float32) < np.float32(self.boundary_timestep)).astype(np.int32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SampleResult:
    """latents: the final latents. density: [num_steps, passes, L, B, H] per step, pass
    (conditional, then unconditional when CFG is on), layer, batch and head (1 = dense).
    attn_state: the final per-layer states (cond, uncond-or-None); with several experts a
    tuple of those, one per expert.
    first_nonfinite_step: [] int32, the first step whose latents had a NaN/Inf, -1 if none.
    first_nonfinite_attention: [3] int32, (step, pass, layer) of the first self-attention
      whose output had a NaN/Inf (a NaN density), all -1 if none. Passes run in order
      (conditional first) and layers in order, so this is where they first appeared
      (the step's expert is `expert[step]`).
    expert: [num_steps] int32, the expert that denoised each step (all 0 with one)."""

    latents: jax.Array
    density: jax.Array
    attn_state: Any
    first_nonfinite_step: jax.Array
    first_nonfinite_attention: jax.Array
    expert: jax.Array


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


def _replace(items: tuple, index: int, value) -> tuple:
    return items[:index] + (value,) + items[index + 1:]


def _first_nan_attention(record, step, dens):
    """record [3] (step, pass, layer), updated from this step's density [passes, L, B, H]
    if it is still -1 and a NaN is there."""
    hit = jnp.any(jnp.isnan(dens), axis=(-2, -1)).reshape(-1)  # [passes * L], in run order
    first = jnp.argmax(hit).astype(jnp.int32)
    layers = dens.shape[1]
    found = jnp.stack([jnp.int32(step), first // layers, first % layers])
    return jnp.where((record[0] < 0) & jnp.any(hit), found, record)


def make_sampler(model_fn: Callable | Sequence[Callable], attention, scheduler,
                 config: SamplerConfig, sharding=None):
    """Returns sample(params, latents, context, uncond_context, attn_state) -> SampleResult,
    jitted.

    model_fn: the model function, or one per expert (as many as `config.num_experts`);
    then params and attn_state are tuples with one entry per expert.
    latents: initial noise, float32 (the loop keeps latents in float32, as diffusers' Wan
    pipeline does). attn_state: `attention.init_state(...)` or None for dense attention.
    uncond_context is ignored when CFG is off.
    sharding: None, or a `svg2_jax.sharding.MeshPlan` whose mesh the loop runs on (params
    already on their shards, the attention its head-parallel wrapper: `MeshPlan.prepare`):
    sequence-parallel activations, the state's heads split over devices and, when the plan
    balances, reassigned after every step by that step's density (the active expert's
    state only); on a cfg=2 mesh the conditional and unconditional passes run at once as
    one batch split over the two device groups (separate caches needed). Same results as
    without, up to rounding.
    """
    experts = tuple(model_fn) if isinstance(model_fn, Sequence) else (model_fn,)
    if len(experts) != config.num_experts:
        raise ValueError(f"{len(experts)} model functions for {config.num_experts} expert(s): "
                         "two experts take config.boundary_timestep, one takes none")
    paired = sharding is not None and sharding.cfg_parallel
    if sharding is not None:
        sharding.check_sampler(attention, config)
        experts = tuple(sharding.model_fn(fn) for fn in experts)
    timesteps_np, sigmas_np = scheduler.schedule(config.num_steps)
    expert_np = config.experts(timesteps_np)
    n_dense = dense_warmup_steps(config.num_steps, config.dense_fraction)
    progress = _Progress(config.num_steps) if config.progress else None
    scales = config.guidance_scales

    def guided(e, params, latents, t, context, uncond_context, state_c, state_u):
        fn = experts[e]
        if paired:  # [cond; uncond] as one batch, halves on the mesh's two cfg groups
            b = latents.shape[0]
            # leaves with the batch axis first are joined; batch-free ones (a leading 1
            # that broadcasts, e.g. a first-frame mask) serve both halves as they are
            join = lambda c, u: jnp.concatenate([c, u]) if c.ndim and c.shape[0] == b else c
            both = jax.tree.map(join, (latents, t, context), (latents, t, uncond_context))
            both = (jax.lax.with_sharding_constraint(
                both[0], sharding.batch_sharding(2 * b)),) + both[1:]
            pred, state_c, dens = fn(params, *both, state_c)
            pred_c, pred_u = jnp.split(pred, 2)
            pred = pred_u + scales[e] * (pred_c - pred_u)
            return (pred.astype(jnp.float32), state_c, state_u,
                    jnp.stack(jnp.split(dens, 2, axis=1)))
        pred_c, state_c, dens_c = fn(params, latents, t, context, state_c)
        if not config.cfg:
            return pred_c.astype(jnp.float32), state_c, state_u, dens_c[None]
        if config.share_cfg_cache:
            pred_u, state_c, dens_u = fn(params, latents, t, uncond_context, state_c)
        else:
            pred_u, state_u, dens_u = fn(params, latents, t, uncond_context, state_u)
        pred = pred_u + scales[e] * (pred_c - pred_u)
        return pred.astype(jnp.float32), state_c, state_u, jnp.stack([dens_c, dens_u])

    def denoise(i, params, latents, t, context, uncond_context, states_c, states_u):
        """The active expert's guided prediction; only its states change (on a mesh,
        heads move to devices by this step's density)."""
        def branch(e):
            def run(operands):
                latents, states_c, states_u = operands
                pred, sc, su, dens = guided(e, params[e], latents, t, context, uncond_context,
                                            states_c[e], states_u[e])
                if sharding is not None:
                    sc, su = (None if s is None else attention.rebalance(s, dens)
                              for s in (sc, su))
                return pred, _replace(states_c, e, sc), _replace(states_u, e, su), dens
            return run

        operands = (latents, states_c, states_u)
        if len(experts) == 1:
            return branch(0)(operands)
        return jax.lax.switch(jnp.asarray(expert_np)[i], [branch(e) for e in range(len(experts))],
                              operands)

    @jax.jit
    def sample(params, latents, context, uncond_context, attn_state):
        if len(experts) == 1:
            params, attn_state = (params,), (attn_state,)
        elif not (isinstance(params, tuple) and isinstance(attn_state, tuple)
                  and len(params) == len(attn_state) == len(experts)):
            raise ValueError(f"{len(experts)} experts: params and attn_state must be tuples of "
                             f"{len(experts)} (one per expert)")
        sigmas = jnp.asarray(sigmas_np)
        timesteps = jnp.asarray(timesteps_np)
        batch = latents.shape[0]
        shared = not config.cfg or config.share_cfg_cache
        states_c0 = attn_state
        states_u0 = tuple(None if shared else s for s in attn_state)
        if sharding is not None:
            states_c0, states_u0 = (tuple(sharding.constrain_state(attention, s) for s in st)
                                    for st in (states_c0, states_u0))
            if paired:  # one state for the [cond; uncond] batch
                states_c0 = tuple(sharding.pair_state(attention, s) for s in states_c0)
                states_u0 = (None,) * len(experts)

        def body(i, carry):
            latents, solver, states_c, states_u, density, bad, bad_attn = carry
            sparse_now = i >= n_dense
            # --kmeans_during_warmup: the last dense step already clusters (cold), so the
            # first sparse step starts from warm centroids, as the reference's zero-step init.
            cluster_now = config.kmeans_during_warmup & (i == n_dense - 1)
            states_c, states_u = (tuple(_set_mode(attention, s, sparse_now, cluster_now)
                                        for s in states) for states in (states_c, states_u))
            t = jnp.broadcast_to(timesteps[i], (batch,))
            if sharding is not None:  # small: every device holds the whole latents
                latents = sharding.replicated(latents)
            pred, states_c, states_u, dens = denoise(i, params, latents, t, context,
                                                     uncond_context, states_c, states_u)
            latents, solver = scheduler.step(solver, sigmas, i, pred, latents)
            ok = jnp.all(jnp.isfinite(latents))
            bad = jnp.where((bad < 0) & ~ok, i, bad)
            bad_attn = _first_nan_attention(bad_attn, i, dens)
            if progress is not None:
                # ordered callbacks are single-device only
                jax.debug.callback(progress, i, ordered=sharding is None)
            return (latents, solver, states_c, states_u, density.at[i].set(dens), bad,
                    bad_attn)

        passes = 2 if config.cfg else 1
        per_call = {jax.eval_shape(lambda e=e: experts[e](
            params[e], latents, jnp.zeros((batch,), timesteps.dtype), context,
            attn_state[e])[2]).shape for e in range(len(experts))}
        if len(per_call) > 1:
            raise ValueError(f"the experts' density records differ in shape {sorted(per_call)}: "
                             "experts must have the same layers and heads")
        density = jnp.zeros((config.num_steps, passes) + per_call.pop(), jnp.float32)
        carry = (latents, scheduler.init(latents), states_c0, states_u0, density,
                 jnp.int32(-1), jnp.full((3,), -1, jnp.int32))
        latents, _, states_c, states_u, density, bad, bad_attn = jax.lax.fori_loop(
            0, config.num_steps, body, carry)
        if paired:
            final = tuple(sharding.unpair_state(attention, s) for s in states_c)
        else:
            final = tuple(zip(states_c, states_u))
        return SampleResult(latents, density, final[0] if len(experts) == 1 else final, bad,
                            bad_attn, jnp.asarray(expert_np))

    return sample


PASS_NAMES = ("conditional", "unconditional")


def nonfinite_report(result: SampleResult) -> dict | None:
    """Where NaN/Inf appeared (host side; None if nowhere): {"latents_step": first step
    whose latents were not finite or None, "attention": {"step", "pass", "layer"} of the
    first self-attention output that was not finite, or None}, the attention's dict with
    "expert" too (0-based) when the run switched experts. Steps and layers 0-based."""
    step = int(result.first_nonfinite_step)
    s, p, layer = (int(x) for x in np.asarray(result.first_nonfinite_attention))
    if step < 0 and s < 0:
        return None
    attention = None
    if s >= 0:
        attention = {"step": s, "pass": PASS_NAMES[p], "layer": layer}
        experts = np.asarray(result.expert)
        if experts.max() > 0:
            attention["expert"] = int(experts[s])
    return {"latents_step": step if step >= 0 else None, "attention": attention}


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
        expert = f" (expert {att['expert']})" if "expert" in att else ""
        parts.append(f"NaN/Inf first appeared in the self-attention output of layer "
                     f"{att['layer']} in the {att['pass']} pass of step {att['step']}{expert}")
    counted = "steps, layers and experts" if att and "expert" in att else "steps and layers"
    return "; ".join(parts) + f" ({counted} 0-based)"


def check_finite(result: SampleResult):
    """Raises FloatingPointError naming the first step whose latents were not finite and
    the step, pass and layer whose self-attention output first was (`nonfinite_report`)."""
    report = nonfinite_report(result)
    if report is not None:
        raise FloatingPointError(describe_nonfinite(report) + ". Check the inputs, dtype and "
                                 "guidance scale; SampleResult.density shows NaN for the "
                                 "heads whose attention output was not finite.")
    return result
