"""Density-balanced heads: which device of the sequence axis runs which attention head.

With head-parallel attention every device runs the same number of head slots per layer
(`Hp / P`, `Hp` the heads padded to a multiple of the P devices; padding heads cost next
to nothing). SVG2's heads differ a lot in density, and all devices wait for the slowest
at the next all-to-all, so the contiguous assignment (slots in head order) can leave most
devices idle. `balanced_order` assigns heads by their measured work, heaviest first, to
the least loaded device that still has a free slot (longest-processing-time first with a
slot limit); it runs on device inside the compiled loop, from the previous step's
density, and changes only where heads run, never what they compute.

An order is an [Hp] int32 array: slot s (on device s // (Hp / P)) holds virtual head
order[s], a head index, or >= H for a padding head.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def padded_heads(heads: int, devices: int) -> int:
    """The head count rounded up to a multiple of the devices."""
    return -(-heads // devices) * devices


def identity_order(layers: int, heads: int, devices: int) -> jax.Array:
    """[layers, Hp]: slots in head order, the padding heads last (the contiguous split)."""
    hp = padded_heads(heads, devices)
    return jnp.broadcast_to(jnp.arange(hp, dtype=jnp.int32), (layers, hp))


def balanced_order(work: jax.Array, devices: int) -> jax.Array:
    """work: [Hp] float, each virtual head's cost (0 for padding heads) -> order [Hp] int32
    (jit-able, no host sync). Heads by descending work (ties: lower index first), each to
    the least loaded device with a free slot (ties: lower device), filling that device's
    slots in turn."""
    hp = work.shape[0]
    per = hp // devices
    by_work = jnp.argsort(-work, stable=True).astype(jnp.int32)

    def place(i, carry):
        order, loads, counts = carry
        head = by_work[i]
        device = jnp.argmin(jnp.where(counts < per, loads, jnp.inf))
        order = order.at[device * per + counts[device]].set(head)
        return order, loads.at[device].add(work[head]), counts.at[device].add(1)

    carry = (jnp.zeros((hp,), jnp.int32), jnp.zeros((devices,), work.dtype),
             jnp.zeros((devices,), jnp.int32))
    return jax.lax.fori_loop(0, hp, place, carry)[0]


def head_work(density: jax.Array, padded: int) -> jax.Array:
    """density [L, B, H] or [passes, L, B, H] (one step's) -> work [L, Hp]: the mean
    density of each head over passes and batch, padding heads 0. A NaN density (a head
    whose output was not finite) counts as dense (1), so an assignment stays a
    permutation."""
    density = jnp.where(jnp.isnan(density), 1.0, density)
    work = density.reshape((-1,) + density.shape[-3:]).mean(axis=(0, 2))
    return jnp.pad(work, ((0, 0), (0, padded - work.shape[-1])))


def device_loads(work: np.ndarray, order: np.ndarray, devices: int) -> np.ndarray:
    """work [L, Hp], order [L, Hp] -> [L, devices]: each device's summed work."""
    per = order.shape[-1] // devices
    placed = np.take_along_axis(work, order, axis=-1)
    return placed.reshape(work.shape[0], devices, per).sum(-1)


def imbalance(work: np.ndarray, order: np.ndarray, devices: int) -> float:
    """How much longer the step takes than with perfectly even devices, when each layer
    waits for its busiest device: sum over layers of the max load / sum of the mean load
    (1 = balanced)."""
    loads = device_loads(work, order, devices)
    mean = loads.mean(-1).sum()
    return float(loads.max(-1).sum() / mean) if mean > 0 else 1.0


def balance_report(density, devices: int, expert=None) -> list[dict]:
    """Per denoising step, the imbalance of the contiguous head split and of the split the
    balanced loop used (computed from the previous step's density, as the sampler does;
    step 0 runs the contiguous split).

    density: [steps, passes, L, B, H] (`SampleResult.density`). expert: [steps] (its
    `expert`), None for one model: each expert keeps its own assignment, from its own
    previous step. Returns one dict per step: {"step", "contiguous", "balanced"}."""
    density = np.asarray(density, np.float32)
    heads = density.shape[-1]
    hp = padded_heads(heads, devices)
    layers = density.shape[2]
    expert = np.zeros(len(density), int) if expert is None else np.asarray(expert)
    contiguous = np.asarray(identity_order(layers, heads, devices))
    balance = jax.jit(jax.vmap(lambda w: balanced_order(w, devices)))
    report, orders = [], {}
    for step, (dens, e) in enumerate(zip(density, expert.tolist())):
        work = np.asarray(head_work(dens, hp))
        report.append(dict(step=step, contiguous=imbalance(work, contiguous, devices),
                           balanced=imbalance(work, orders.get(e, contiguous), devices)))
        orders[e] = np.asarray(balance(jnp.asarray(work)))
    return report
