"""Flow-matching solvers as pure functions, matching diffusers' schedulers as Wan uses them.

- `FlowMatchEuler`: diffusers `FlowMatchEulerDiscreteScheduler` (deterministic, static shift).
- `FlowUniPC`: diffusers `UniPCMultistepScheduler(prediction_type="flow_prediction",
  use_flow_sigmas=True, flow_shift=..., solver_type="bh2", predict_x0=True,
  lower_order_final=True, final_sigmas_type="zero")`, the Wan2.1 default.

A scheduler is a frozen config. `schedule(num_steps)` gives numpy (timesteps [n],
sigmas [n + 1]) computed exactly as diffusers does (same float32/float64 path);
`init(sample)` the solver state pytree; `step(state, sigmas, i, model_output, sample)`
one update with a traced step index, so a whole loop compiles once.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np


@runtime_checkable
class Scheduler(Protocol):
    """A flow-matching solver (a frozen, hashable config)."""

    def schedule(self, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps [n], sigmas [n + 1]) as numpy, computed as diffusers does."""

    def init(self, sample: jax.Array) -> Any:
        """The solver state pytree for a sample of this shape and dtype."""

    def step(self, state: Any, sigmas, i, model_output: jax.Array, sample: jax.Array
             ) -> tuple[jax.Array, Any]:
        """One update at (traced) step index i -> (next sample, new state)."""


def _shift(sigmas, shift):
    return shift * sigmas / (1 + (shift - 1) * sigmas)


@dataclasses.dataclass(frozen=True)
class FlowMatchEuler:
    """pipeline_sigmas: the schedule HunyuanVideo's diffusers pipeline asks for, explicit
    sigmas linspace(1, 0, n + 1)[:-1] shifted once; otherwise the scheduler's own
    (shifted twice, as diffusers does when no sigmas are given)."""

    num_train_timesteps: int = 1000
    shift: float = 1.0
    pipeline_sigmas: bool = False

    def schedule(self, num_steps: int):
        n_train = self.num_train_timesteps
        if self.pipeline_sigmas:
            sigmas = np.linspace(1.0, 0.0, num_steps + 1)[:-1].astype(np.float32)
            sigmas = _shift(sigmas, self.shift).astype(np.float32)
            return sigmas * np.float32(n_train), np.concatenate([sigmas, np.zeros(1, np.float32)])
        # diffusers shifts once at construction (float32) to find sigma_max/min ...
        train_t = np.linspace(1, n_train, n_train, dtype=np.float32)[::-1].copy()
        train_sigmas = _shift(train_t / np.float32(n_train), np.float32(self.shift))
        sigma_max, sigma_min = float(train_sigmas[0]), float(train_sigmas[-1])
        # ... and again on the inference grid (float64, then float32): the schedule is shifted twice.
        t = np.linspace(sigma_max * n_train, sigma_min * n_train, num_steps)
        sigmas = _shift(t / n_train, self.shift).astype(np.float32)
        timesteps = sigmas * np.float32(n_train)
        return timesteps, np.concatenate([sigmas, np.zeros(1, np.float32)])

    def init(self, sample):
        return ()

    def step(self, state, sigmas, i, model_output, sample):
        dt = sigmas[i + 1] - sigmas[i]
        prev = sample.astype(jnp.float32) + dt * model_output
        return prev.astype(model_output.dtype), state


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class UniPCState:
    """model_outputs: [order, *sample.shape], oldest first (converted x0 predictions);
    last_sample: the sample before the last predictor; lower_order_nums, this_order: [] int32."""

    model_outputs: jax.Array
    last_sample: jax.Array
    lower_order_nums: jax.Array
    this_order: jax.Array


def _lambda(sigma):
    # flow sigmas: alpha = 1 - sigma; lambda = log(alpha) - log(sigma)
    return jnp.log(1.0 - sigma) - jnp.log(sigma)


def _unipc_coefficients(h, order):
    """h * phi_1 terms and the b vector of UniPC-bh2 (predict_x0), as diffusers computes them."""
    hh = -h
    h_phi_1 = jnp.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = jnp.expm1(hh)
    factorial = 1
    b = []
    for i in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return h_phi_1, b_h, jnp.stack(b)


def _history(outputs, sigmas, i, lambda_s0, h, order, lag):
    """Ratios r_k and scaled differences D1_k of the older model outputs (UniPC's
    multistep terms); the corrector looks one step further back (lag=1)."""
    m0 = outputs[-1]
    rks, d1s = [], []
    for k in range(1, order):
        rk = (_lambda(sigmas[i - k - lag]) - lambda_s0) / h
        rks.append(rk)
        d1s.append((outputs[-(k + 1)] - m0) / rk)
    return rks, d1s


@dataclasses.dataclass(frozen=True)
class FlowUniPC:
    num_train_timesteps: int = 1000
    flow_shift: float = 1.0
    solver_order: int = 2

    def __post_init__(self):
        if self.solver_order < 1:
            raise ValueError(f"solver_order must be >= 1, got {self.solver_order}")

    def schedule(self, num_steps: int):
        n_train = self.num_train_timesteps
        sigmas = np.linspace(1, 1 / n_train, num_steps + 1)[:-1]
        sigmas = _shift(sigmas, self.flow_shift)
        if abs(sigmas[0] - 1) < 1e-6:  # diffusers: keeps log(alpha) finite at the first step
            sigmas[0] -= 1e-6
        timesteps = (sigmas * n_train).astype(np.int64)  # diffusers casts the timesteps to int64
        return timesteps, np.concatenate([sigmas, [0.0]]).astype(np.float32)

    def init(self, sample):
        return UniPCState(jnp.zeros((self.solver_order,) + sample.shape, sample.dtype),
                          jnp.zeros_like(sample), jnp.int32(0), jnp.int32(1))

    def _predictor(self, outputs, sample, sigmas, i, order):
        sigma_t, sigma_s0 = sigmas[i + 1], sigmas[i]
        lambda_s0 = _lambda(sigma_s0)
        h = _lambda(sigma_t) - lambda_s0
        m0 = outputs[-1]
        h_phi_1, b_h, b = _unipc_coefficients(h, order)
        x_t = sigma_t / sigma_s0 * sample - (1 - sigma_t) * h_phi_1 * m0
        if order == 1:
            return x_t
        rks, d1s = _history(outputs, sigmas, i, lambda_s0, h, order, lag=0)
        if order == 2:
            rhos = jnp.full((1,), 0.5, jnp.float32)
        else:
            rks = jnp.stack(rks + [jnp.float32(1.0)])
            r = jnp.stack([rks ** p for p in range(order)])
            rhos = jnp.linalg.solve(r[:-1, :-1], b[:-1])
        pred_res = sum(rhos[j] * d1s[j] for j in range(order - 1))
        return x_t - (1 - sigma_t) * b_h * pred_res

    def _corrector(self, outputs, model_t, last_sample, sigmas, i, order):
        sigma_t, sigma_s0 = sigmas[i], sigmas[i - 1]
        lambda_s0 = _lambda(sigma_s0)
        h = _lambda(sigma_t) - lambda_s0
        m0 = outputs[-1]
        h_phi_1, b_h, b = _unipc_coefficients(h, order)
        x_t = sigma_t / sigma_s0 * last_sample - (1 - sigma_t) * h_phi_1 * m0
        rks, d1s = _history(outputs, sigmas, i, lambda_s0, h, order, lag=1)
        if order == 1:
            rhos = jnp.full((1,), 0.5, jnp.float32)
        else:
            rks = jnp.stack(rks + [jnp.float32(1.0)])
            r = jnp.stack([rks ** p for p in range(order)])
            rhos = jnp.linalg.solve(r, b)
        corr = sum(rhos[j] * d1s[j] for j in range(order - 1))
        return x_t - (1 - sigma_t) * b_h * (corr + rhos[-1] * (model_t - m0))

    def step(self, state: UniPCState, sigmas, i, model_output, sample):
        """One UniPC step at (traced) index i of a `len(sigmas) - 1`-step schedule."""
        sigmas = jnp.asarray(sigmas, jnp.float32)
        num_steps = sigmas.shape[0] - 1
        orders = range(1, self.solver_order + 1)
        converted = sample - sigmas[i] * model_output  # x0 prediction for flow matching

        def correct(sample):
            return jax.lax.switch(state.this_order - 1, [
                lambda o=o: self._corrector(state.model_outputs, converted, state.last_sample,
                                            sigmas, i, o).astype(sample.dtype) for o in orders])

        sample = jax.lax.cond(i > 0, correct, lambda s: s, sample)
        outputs = jnp.concatenate([state.model_outputs[1:], converted[None]], axis=0)
        this_order = jnp.minimum(jnp.minimum(self.solver_order, num_steps - i),
                                 state.lower_order_nums + 1).astype(jnp.int32)
        prev = jax.lax.switch(this_order - 1, [
            lambda o=o: self._predictor(outputs, sample, sigmas, i, o).astype(sample.dtype)
            for o in orders])
        new_state = UniPCState(outputs, sample,
                               jnp.minimum(state.lower_order_nums + 1, self.solver_order),
                               this_order)
        return prev, new_state


SCHEDULERS: dict[str, type] = {"euler": FlowMatchEuler, "unipc": FlowUniPC}


def dense_warmup_steps(num_steps: int, fraction: float) -> int:
    """Steps run dense before SVG2 starts: floor(fraction * num_steps), as the reference."""
    return int(math.floor(fraction * num_steps))
